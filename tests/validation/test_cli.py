"""The validation sweep's CLI: exit codes, files, messages, user networks.

The default run tests the plumbing with tiny sweeps (widths 4 and 8, 2
samples), whose verdicts mean nothing; the statistics are tested on synthetic
draws with a known rate (tests/validation/test_statistics.py). The tests of
real verdicts (built-ins PASS, controls and a wrong user kernel FAIL) are
`slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nt_frozen.validation import ARCHITECTURES, cli
from nt_frozen.validation.cli import ACCELERATOR_PLUGINS, CPU_XLA_FLAGS, main

SMALL = ["--widths", "4", "8", "--samples", "2", "--no-progress"]
# Widths and samples at which the verdicts are decided (the slow tests).
DECISIVE = ["--widths", "128", "512", "--samples", "6", "--no-progress"]

USER_MODULE = '''
from nt_frozen import Frozen, stax


def good(width, freeze=Frozen):
    """MLP with a frozen middle Dense, written by a user."""
    return stax.serial(
        stax.Dense(width, W_std=1.3), stax.Erf(),
        freeze(stax.Dense(width, W_std=1.7, b_std=0.2)), stax.Erf(),
        stax.Dense(1),
    )


def all_frozen(width):
    """Every layer frozen: the NTK is 0, relative errors are undefined."""
    return Frozen(good(width))


def wrong(width):
    """Frozen network, but the kernel of the unfrozen one: must FAIL."""
    init_fn, apply_fn, _ = good(width)
    _, _, unfrozen_kernel_fn = good(width, freeze=lambda layer: layer)
    return init_fn, apply_fn, unfrozen_kernel_fn
'''


def _run(tmp_path, *args, sizes=SMALL):
    out = tmp_path / "out"
    code = main(["validate", *sizes, "--out", str(out), *args])
    report = json.loads((out / "validation.json").read_text())
    return code, report, out


@pytest.mark.slow
def test_builtin_sweep_passes_and_writes_files(tmp_path, capsys):
    # The CNN's identity-guess control needs >= 256 channels to be rejected.
    sizes = ["--widths", "256", "1024", "--samples", "8", "--no-progress"]
    code, report, out = _run(
        tmp_path,
        "--arch",
        "mlp-frozen-middle",
        "--arch",
        "cnn-frozen-conv-block",
        sizes=sizes,
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert report["passed"] is True
    assert (out / "validation.png").stat().st_size > 10_000
    assert (
        "PASS  mlp-frozen-middle" in stdout and "PASS  cnn-frozen-conv-block" in stdout
    )
    arch = report["architectures"][0]
    assert arch["frozen"]["verdict"] == "PASS"
    assert {c["verdict"] for c in arch["controls"].values()} == {"FAIL"}
    assert [w["width"] for w in arch["frozen"]["per_width"]] == [256, 1024]
    assert report["architectures"][1]["frozen"]["per_width"][0]["width"] == 64
    assert report["command"].startswith("nt-frozen validate --widths 256 1024")
    assert report["versions"]["jax"] and report["device"]["platform"] == "cpu"


def test_user_module_by_path_runs_its_controls_or_says_why_not(tmp_path, capsys):
    nets = tmp_path / "my_nets.py"
    nets.write_text(USER_MODULE)
    code, report, _ = _run(tmp_path, "--arch", f"{nets}:good", "--input-shape", "6,5")
    assert code in (0, 1), capsys.readouterr().out
    [arch] = report["architectures"]
    assert set(arch["controls"]) == {"unfrozen", "identity_guess"}
    assert [w["width"] for w in arch["frozen"]["per_width"]] == [4, 8]

    _run(tmp_path, "--arch", f"{nets}:wrong", "--input-shape", "6,5")
    assert "not scored: the builder takes no `freeze` argument" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_user_module_by_path_and_wrong_kernel_fails(tmp_path, capsys):
    nets = tmp_path / "my_nets.py"
    nets.write_text(USER_MODULE)
    args = ["--input-shape", "6,5"]
    code, report, _ = _run(tmp_path, "--arch", f"{nets}:good", *args, sizes=DECISIVE)
    assert code == 0, capsys.readouterr().out
    controls = report["architectures"][0]["controls"]
    assert {c["verdict"] for c in controls.values()} == {"FAIL"}

    code, report, _ = _run(tmp_path, "--arch", f"{nets}:wrong", *args, sizes=DECISIVE)
    stdout = capsys.readouterr().out
    assert code == 1
    frozen = report["architectures"][0]["frozen"]
    assert frozen["verdict"] == "FAIL" and frozen["reasons"]
    assert f"FAIL  {nets}:wrong" in stdout
    assert "not scored: the builder takes no `freeze` argument" in stdout


def test_user_module_by_import_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, report, _ = _run(tmp_path, "--arch", "my_nets:good")
    assert code in (0, 1), capsys.readouterr().out
    assert report["architectures"][0]["description"].startswith("MLP with a frozen")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "mlp"], "unknown architecture 'mlp'"),
        (["--arch", "no_such_module_xyz:f"], "no module named 'no_such_module_xyz'"),
        (["--arch", "missing.py:f"], "no file missing.py"),
        (["--widths", "128"], "--widths 128: need at least 2 distinct positive"),
        (["--samples", "1"], "--samples 1: must be at least 2"),
        (["--device", "tpu"], "--device tpu: JAX sees no TPU"),
    ],
)
def test_bad_input_exits_with_a_message(tmp_path, args, message):
    argv = ["validate", "--widths", "64", "128", "--out", str(tmp_path), *args]
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_list_archs(capsys):
    assert main(["validate", "--list-archs"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ARCHITECTURES)


def test_module_entry_point_x64(tmp_path):
    """`python -m nt_frozen validate` end to end, in float64, in a fresh process."""
    out = tmp_path / "x64"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nt_frozen",
            "validate",
            *SMALL,
            "--x64",
            "--arch",
            "mlp-frozen-last",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["dtype"] == "float64"
    ok = report["architectures"][0]["ok"]
    assert f"{'PASS' if ok else 'FAIL'}  mlp-frozen-last" in result.stdout
    assert result.returncode == (not ok)
    # A fresh process on a CPU-only machine compiles at level 1 (and passes).
    cpu_only = not any(importlib.util.find_spec(p) for p in ACCELERATOR_PLUGINS)
    if cpu_only and "xla_backend_optimization_level" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        assert CPU_XLA_FLAGS in report["xla_flags"]


@pytest.mark.parametrize(
    "device, user_flags, plugin, added",
    [
        ("auto", "", None, True),
        ("cpu", "--xla_cpu_use_thunk_runtime=true", "jax_cuda12_plugin", True),
        ("auto", "", "jax_cuda12_plugin", False),  # the GPU's kernels: left alone
        ("gpu", "", None, False),
        ("auto", "--xla_backend_optimization_level=3", None, False),  # user's wins
    ],
)
def test_cpu_compile_flags_only_for_cpu_runs_and_never_over_the_users(
    monkeypatch, device, user_flags, plugin, added
):
    import jax._src.xla_bridge as xla_bridge

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", user_flags)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == plugin else real_find_spec(name, *a),
    )
    if plugin is None:  # this machine's own plugins must not decide the case
        monkeypatch.setattr(
            cli, "ACCELERATOR_PLUGINS", ("no_such_plugin_for_this_test",)
        )
    assert cli._compile_faster_on_cpu(device) is added
    flags = os.environ["XLA_FLAGS"]
    assert (CPU_XLA_FLAGS in flags) is added
    assert user_flags in flags  # kept as the user set them


def test_cpu_compile_flags_not_set_once_backends_started(monkeypatch):
    """XLA has read its flags already: setting them now would only leak into
    child processes."""
    import jax

    jax.devices()  # the backends have started
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert cli._compile_faster_on_cpu("cpu") is False
    assert "XLA_FLAGS" not in os.environ


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{constant} in {path}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_layer_frozen_fails_with_a_reason_and_strict_json(tmp_path, capsys):
    """NTK 0: no statistic is defined. The verdict must be FAIL with the
    reason, the exit code 1, and the JSON free of NaN."""
    nets = tmp_path / "my_nets.py"
    nets.write_text(USER_MODULE)
    out = tmp_path / "out"
    code = main(["validate", *SMALL, "--out", str(out), "--arch", f"{nets}:all_frozen"])
    stdout = capsys.readouterr().out
    assert code == 1, stdout
    assert f"FAIL  {nets}:all_frozen" in stdout
    assert "is zero, so relative errors are undefined" in stdout
    report = _strict_json(out / "validation.json")
    frozen = report["architectures"][0]["frozen"]
    assert frozen["verdict"] == "FAIL" and frozen["slope"] is None
    assert "is zero" in frozen["reasons"][0]
    assert report["passed"] is False


def test_unwritable_out_exits_before_the_sweep(tmp_path, monkeypatch):
    import nt_frozen.validation.sweep

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran before --out was checked")

    monkeypatch.setattr(nt_frozen.validation.sweep, "run_validation", no_sweep)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["validate", *SMALL, "--arch", "mlp-frozen-last"]
    with pytest.raises(SystemExit, match="--out .*cannot write there"):
        main([*argv, "--out", str(blocker / "sub")])


def test_arch_module_not_on_the_import_path_suggests_the_file(tmp_path, monkeypatch):
    (tmp_path / "nets_in_cwd.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    here = {"", ".", str(tmp_path)}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in here])
    argv = ["validate", *SMALL, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--arch", "nets_in_cwd:good"])
    message = str(exit_info.value)
    assert "not on Python's import path" in message
    assert message.startswith("nt-frozen validate: --arch")
    assert "the file instead, nets_in_cwd.py:good" in message


def _no_sweep(*args, **kwargs):
    raise AssertionError("the sweep ran; the CLI should have refused first")


def test_saved_widths_without_resume_name_the_flag_before_any_work(
    tmp_path, monkeypatch
):
    import nt_frozen.validation.sweep

    monkeypatch.setattr(nt_frozen.validation.sweep, "run_validation", _no_sweep)
    (tmp_path / "widths").mkdir()
    (tmp_path / "widths" / "00-mlp-frozen-last-n64.json").write_text("{}")
    argv = ["validate", *SMALL, "--arch", "mlp-frozen-last", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value)
    assert "rerun with --resume" in message and "resume=True" not in message
    assert "1 saved width(s)" in message and "--samples" not in message


def test_resume_under_other_settings_says_resume_and_which_setting(tmp_path):
    from nt_frozen.validation import run_validation

    def stop(name, width):
        raise KeyboardInterrupt

    arch = ARCHITECTURES["mlp-frozen-last"]
    with pytest.raises(KeyboardInterrupt):  # one width saved, as the CLI saves it
        run_validation(
            [arch], [4, 8], 2, 0, progress=stop, checkpoint=tmp_path / "widths"
        )
    argv = ["validate", "--widths", "4", "8", "--samples", "2", "--no-progress"]
    argv += ["--arch", "mlp-frozen-last", "--out", str(tmp_path), "--resume"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--seed", "1"])
    message = str(exit_info.value)
    assert message.startswith("nt-frozen validate: --resume: cannot resume")
    assert "seed 0 (saved) vs 1 (now)" in message and "--samples" not in message


def test_errors_of_the_sweep_itself_get_no_flag_hints(tmp_path, monkeypatch):
    """A ValueError from inside the sweep (e.g. a user's network) is not
    about --samples or --out: it propagates as it is."""
    import nt_frozen.validation.sweep

    def broken(*args, **kwargs):
        raise ValueError("shapes (3, 4) and (5, 6) do not match")

    monkeypatch.setattr(nt_frozen.validation.sweep, "run_validation", broken)
    argv = ["validate", *SMALL, "--arch", "mlp-frozen-last", "--out", str(tmp_path)]
    with pytest.raises(
        ValueError, match=r"^shapes \(3, 4\) and \(5, 6\) do not match$"
    ):
        main(argv)


def test_input_shape_for_a_built_in_is_refused_before_any_work(tmp_path, monkeypatch):
    import nt_frozen.validation.sweep

    monkeypatch.setattr(nt_frozen.validation.sweep, "run_validation", _no_sweep)
    argv = ["validate", *SMALL, "--out", str(tmp_path), "--input-shape", "4,8"]
    with pytest.raises(SystemExit, match="--input-shape 4,8: applies to MODULE"):
        main([*argv, "--arch", "mlp-frozen-last"])
    with pytest.raises(SystemExit, match="are built-ins"):  # all of them, by default
        main(argv)
    assert not (tmp_path / "widths").exists()


@pytest.fixture(scope="module")
def tiny_cnn_and_residual_run(tmp_path_factory):
    """One tiny sweep (2 samples, widths 8 and 16) with the progress bar on:
    what it prints, writes, and the matmul precision each width saw."""
    import contextlib
    import io

    import jax

    import nt_frozen.validation.sweep

    draws_fn = nt_frozen.validation.sweep.empirical_draws_fn
    seen = []

    def recording(*args, **kwargs):
        seen.append(jax.config.values["jax_default_matmul_precision"])
        return draws_fn(*args, **kwargs)

    out = tmp_path_factory.mktemp("tiny") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["validate", "--widths", "8", "16", "--samples", "2", "--out", str(out)]
    argv += ["--arch", "cnn-frozen-conv-block", "--arch", "residual-frozen-branch"]
    previous = os.umask(0o022)
    try:
        with (
            pytest.MonkeyPatch.context() as monkeypatch,
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            monkeypatch.setattr(
                nt_frozen.validation.sweep, "empirical_draws_fn", recording
            )
            code = main(argv)
    finally:
        os.umask(previous)
    return {
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "out": out,
        "report": json.loads((out / "validation.json").read_text()),
        "seen": seen,
    }


def test_sweep_runs_at_highest_matmul_precision_and_records_it(
    tiny_cnn_and_residual_run,
):
    run = tiny_cnn_and_residual_run
    assert run["code"] in (0, 1), run["stdout"]
    assert run["seen"] == ["highest"] * 4  # 2 architectures x 2 widths
    assert run["report"]["matmul_precision"] == "highest"
    assert "matmul precision highest" in run["stdout"]
    assert jax_precision_now() is None  # the context ended with the sweep


def jax_precision_now():
    import jax

    return jax.config.values["jax_default_matmul_precision"]


def test_matmul_precision_option_reaches_the_sweep(tmp_path, monkeypatch):
    import jax

    import nt_frozen.validation.sweep

    seen = []

    def recording(*args, **kwargs):
        seen.append(jax.config.values["jax_default_matmul_precision"])
        raise KeyboardInterrupt  # enough: the precision of the first width

    monkeypatch.setattr(nt_frozen.validation.sweep, "empirical_draws_fn", recording)
    argv = ["validate", "--widths", "4", "8", "--samples", "2", "--no-progress"]
    argv += ["--arch", "mlp-frozen-last", "--out", str(tmp_path)]
    assert main([*argv, "--matmul-precision", "default"]) == 130
    assert seen == ["default"]


def test_tiny_sweep_writes_the_report_the_figure_and_the_run(
    tiny_cnn_and_residual_run,
):
    run = tiny_cnn_and_residual_run
    report, out = run["report"], run["out"]
    assert run["code"] == (0 if report["passed"] else 1)
    assert (out / "validation.png").stat().st_size > 10_000
    assert not (out / "widths").exists()  # removed once reported
    for arch in report["architectures"]:
        assert f"{'PASS' if arch['ok'] else 'FAIL'}  {arch['name']}" in run["stdout"]
        assert set(arch["controls"]) == {"unfrozen", "identity_guess"}
    assert report["command"].startswith("nt-frozen validate --widths 8 16")
    assert report["versions"]["jax"] and report["device"]["platform"] == "cpu"


def test_json_is_world_readable_like_the_png(tiny_cnn_and_residual_run):
    import stat

    out = tiny_cnn_and_residual_run["out"]
    modes = {
        stat.S_IMODE((out / name).stat().st_mode)
        for name in ("validation.json", "validation.png")
    }
    assert modes == {0o644}


def test_cnn_rows_count_channels_everywhere(tiny_cnn_and_residual_run):
    run = tiny_cnn_and_residual_run
    cnn, residual = (
        run["stdout"]
        .split("\ncnn-frozen-conv-block: ")[1]
        .split("\nresidual-frozen-branch: ")
    )
    assert "  channels  single draw" in cnn and "at channels 4 " in cnn
    assert " width" not in cnn and "n=" not in cnn
    assert "     width  single draw" in residual and "at width 16 " in residual
    assert "cnn-frozen-conv-block channels 4" in run["stderr"]  # the bar's postfix
    [arch, _] = run["report"]["architectures"]
    assert arch["width_label"] == "channels"
    assert [w["width"] for w in arch["frozen"]["per_width"]] == [2, 4]


def test_warnings_are_printed_once_after_the_progress_bar(tiny_cnn_and_residual_run):
    """NT's FanIn warning (the residual block) must not break the bar's line."""
    stderr = tiny_cnn_and_residual_run["stderr"]
    assert stderr.count("`FanIn` layers assume independent inputs") == 1
    warning_at = stderr.index("UserWarning")
    assert "100%" in stderr[:warning_at] and "sweep:" not in stderr[warning_at:]
    assert "the sweep's verdict checks the kernel" in stderr[warning_at:]
