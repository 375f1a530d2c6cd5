"""The command line's arguments: `nt-frozen validate` and, through
:mod:`nt_frozen.kernels.cli`, `nt-frozen kernel`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_WIDTHS = (128, 512, 2048)
DEFAULT_SAMPLES = 16
DEFAULT_INPUT_SHAPE = (8, 16)
# `jax.default_matmul_precision`'s names, full precision first.
MATMUL_PRECISIONS = ("highest", "high", "default")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 256,1024 or '256 1024', got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nt-frozen",
        description="Frozen layers for infinite-width networks (neural-tangents).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate",
        help="analytic frozen NTK vs finite-width empirical NTKs across widths",
        description=(
            "For each architecture and width, draw --samples finite networks, "
            "compare their empirical NTKs (trainable parameters only) with the "
            "analytic frozen NTK, fit the log-log slope of the error, and give a "
            "verdict. Controls (the unfrozen NTK and the 'identity' guess) must "
            "FAIL. Exit code 0 when all verdicts are as expected."
        ),
    )
    validate.add_argument(
        "--arch",
        action="append",
        metavar="NAME|MODULE:FUNCTION",
        help="architecture to sweep (repeatable; default: all built-ins). "
        "MODULE:FUNCTION names your own `function(width[, freeze])` returning a "
        "stax triple or a list of layers; MODULE may be a path to a .py file.",
    )
    validate.add_argument(
        "--list-archs", action="store_true", help="list built-in architectures"
    )
    validate.add_argument(
        "--widths",
        nargs="+",
        type=_int_list,
        metavar="N",
        help=f"widths, e.g. 256 1024 4096 or 256,1024 (default: "
        f"{' '.join(map(str, DEFAULT_WIDTHS))}; a CNN uses width/4 channels)",
    )
    validate.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"networks drawn per width (default {DEFAULT_SAMPLES})",
    )
    validate.add_argument("--seed", type=int, default=0, help="PRNG seed")
    validate.add_argument(
        "--out",
        type=Path,
        default=Path("out/validate"),
        help="folder for validation.json and validation.png (default "
        "out/validate); each finished width is saved in its widths/ subfolder "
        "as the sweep goes, and removed once validation.json is written",
    )
    validate.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep from the widths saved in --out "
        "(same draws as an uninterrupted run); refused if they were computed "
        "with other settings (architectures, input shape, --samples, --seed, "
        "--x64, --implementation, device kind, package versions)",
    )
    validate.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu", "tpu"),
        default="auto",
        help="where to compute (default: JAX's default device)",
    )
    validate.add_argument(
        "--x64", action="store_true", help="float64 (default float32)"
    )
    validate.add_argument(
        "--implementation",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="nt.empirical_ntk_fn implementation: 1 Jacobian contraction, "
        "2 NTK-vector products, 3 structured derivatives (default: the fastest "
        "exact path, see nt_frozen/structured.py)",
    )
    validate.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default="highest",
        help="JAX's default matmul precision for the sweep (default highest: "
        "full float32 products; 'default' lets a GPU use TF32 and a TPU "
        "bfloat16, whose ~1e-3 rounding would count as finite-width error)",
    )
    validate.add_argument(
        "--input-shape",
        type=_int_list,
        default=None,
        metavar="SHAPE",
        help=f"input shape (batch first) for MODULE:FUNCTION architectures "
        f"(default {','.join(map(str, DEFAULT_INPUT_SHAPE))}); built-in "
        f"architectures have their own",
    )
    validate.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr"
    )
    from nt_frozen.kernels.cli import add_parser as add_kernel_parser

    add_kernel_parser(commands)  # `nt-frozen kernel`
    return parser
