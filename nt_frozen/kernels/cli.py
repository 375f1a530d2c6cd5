"""`nt-frozen kernel`: a stored kernel matrix for a network on a data set.

    nt-frozen kernel --arch cnn-frozen-conv-block --data digits --store out/k
    nt-frozen kernel --arch my_nets.py:wide_cnn --data x.npy --x2 x_test.npy \\
        --get nngp ntk --block-size 256 --store out/k_test --x64
    nt-frozen kernel ... --resume          # after an interruption

The store (see `nt_frozen.kernel_matrix`) holds `<get>.npy` arrays readable with
`numpy.load(path, mmap_mode="r")`; `--resume` continues an interrupted run,
computing only the blocks not yet recorded as done.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def add_parser(commands) -> None:
    """Register the `kernel` subcommand on `nt-frozen`'s subparsers."""
    p = commands.add_parser(
        "kernel",
        help="compute a kernel matrix in blocks into a resumable on-disk store",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--arch",
        required=True,
        metavar="NAME|MODULE:FUNCTION",
        help="built-in architecture (nt-frozen validate --list-archs) or your own "
        "`function(width)` returning a stax triple or a list of layers",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="digits|FILE.npy",
        help="inputs, example axis first; 'digits': scikit-learn's 1797 8x8 "
        "digits scaled to [0, 1], as 8x8x1 images for image networks (4-D "
        "input shape) or 64 features otherwise",
    )
    p.add_argument(
        "--x2",
        type=Path,
        metavar="FILE.npy",
        help="second inputs (default: the symmetric kernel of --data)",
    )
    p.add_argument("--get", nargs="+", choices=("nngp", "ntk"), default=["ntk"])
    p.add_argument(
        "--width",
        type=int,
        default=512,
        help="width passed to the "
        "architecture (analytic kernels in NTK parameterization do not "
        "depend on it)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="rows per block (default: the largest that fits in memory, measured)",
    )
    p.add_argument("--store", type=Path, required=True, help="store folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --store (refused if it holds another kernel)",
    )
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_inputs(spec: str, image: bool) -> np.ndarray:
    if spec == "digits":
        try:
            from sklearn.datasets import load_digits  # type: ignore[import-untyped]
        except ImportError:
            raise SystemExit(
                "nt-frozen kernel: --data digits needs scikit-learn "
                "(pip install 'nt-frozen[notebooks]'); or pass a .npy file."
            ) from None
        x = load_digits().data.astype(np.float32) / 16.0
        return x.reshape(-1, 8, 8, 1) if image else x
    path = Path(spec)
    if path.suffix != ".npy" or not path.is_file():
        raise SystemExit(
            f"nt-frozen kernel: --data {spec!r}: pass 'digits' or an existing .npy "
            f"file."
        )
    return np.load(path)


def run(args: argparse.Namespace) -> int:
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from nt_frozen.kernels.compute import kernel_matrix
    from nt_frozen.validation.architectures import load_architecture

    try:
        arch = load_architecture(args.arch)
    except (ValueError, ImportError, AttributeError, FileNotFoundError) as e:
        raise SystemExit(f"nt-frozen kernel: --arch: {e}") from None
    x1 = load_inputs(args.data, image=len(arch.input_shape) == 4)
    x2 = None if args.x2 is None else load_inputs(str(args.x2), image=False)
    dtype = np.float64 if args.x64 else np.float32
    x1 = x1.astype(dtype)
    x2 = None if x2 is None else x2.astype(dtype)
    if (args.store / "manifest.json").exists() and not args.resume:
        raise SystemExit(
            f"nt-frozen kernel: --store {args.store} already holds a kernel; pass "
            f"--resume to continue it, or choose another --store."
        )
    _, _, kernel_fn = arch.network(args.width)
    get = tuple(args.get)
    print(
        f"nt-frozen kernel: {arch.name} on {x1.shape}"
        + ("" if x2 is None else f" x {x2.shape}")
        + f", get={'/'.join(get)}, {np.dtype(dtype).name}, store {args.store}"
    )
    start = time.perf_counter()
    try:
        out = kernel_matrix(
            kernel_fn,
            x1,
            x2,
            get,
            block_size=args.block_size,
            store=args.store,
            progress=not args.no_progress,
            name=f"{arch.name} width={args.width}",
        )
    except (ValueError, MemoryError) as e:
        raise SystemExit(f"nt-frozen kernel: {e}") from None
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: rerun with --resume to continue {args.store}",
            file=sys.stderr,
        )
        return 130
    shape = out[0].shape
    print(
        f"wrote {', '.join(f'{args.store / g}.npy' for g in get)} {shape} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
