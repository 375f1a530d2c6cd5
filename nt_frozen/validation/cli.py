"""`nt-frozen validate`: the validation sweep from the command line.

    nt-frozen validate                       # built-in architectures, ~1 min on CPU
    nt-frozen validate --widths 1024 4096 16384 --samples 16 --device gpu
    nt-frozen validate --arch my_nets.py:wide_resnet --input-shape 4,8,8,3

Writes `validation.json` and `validation.png` to `--out` and exits with 0 when
every architecture PASSes and every control FAILs, 1 otherwise. Each finished
width is saved to `--out`/widths as the sweep goes; `--resume` continues an
interrupted sweep from there.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib.util
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nt_frozen.validation.arguments import (
    DEFAULT_INPUT_SHAPE,
    DEFAULT_WIDTHS,
    build_parser,
)

# A sweep on the CPU compiles a few dozen small programs per architecture set
# (each parameter shape's random draw, each width's NTK), and LLVM's
# optimization passes take most of that time. Level 1 halves them and leaves
# the run time as it was (the time goes to matrix products in library
# kernels): measured, the default sweep takes 35 s instead of 40.
CPU_XLA_FLAGS = "--xla_backend_optimization_level=1"
ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)


def _select_device(name: str):
    import jax

    if name == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError as e:
        raise SystemExit(
            f"nt-frozen validate: --device {name}: JAX sees no {name.upper()} "
            f"({e}). Available: {jax.devices()}. Install the matching jax "
            f"extra (e.g. pip install 'jax[cuda12]') or use --device cpu/auto."
        ) from None


def _metadata(args: argparse.Namespace, argv: Sequence[str], device) -> dict[str, Any]:
    import jax

    from nt_frozen.validation.checkpoint import package_versions

    return {
        "command": shlex.join(["nt-frozen", *argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": package_versions() | {"python": platform.python_version()},
        "device": {
            "platform": device.platform,
            "kind": getattr(device, "device_kind", device.platform),
            "repr": str(device),
            "count": jax.device_count(device.platform),
            "host": platform.node(),
        },
        "dtype": "float64" if args.x64 else "float32",
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "samples": args.samples,
        "seed": args.seed,
        "implementation": args.implementation,
        "matmul_precision": args.matmul_precision,
    }


def _check_writable(out: Path) -> None:
    # Imported here: importing the package starts JAX, which must wait for
    # the XLA flags this module sets.
    from nt_frozen._files import unwritable_reason

    reason = unwritable_reason(out)
    if reason is not None:
        raise SystemExit(
            f"nt-frozen validate: --out {out}: cannot write there ({reason}); "
            f"choose a writable folder."
        )


def _check_counts(args: argparse.Namespace, widths: Sequence[int]) -> None:
    """--samples and --widths, checked before anything is loaded or computed
    (the library checks them too, but speaks of its own arguments)."""
    if args.samples < 2:
        raise SystemExit(
            f"nt-frozen validate: --samples {args.samples}: must be at least 2 "
            f"(the noise of the kernel is estimated from the draws)."
        )
    if len(widths) < 2:
        raise SystemExit(
            f"nt-frozen validate: --widths {' '.join(map(str, widths))}: need at "
            f"least 2 distinct positive widths to fit the error's slope, e.g. "
            f"--widths {' '.join(map(str, DEFAULT_WIDTHS))}."
        )


# NT warns on every FanIn layer at trace time; the sweep's verdict checks the
# kernel such a layer gives, so the warning is reported, not acted on.
FAN_IN_NOTE = "the sweep's verdict checks the kernel of each network with such layers"


@contextlib.contextmanager
def _warnings_after():
    """Hold the warnings raised inside (a warning printed while a tqdm bar
    redraws breaks the bar's line) and print each distinct one once on
    stderr afterwards, with how often it came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count repeats; they are merged below
        try:
            yield
        finally:
            counts: collections.Counter = collections.Counter(
                (w.category.__name__, str(w.message)) for w in caught
            )
            for (category, message), count in counts.items():
                times = f" ({count} times)" if count > 1 else ""
                note = f" [{FAN_IN_NOTE}]" if "FanIn" in message else ""
                print(f"{category}{times}: {message}{note}", file=sys.stderr)


def _compile_faster_on_cpu(device: str) -> bool:
    """Add `CPU_XLA_FLAGS` to XLA_FLAGS when the sweep will run on the CPU and
    JAX has not started its backends yet (XLA reads the flags once, at that
    start). Flags the user set win; GPU and TPU compiles are left alone (the
    flag would apply to their kernels too). Returns whether it was added."""
    from nt_frozen._compat import backends_are_initialized

    flags = os.environ.get("XLA_FLAGS", "")
    cpu_only = os.environ.get("JAX_PLATFORMS", "").strip() == "cpu" or not any(
        importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS
    )
    if (
        "xla_backend_optimization_level" in flags
        or (device != "cpu" and not (device == "auto" and cpu_only))
        or backends_are_initialized()
    ):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAGS}".strip()
    return True


def validate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _compile_faster_on_cpu(args.device)
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from nt_frozen._files import write_json_atomic
    from nt_frozen.validation.architectures import ARCHITECTURES, load_architecture
    from nt_frozen.validation.report import (
        finite_or_null,
        format_table,
        save_sweep_figure,
    )
    from nt_frozen.validation.sweep import CheckpointError, run_validation

    if args.list_archs:
        for arch in ARCHITECTURES.values():
            print(f"{arch.name:<26} {arch.description}")
        return 0
    widths = sorted({w for group in (args.widths or [DEFAULT_WIDTHS]) for w in group})
    _check_counts(args, widths)
    specs = list(args.arch or ARCHITECTURES)
    built_in = [spec for spec in specs if spec in ARCHITECTURES]
    if args.input_shape is not None and built_in:
        raise SystemExit(
            f"nt-frozen validate: --input-shape {','.join(map(str, args.input_shape))}"
            f": applies to MODULE:FUNCTION architectures only, and "
            f"{', '.join(built_in)} "
            f"{'is a built-in' if len(built_in) == 1 else 'are built-ins'} with "
            f"its own input shape. Drop --input-shape, or sweep only your own "
            f"networks (--arch MODULE:FUNCTION)."
        )
    input_shape = tuple(args.input_shape or DEFAULT_INPUT_SHAPE)
    try:
        archs = [load_architecture(spec, input_shape) for spec in specs]
    except (ValueError, ImportError, AttributeError, FileNotFoundError) as e:
        raise SystemExit(f"nt-frozen validate: --arch: {e}") from None

    _check_writable(args.out)  # before the sweep, not after it
    checkpoint = args.out / "widths"
    saved = sorted(checkpoint.glob("*.json"))
    if saved and not args.resume:
        raise SystemExit(
            f"nt-frozen validate: --out {args.out} holds {len(saved)} saved "
            f"width(s) of an earlier sweep (in {checkpoint}): rerun with --resume "
            f"to continue it, or delete {checkpoint} (or choose another --out) to "
            f"start afresh."
        )
    device = _select_device(args.device)
    meta = _metadata(args, argv, device)
    print(
        f"nt-frozen validate: {len(archs)} architecture(s), widths "
        f"{' '.join(map(str, widths))}, {args.samples} draws per width, "
        f"{meta['dtype']} on {meta['device']['kind']} ({device}), matmul "
        f"precision {args.matmul_precision}"
    )
    from tqdm.auto import tqdm

    labels = {a.name: a.width_label for a in archs}
    start = time.perf_counter()
    with (
        _warnings_after(),  # printed once each, below the bar, not through it
        jax.default_device(device),
        tqdm(
            total=len(archs) * len(widths),
            disable=args.no_progress,
            file=sys.stderr,
            unit="width",
            desc="sweep",
        ) as bar,
    ):

        def progress(name: str, width: int) -> None:
            bar.set_postfix_str(f"{name} {labels[name]} {width}")
            bar.update(1)

        try:
            results = run_validation(
                archs,
                widths,
                args.samples,
                args.seed,
                args.implementation,
                progress,
                checkpoint,
                args.resume,
                args.matmul_precision,
            )
        except CheckpointError as e:  # saved widths that cannot be resumed
            raise SystemExit(f"nt-frozen validate: --resume: {e}") from None
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\ninterrupted: the finished widths are saved in {checkpoint}; "
                f"rerun with --resume to continue.",
                file=sys.stderr,
            )
            return 130
    elapsed = time.perf_counter() - start

    print(format_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    report = meta | {
        "widths": widths,
        "elapsed_s": elapsed,
        "passed": all(r.ok for r in results),
        "architectures": [r.to_json() for r in results],
    }
    # Strict JSON: an undefined statistic is null (its verdict says why).
    json_path = write_json_atomic(
        args.out / "validation.json", finite_or_null(report), indent=1, allow_nan=False
    )
    png_path = save_sweep_figure(results, args.out / "validation.png")
    shutil.rmtree(checkpoint)  # validation.json now holds every width's result
    print(f"\nwrote {json_path} and {png_path} ({elapsed:.0f} s)")
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return validate(args, argv)
    if args.command == "kernel":
        from nt_frozen.kernels.cli import run

        return run(args)
    raise AssertionError(args.command)  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
