"""nt_frozen.empirical_ntk_fn (trainable leaves only) vs nt.empirical_ntk_fn on
the same frozen network, implementations 1 and 2, plus the floor: the
trainable-only Jacobian contraction written by hand.

Time: median of repeated runs of the jit-compiled function (one process).
Memory: XLA's compiled memory analysis (arguments + outputs + temporaries).
A configuration whose predicted memory exceeds --max-gib is reported as OOM
and not run.

    uv run python benchmarks/empirical_ntk_cost.py [--widths 512 2048 8192]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import nt_frozen
from nt_frozen import Frozen, merge, nt, split, stax


def mlp(width):
    net = stax.serial(
        stax.Dense(width),
        stax.Relu(),
        Frozen(stax.Dense(width)),
        stax.Relu(),
        stax.Dense(1),
    )
    return net, (64, 64)


def cnn(channels):
    net = stax.serial(
        stax.Conv(channels, (3, 3), padding="SAME"),
        stax.Relu(),
        Frozen(stax.Conv(channels, (3, 3), padding="SAME")),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1),
    )
    return net, (16, 8, 8, 3)


def hand_floor(apply_fn):
    """J_t(x1) J_t(x2)^T over the trainable leaves only, by jacrev + einsum."""

    def ntk(x1, x2, params):
        trainable, frozen = split(params)

        def f(t, x):
            return apply_fn(merge(t, frozen), x)[:, 0]

        j1 = jax.jacrev(f)(trainable, x1)
        j2 = jax.jacrev(f)(trainable, x2)
        leaves = zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2))
        return sum(
            a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T for a, b in leaves
        )

    return ntk


def measure(fn, args, repeats, max_bytes):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    )
    if peak > max_bytes:
        return None, peak
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gib", type=float, default=16.0)
    args = parser.parse_args()
    max_bytes = args.max_gib * 2**30
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    header = f"{'network':<16}{'frozen %':>9}{'impl':>5}{'NT [s]':>10}{'ours [s]':>10}"
    header += f"{'floor [s]':>10}{'speedup':>9}{'NT GiB':>8}{'ours GiB':>9}"
    print(header)
    cases = [(f"mlp n={w}", *mlp(w)) for w in args.widths]
    cases += [(f"cnn c={c}", *cnn(c)) for c in args.channels]
    for name, (init_fn, apply_fn, _), shape in cases:
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        _, params = init_fn(jax.random.PRNGKey(1), shape)
        trainable, frozen = split(params)
        n_t = sum(p.size for p in jax.tree_util.tree_leaves(trainable))
        n_f = sum(p.size for p in jax.tree_util.tree_leaves(frozen))
        floor, _ = measure(
            hand_floor(apply_fn), (x, x, params), args.repeats, max_bytes
        )
        for impl in (1, 2):
            theirs = nt.empirical_ntk_fn(apply_fn, implementation=impl)
            ours = nt_frozen.empirical_ntk_fn(apply_fn, implementation=impl)
            t_nt, m_nt = measure(theirs, (x, x, params), args.repeats, max_bytes)
            t_us, m_us = measure(ours, (x, x, params), args.repeats, max_bytes)
            speed = "OOM-NT" if t_nt is None else f"{t_nt / t_us:.2f}x"
            t_nt_s = "OOM" if t_nt is None else f"{t_nt:.4f}"
            floor_s = "-" if floor is None else f"{floor:.4f}"
            print(
                f"{name:<16}{100 * n_f / (n_t + n_f):>8.1f}%{impl:>5}{t_nt_s:>10}"
                f"{t_us:>10.4f}{floor_s:>10}{speed:>9}"
                f"{m_nt / 2**30:>8.2f}{m_us / 2**30:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
