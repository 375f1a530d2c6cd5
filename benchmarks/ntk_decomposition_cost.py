"""Layer-wise NTK decomposition: one pass vs one frozen network per layer.

For each network, the contribution of every layer with parameters to the
analytic NTK, computed two ways, both jit-compiled:

- one pass: `ntk_decomposition(layers)` (NNGP once, a stack of NTKs);
- L passes: for each of the L layers with parameters, the `kernel_fn` of the
  network with every other layer wrapped in `Frozen` (L jitted functions).

Reports the median wall time after compilation (`block_until_ready`), the
ratio, the compile times, the plain `kernel_fn`'s time for scale, and the
largest relative difference between the two results.

    uv run python benchmarks/ntk_decomposition_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from nt_frozen import Frozen, ntk_decomposition, stax


def mlp(depth: int):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=1.5, b_std=0.1), stax.Relu()]
    return [*layers, stax.Dense(1)]


def cnn(depth: int):
    layers = []
    for _ in range(depth):
        conv = stax.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=0.1)
        layers += [conv, stax.Relu()]
    return [*layers, stax.AvgPool((2, 2)), stax.Flatten(), stax.Dense(1)]


def compiled(fn, *args):
    """(compiled fn, seconds to trace and compile)."""
    start = time.perf_counter()
    executable = jax.jit(fn).lower(*args).compile()
    return executable, time.perf_counter() - start


def seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median wall time of each fn, run in turn so all see the same load."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(layers, x1, x2, repeats: int) -> dict:
    decomposition = ntk_decomposition(layers)
    one_pass, compile_one = compiled(decomposition, x1, x2)
    param_layers = [g.indices[0] for g in decomposition.groups]

    def frozen_but(i):
        net = [lyr if j == i else Frozen(lyr) for j, lyr in enumerate(layers)]
        return lambda a, b: stax.serial(*net)[2](a, b, "ntk")

    l_pass, compile_l = [], 0.0
    for i in param_layers:
        fn, seconds = compiled(frozen_but(i), x1, x2)
        l_pass.append(fn)
        compile_l += seconds
    plain, _ = compiled(lambda a, b: stax.serial(*layers)[2](a, b, "ntk"), x1, x2)

    parts = np.asarray(one_pass(x1, x2))
    reference = np.stack([np.asarray(fn(x1, x2)) for fn in l_pass])
    diff = np.abs(parts - reference).max() / np.abs(reference).max()
    fns = dict(
        plain=lambda: plain(x1, x2),
        one=lambda: one_pass(x1, x2),
        many=lambda: [fn(x1, x2) for fn in l_pass],
    )
    return dict(
        groups=len(param_layers),
        **interleaved_medians(fns, repeats),
        compile_one=compile_one,
        compile_many=compile_l,
        diff=diff,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-inputs", type=int, default=256, help="MLP batch")
    parser.add_argument("--cnn-inputs", type=int, default=16, help="CNN batch")
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[4, 8, 16, 32], help="MLP depths"
    )
    parser.add_argument("--cnn-depth", type=int, default=3)
    args = parser.parse_args()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    cases = {f"MLP depth {d}": (mlp(d), (args.n_inputs, 32)) for d in args.depths}
    cases[f"CNN depth {args.cnn_depth}, 8x8x3"] = (
        cnn(args.cnn_depth),
        (args.cnn_inputs, 8, 8, 3),
    )
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), jax {jax.__version__}, "
        f"float32, MLP inputs {args.n_inputs}x{args.n_inputs}, CNN inputs "
        f"{args.cnn_inputs}x{args.cnn_inputs}, median of {args.repeats}\n"
    )
    print(
        "| network | L | plain NTK [ms] | one pass [ms] | L passes [ms] "
        "| L passes / one pass | compile one pass [s] | compile L passes [s] "
        "| max rel. diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (layers, shape) in cases.items():
        x1, x2 = jax.random.normal(k1, shape), jax.random.normal(k2, shape)
        r = measure(layers, x1, x2, args.repeats)
        print(
            f"| {name} | {r['groups']} | {1e3 * r['plain']:.2f} "
            f"| {1e3 * r['one']:.2f} | {1e3 * r['many']:.2f} "
            f"| {r['many'] / r['one']:.1f} | {r['compile_one']:.2f} "
            f"| {r['compile_many']:.2f} | {r['diff']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
