"""Cost of the frozen analytic kernel_fn relative to the unfrozen one.

Both jit-compiled; median wall time of repeated interleaved runs in one process.

    uv run python benchmarks/kernel_fn_overhead.py [--n-inputs 1024] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from nt_frozen import Frozen, stax


def mlp(depth: int, freeze: bool):
    layers = [stax.Dense(512, W_std=1.5, b_std=0.1)]
    for i in range(depth - 1):
        dense = stax.Dense(512, W_std=1.5, b_std=0.1)
        layers += [stax.Relu(), Frozen(dense) if freeze and i % 2 == 0 else dense]
    return stax.serial(*layers, stax.Relu(), stax.Dense(1))


def cnn(freeze: bool):
    conv = stax.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=0.1)
    return stax.serial(
        stax.Conv(64, (3, 3), padding="SAME"),
        stax.Relu(),
        Frozen(conv) if freeze else conv,
        stax.Relu(),
        stax.Conv(64, (3, 3), padding="SAME"),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1),
    )


def compiled(kernel_fn, x):
    fn = jax.jit(kernel_fn, static_argnames="get")
    jax.block_until_ready(fn(x, None, ("nngp", "ntk")))  # compile outside timing
    return fn


def seconds(fn, x) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(x, None, ("nngp", "ntk")))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-inputs", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    cases = {
        "mlp depth 3": (lambda f: mlp(3, f), (args.n_inputs, 64)),
        "mlp depth 10": (lambda f: mlp(10, f), (args.n_inputs, 64)),
        "cnn 8x8x3": (cnn, (args.n_inputs, 8, 8, 3)),
    }
    device = jax.devices()[0].device_kind
    print(f"device: {device}, jax {jax.__version__}, inputs {args.n_inputs}")
    print(f"{'network':<14}{'unfrozen [s]':>14}{'frozen [s]':>12}{'ratio':>8}")
    for name, (make, shape) in cases.items():
        x = jax.random.normal(key, shape)
        plain_fn, frozen_fn = compiled(make(False)[2], x), compiled(make(True)[2], x)
        plain, frozen = [], []
        for _ in range(args.repeats):  # interleave so both see the same noise
            plain.append(seconds(plain_fn, x))
            frozen.append(seconds(frozen_fn, x))
        p, f = statistics.median(plain), statistics.median(frozen)
        print(f"{name:<14}{p:>14.4f}{f:>12.4f}{f / p:>8.3f}")


if __name__ == "__main__":
    main()
