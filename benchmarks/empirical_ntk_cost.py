"""Empirical NTK cost: NT's calls against nt_frozen's default and a hand floor.

Rows: MLP d -> n -> n -> 1 (NTK parameterization, no biases) with the middle
Dense frozen, N inputs; and a CNN (Conv, Relu, frozen Conv+AvgPool block,
Relu, Flatten, Dense) on N 8x8x3 images. Trace over outputs, float32, each
function jit-compiled. All methods of a row are compiled first, then timed
round-robin (`--rounds` passes of up to `--repeats` calls each); each cell is
the median of its calls.

Columns:
- NT default: `nt.empirical_ntk_fn(apply_fn)` (implementation 1, no vmap);
- NT best: the fastest of implementations 1, 2, 3 with `vmap_axes` None or 0
  (NT differentiates every leaf; frozen ones have zero Jacobians);
- ours: `nt_frozen.empirical_ntk_fn(apply_fn)` with its defaults;
- floor: the structured computation written by hand for this network (one
  forward pass recording layer inputs, one backward pass for the cotangents
  of the trainable layers' outputs, then Gram / per-example contractions);
- memory: XLA's compiled memory analysis (arguments + outputs + temporaries).
Every column's kernel is checked against ours (max relative difference).

    uv run python benchmarks/empirical_ntk_cost.py
    uv run python benchmarks/empirical_ntk_cost.py --mlp-rows 1024,64,8192 --cnn-rows
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import nt_frozen
from nt_frozen import Frozen, nt, stax
from nt_frozen.structured import ntk_plan

MLP_ROWS = ((64, 64, 2048), (8, 16, 2048), (8, 16, 8192))
CNN_ROWS = ((256, 64),)


def mlp(width):
    return stax.serial(
        stax.Dense(width),
        stax.Relu(),
        Frozen(stax.Dense(width)),
        stax.Relu(),
        stax.Dense(1),
    )


def mlp_floor(params, x):
    """Θ = (x xᵀ / d) ⊙ (δ1 δ1ᵀ) + h2 h2ᵀ / n (readout), δ1 from one vjp."""
    w1, w2, w3 = jax.tree_util.tree_leaves(params)
    d, n = w1.shape

    def f(e1):
        h1 = jax.nn.relu((x @ w1) / np.sqrt(d) + e1)
        h2 = jax.nn.relu((h1 @ w2) / np.sqrt(n))
        return (h2 @ w3)[:, 0] / np.sqrt(n), h2

    out, pullback, h2 = jax.vjp(f, jnp.zeros((x.shape[0], n), x.dtype), has_aux=True)
    (delta1,) = pullback(jnp.ones_like(out))  # examples are independent
    return (x @ x.T / d) * (delta1 @ delta1.T) + (h2 @ h2.T) / n


def cnn(channels):
    block = stax.serial(
        stax.Conv(channels, (3, 3), padding="SAME", W_std=2.0, b_std=0.1),
        stax.AvgPool((2, 2)),
    )
    return stax.serial(
        stax.Conv(channels, (3, 3), padding="SAME", W_std=1.3, b_std=1.0),
        stax.Relu(),
        Frozen(block),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.2),
    )


def cnn_floor(params, x):
    """Per-example Jacobians of the first conv (patches ⊗ δ), its bias (Σ δ),
    and the readout's Gram form."""
    w1, b1, w2, b2, w3 = jax.tree_util.tree_leaves(params)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(h, w):
        return jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=dn)

    s1 = 1.3 / np.sqrt(w1.shape[0] * w1.shape[1] * w1.shape[2])
    s2 = 2.0 / np.sqrt(w2.shape[0] * w2.shape[1] * w2.shape[2])

    def f(e1):
        u1 = s1 * conv(x, w1) + 1.0 * b1 + e1
        z2 = s2 * conv(jax.nn.relu(u1), w2) + 0.1 * b2
        pooled = jax.lax.reduce_window(
            z2, 0.0, jax.lax.add, (1, 2, 2, 1), (1,) * 4, "VALID"
        )
        flat = jax.nn.relu(pooled / 4).reshape(x.shape[0], -1)
        return (flat @ w3)[:, 0] * 1.2 / np.sqrt(flat.shape[1]), flat

    e1 = jnp.zeros((*x.shape[:3], w1.shape[-1]), x.dtype)
    out, pullback, flat = jax.vjp(f, e1, has_aux=True)
    (delta,) = pullback(jnp.ones_like(out))  # (N, H, W, C) = ∂f/∂u1
    patches = jax.lax.conv_general_dilated_patches(
        x, w1.shape[:2], (1, 1), "SAME", dimension_numbers=dn
    )
    j_w1 = s1 * jnp.einsum("nhwp,nhwc->npc", patches, delta).reshape(x.shape[0], -1)
    j_b1 = delta.sum((1, 2))
    readout = (flat @ flat.T) * 1.2**2 / flat.shape[1]
    return j_w1 @ j_w1.T + j_b1 @ j_b1.T + readout


def compile_within(fn, args, max_bytes):
    """(compiled function or None if over the memory limit, compiled bytes)."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )
    return (None if peak > max_bytes else compiled), peak


def time_interleaved(calls, warm, repeats, rounds, seconds_per_round):
    """Median seconds of each call, timed in `rounds` round-robin passes, so
    that every method sees the same machine state (clocks, caches, other
    load). Each pass makes `repeats` calls of a method, fewer (at least 1)
    where they would take over `seconds_per_round` by its warm-up time
    `warm[name]`."""
    times = {name: [] for name in calls}
    counts = {
        name: max(1, min(repeats, int(seconds_per_round / warm[name])))
        for name in calls
    }
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(counts[name]):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def row(name, net, floor, shape, timing, max_bytes):
    init_fn, apply_fn, _ = net
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    _, params = init_fn(jax.random.PRNGKey(1), shape)
    args = (x, None, params)
    fns = {"ours": (nt_frozen.empirical_ntk_fn(apply_fn), args)}
    fns["floor"] = (floor, (params, x))
    for impl in (1, 2, 3):
        for vmap_axes in (None, 0):
            fn = nt.empirical_ntk_fn(apply_fn, implementation=impl, vmap_axes=vmap_axes)
            fns[impl, vmap_axes] = (fn, args)
    compiled, memory, calls = {}, {}, {}
    for key, (fn, fn_args) in fns.items():
        compiled[key], memory[key] = compile_within(fn, fn_args, max_bytes)
        if compiled[key] is not None:
            calls[key] = functools.partial(compiled[key], *fn_args)
    values, warm = {}, {}  # the warm-up call gives the value to compare
    for key, call in calls.items():
        start = time.perf_counter()
        values[key] = jax.block_until_ready(call())
        warm[key] = time.perf_counter() - start
    t = dict.fromkeys(fns) | time_interleaved(calls, warm, *timing)
    nt_keys = [k for k in fns if k not in ("ours", "floor")]
    best = min((k for k in nt_keys if t[k] is not None), key=lambda k: t[k])
    t_def, t_best, t_ours, t_floor = t[1, None], t[best], t["ours"], t["floor"]
    m_def, m_best, m_ours, m_floor = (
        memory[k] for k in ((1, None), best, "ours", "floor")
    )
    diff = max(rel_diff(v, values["ours"]) for v in values.values())
    plan = ntk_plan(apply_fn, x, None, params)

    def ms(t):
        return "OOM" if t is None else f"{1e3 * t:.1f}"

    def mib(m):
        return f"{m / 2**20:.0f}"

    print(
        f"| {name} | {ms(t_def)} | {ms(t_best)} (impl {best[0]}, vmap {best[1]}) "
        f"| {ms(t_ours)} | {ms(t_floor)} | {t_best / t_ours:.2f}x "
        f"| {t_ours / t_floor:.2f}x "
        f"| {'-' if t_def is None else f'{t_def / t_ours:.0f}x'} "
        f"| {mib(m_def)} / {mib(m_best)} / {mib(m_ours)} / {mib(m_floor)} "
        f"| {diff:.1e} | {plan.path} |",
        flush=True,
    )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--seconds-per-round", type=float, default=0.5, help="fewer calls if slower"
    )
    parser.add_argument(
        "--mlp-rows",
        nargs="*",
        type=_ints,
        default=MLP_ROWS,
        metavar="N,d,n",
        help="MLP rows (default: %(default)s)",
    )
    parser.add_argument(
        "--cnn-rows",
        nargs="*",
        type=_ints,
        default=CNN_ROWS,
        metavar="N,channels",
        help="CNN rows on 8x8x3 images (default: %(default)s)",
    )
    parser.add_argument("--max-gib", type=float, default=16.0)
    args = parser.parse_args()
    max_bytes = args.max_gib * 2**30
    timing = (args.repeats, args.rounds, args.seconds_per_round)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, float32")
    print(
        "| network (N, d, n) | NT default [ms] | NT best [ms] | ours [ms] "
        "| floor [ms] | NT best / ours | ours / floor | NT default / ours "
        "| memory MiB (NT default / NT best / ours / floor) | max rel. diff "
        "| our path |"
    )
    print("|---" * 11 + "|")
    for n_inputs, d, n in args.mlp_rows:
        row(
            f"MLP ({n_inputs}, {d}, {n})",
            mlp(n),
            mlp_floor,
            (n_inputs, d),
            timing,
            max_bytes,
        )
    for n_inputs, c in args.cnn_rows:
        row(
            f"CNN ({n_inputs}, 8x8x3, {c} ch.)",
            cnn(c),
            cnn_floor,
            (n_inputs, 8, 8, 3),
            timing,
            max_bytes,
        )


if __name__ == "__main__":
    main()
