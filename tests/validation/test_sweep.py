"""An interrupted sweep resumes from its saved widths to the same report."""

from __future__ import annotations

import json
import re

import pytest

import nt_frozen.validation.sweep
from nt_frozen.validation import ARCHITECTURES, run_validation
from nt_frozen.validation.cli import main

ARCH = ARCHITECTURES["mlp-frozen-middle"]
WIDTHS = [4, 8, 16]  # plumbing: the verdicts at these widths mean nothing
# Fields that time or name the run: the only ones allowed to differ.
TIMING = {"command", "started", "elapsed_s", "seconds"}


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _cli(out, *args):
    argv = ["validate", "--arch", "mlp-frozen-middle", "--widths", "4", "8", "16"]
    return main([*argv, "--samples", "3", "--no-progress", "--out", str(out), *args])


def test_interrupted_then_resumed_cli_run_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, capsys
):
    assert _cli(tmp_path / "whole") in (0, 1)
    whole = json.loads((tmp_path / "whole" / "validation.json").read_text())
    assert not (tmp_path / "whole" / "widths").exists()  # removed once reported

    # A kill while the second width is computed: the first one is on disk.
    draws_fn = nt_frozen.validation.sweep.empirical_draws_fn
    calls = []

    def killed_at_second_width(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return draws_fn(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(
        nt_frozen.validation.sweep, "empirical_draws_fn", killed_at_second_width
    )
    assert _cli(out) == 130
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in (out / "widths").glob("*.json")] == [
        "00-mlp-frozen-middle-n4.json"
    ]
    assert not (out / "validation.json").exists()

    # The resumed run computes only the two missing widths.
    calls.clear()
    monkeypatch.setattr(
        nt_frozen.validation.sweep,
        "empirical_draws_fn",
        lambda *args, **kwargs: calls.append(args) or draws_fn(*args, **kwargs),
    )
    assert _cli(out, "--resume") in (0, 1)
    assert [c[1] for c in calls] == [8, 16]
    resumed = json.loads((out / "validation.json").read_text())
    assert _without_timing(resumed) == _without_timing(whole)
    assert resumed["architectures"][0]["frozen"]["per_width"][0]["single_draw_errors"]


def _interrupted(folder, **kwargs):
    """A library sweep stopped right after its first width."""

    def stop(name, width):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_validation(
            [ARCH],
            WIDTHS,
            samples=3,
            seed=0,
            progress=stop,
            checkpoint=folder,
            **kwargs,
        )


def test_resume_refuses_other_settings_and_unresumed_reuse(tmp_path):
    folder = tmp_path / "widths"
    _interrupted(folder)
    for kwargs, named in (
        ({"seed": 1}, "seed 0 (saved) vs 1 (now)"),
        ({"samples": 4}, "samples 3 (saved) vs 4 (now)"),
        ({"implementation": 1}, "implementation None (saved) vs 1 (now)"),
        # TF32 / bfloat16 rounding must not mix into a full-precision sweep.
        (
            {"matmul_precision": "default"},
            "matmul_precision 'highest' (saved) vs 'default' (now)",
        ),
    ):
        settings = {"samples": 3, "seed": 0} | kwargs
        with pytest.raises(ValueError, match=f"other settings.*{re.escape(named)}"):
            run_validation([ARCH], WIDTHS, **settings, checkpoint=folder, resume=True)
    other = ARCHITECTURES["mlp-frozen-last"]
    with pytest.raises(ValueError, match="architectures"):
        run_validation([other], WIDTHS, 3, 0, checkpoint=folder, resume=True)
    with pytest.raises(ValueError, match="resume=True"):  # never silently overwritten
        run_validation([ARCH], WIDTHS, 3, 0, checkpoint=folder)


def test_a_leftover_partial_file_is_never_read_as_finished(tmp_path):
    folder = tmp_path / "widths"
    _interrupted(folder)
    [first] = folder.glob("*.json")
    text = first.read_text()
    # A write killed before its rename leaves a temporary file: ignored.
    (folder / f".{first.name.replace('n4', 'n8')}.abc.tmp").write_text(text[:100])
    seen = []
    [result] = run_validation(
        [ARCH],
        WIDTHS,
        3,
        0,
        progress=lambda name, width: seen.append(width),
        checkpoint=folder,
        resume=True,
    )
    assert seen == WIDTHS and len(result.frozen.single_draw_errors[1]) == 3
    # A truncated file under a finished name is refused, not half-read.
    first.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="cannot read the saved width.*delete it"):
        run_validation([ARCH], WIDTHS, 3, 0, checkpoint=folder, resume=True)


def test_analytic_kernels_of_all_widths_in_one_compile_keep_each_widths_own(x64):
    """One compile serves every width, yet a builder whose kernel depends on the
    width (here W_std) gets each width's own kernel: the reference is each
    network's `kernel_fn` run alone, op by op (float64: the diagonal's arccos
    loses half the digits, ~1e-8 in float64 and ~1e-4 in float32)."""
    import jax
    import numpy as np

    from nt_frozen import Frozen, stax
    from nt_frozen.validation import Architecture, analytic_ntks_by_width_fn

    def build(n, freeze=Frozen):
        return [stax.Dense(n, W_std=1.0 + n / 64), stax.Relu(), freeze(stax.Dense(1))]

    arch = Architecture("w-std-grows", "W_std grows with n", build, (3, 5))
    x = jax.random.normal(jax.random.PRNGKey(0), arch.input_shape)
    kernels = analytic_ntks_by_width_fn(arch, [16, 64])(x)
    assert sorted(kernels) == [16, 64]
    for width in (16, 64):
        networks = {"frozen": arch.network(width)} | {
            c: arch.control_network(c, width) for c in arch.control_names
        }
        for name, (_, _, kernel_fn) in networks.items():
            np.testing.assert_allclose(
                kernels[width][name], kernel_fn(x, None, "ntk"), rtol=1e-7
            )
    # The two widths' kernels differ (W_std^2 = 1.5625 vs 4 on the first layer).
    assert not np.allclose(kernels[16]["frozen"], kernels[64]["frozen"], rtol=0.1)
