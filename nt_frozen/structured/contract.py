"""The contractions: one forward and one batched backward pass per input set,
then the Gram form or per-example Jacobians per matched leaf, and NT for the
rest (the NTK is additive over leaves, so the sum is exact).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import _dot_general, nt, nt_utils
from nt_frozen.params import trainable_mask
from nt_frozen.rates import learning_rates
from nt_frozen.restrict import restrict
from nt_frozen.structured.jaxpr import Eqn, Lit, Program, bind, evaluate, shape_of
from nt_frozen.structured.matching import Target
from nt_frozen.structured.plan import Analysis, NTKPlan, NTKRequest, Side, analyse

PyTree = Any


def _replay_chain(prog: Program, t: Target, p, env: dict):
    value = p
    cur = prog.invars[t.leaf]
    for k in t.chain:
        eqn = prog.eqns[k]
        ins = [
            value if r == cur else (r.val if isinstance(r, Lit) else env[r])
            for r in eqn.ins
        ]
        value = bind(eqn, ins)
        cur = eqn.outs[0]
    return value


def _chain_consts(prog: Program, t: Target) -> set:
    cur = prog.invars[t.leaf]
    ids: set[int] = set()
    for k in t.chain:
        eqn = prog.eqns[k]
        ids.update(r for r in eqn.ins if not isinstance(r, Lit) and r != cur)
        cur = eqn.outs[0]
    return ids


def _letters(fx_ndim, trace, diagonal):
    """Einsum letters of the two output sides, and of NT's NTK layout."""
    pool = iter(string.ascii_letters)
    side1, side2, out = [], [], []
    for ax in range(fx_ndim):
        a = next(pool)
        if ax in trace or ax in diagonal:
            side1.append(a)
            side2.append(a)
            if ax in diagonal:
                out.append(a)
        else:
            b = next(pool)
            side1.append(a)
            side2.append(b)
            out += [a, b]
    return side1, side2, out, pool


def _gram_ntk(d1, d2, a1, a2, scale, trace, diagonal, fx_ndim):
    """s1 s2 Σ_{P,Q} (A1[n1,P]·A2[n2,Q]) (D1[f1,P]·D2[f2,Q]), in NT's layout."""
    s1, s2, out, pool = _letters(fx_ndim, trace, diagonal)
    n_pos = a1.ndim - 2
    p_pos = [next(pool) for _ in range(n_pos)]
    q_pos = [next(pool) for _ in range(n_pos)]
    i, j = next(pool), next(pool)
    spec = (
        f"{''.join(s1 + p_pos)}{j},{''.join(s2 + q_pos)}{j},"
        f"{s1[0]}{''.join(p_pos)}{i},{s2[0]}{''.join(q_pos)}{i}->{''.join(out)}"
    )
    return scale * jnp.einsum(spec, d1, d2, a1, a2, optimize="optimal")


def _side_factors(side: Side, leaves, wanted) -> tuple[dict, tuple]:
    """Per matched leaf in `wanted`, what its Jacobian on `side.x` factors
    into, from one forward and one batched backward pass: `(d, a, s)` for
    the Gram form, the per-example Jacobian otherwise; and the output shape
    without the example axis."""
    prog = side.prog
    targets = [t for i, t in side.targets.items() if i in wanted]
    record = {t.a_id for t in targets}
    for t in targets:
        record |= _chain_consts(prog, t)
    # A cotangent has the dtype of the value it belongs to, whatever the
    # input's dtype (integer inputs included).
    eps = {}
    for t in targets:
        aval = prog.avals[prog.eqns[t.eqn].outs[0]]
        eps[t.eqn] = jnp.zeros(aval.shape, aval.dtype)

    def forward(eps):
        outs, recorded = evaluate(prog, [*leaves, side.x], eps, record)
        return outs[0], recorded

    out, vjp_fn, recorded = jax.vjp(forward, eps, has_aux=True)
    rest = out.shape[1:]
    k = math.prod(rest)
    basis = jnp.broadcast_to(
        jnp.eye(k, dtype=out.dtype).reshape(k, 1, *rest), (k, *out.shape)
    )
    (deltas,) = jax.vmap(vjp_fn)(basis)  # eqn -> (k, *z.shape)
    fx_ndim = out.ndim

    def per_example(delta, z_axis):
        # (k, *z) -> (N, *rest, *z without the example axis)
        d = jnp.moveaxis(delta, z_axis + 1, 0)
        return d.reshape(d.shape[0], *rest, *d.shape[2:])

    factors = {}
    for t in targets:
        eqn = prog.eqns[t.eqn]
        a = recorded[t.a_id]
        d = per_example(deltas[t.eqn], t.z_axis)
        if t.gram:
            (lc, rc), _ = eqn.params["dimension_numbers"]
            ca = (lc, rc)[1 - t.q_pos][0]
            a_mat = jnp.moveaxis(a, (t.a_axis, ca), (0, -1))
            if t.q_pos == 0:  # z = [q free, a free]: move q's free dim last
                d = jnp.moveaxis(d, fx_ndim, -1)
            ones = jnp.ones(leaves[t.leaf].shape, leaves[t.leaf].dtype)
            scale = _replay_chain(prog, t, ones, recorded).reshape(-1)[0]
            factors[t.leaf] = (d, a_mat, scale)
        else:
            factors[t.leaf] = _per_example_jacobian(
                prog, t, eqn, a, d, leaves[t.leaf], recorded
            )
    return factors, rest


def _structured_blocks(analysis: Analysis, blocks, rates, trace_axes, diagonal_axes):
    """Per block (a set of leaf indices), the NTK of its matched leaves, each
    weighted by its learning rate (Θ = Σ rate · J Jᵀ)."""
    leaves, sides = analysis.leaves, analysis.sides
    wanted = {i for block in blocks for i in block}
    first, rest = _side_factors(sides[0], leaves, wanted)
    second = first if len(sides) == 1 else _side_factors(sides[1], leaves, wanted)[0]
    fx_ndim = 1 + len(rest)
    trace = nt_utils.canonicalize_axis(trace_axes, fx_ndim)
    diagonal = nt_utils.canonicalize_axis(diagonal_axes, fx_ndim)
    size = nt_utils.size_at((sides[0].x.shape[0], *rest), trace)
    contributions = {}
    for i, f1 in first.items():
        f2 = second[i]
        if isinstance(f1, tuple):  # Gram form: (d, a, s) per side
            (d1, a1, s1), (d2, a2, s2) = f1, f2
            ntk = _gram_ntk(d1, d2, a1, a2, s1 * s2, trace, diagonal, fx_ndim)
        else:  # per-example Jacobians
            param_axes = list(range(fx_ndim, f1.ndim))
            ntk = _dot_general(f1, f2, trace + param_axes, diagonal)
        contributions[i] = ntk / size if rates[i] == 1.0 else (rates[i] / size) * ntk
    parts = [
        [contributions[i] for i in block if i in contributions] for block in blocks
    ]
    return [sum(part[1:], start=part[0]) if part else None for part in parts]


def _per_example_jacobian(prog, t: Target, eqn: Eqn, a, d, p, recorded):
    """J[n, *rest, *p.shape] = vjp(p ↦ E(a_n, L(p)))(δ_n), row by row."""
    fx_extra = d.ndim - (len(shape_of(prog, eqn.outs[0])) - 1) - 1

    def z_of(p, a_row):
        q = _replay_chain(prog, t, p, recorded)
        operands: list[Any] = [None, None]
        operands[t.q_pos] = q
        operands[1 - t.q_pos] = jnp.expand_dims(a_row, t.a_axis)
        return bind(eqn, operands)

    def row(a_row, d_row):  # d_row: (*rest, *z without example axis)
        _, pullback = jax.vjp(lambda p: z_of(p, a_row), p)

        def one(ct):
            return pullback(jnp.expand_dims(ct, t.z_axis))[0]

        flat = d_row.reshape(-1, *d_row.shape[fx_extra:])
        return jax.vmap(one)(flat).reshape(*d_row.shape[:fx_extra], *p.shape)

    return jax.vmap(row, in_axes=(t.a_axis, 0))(a, d)


def _nt_block_ntk(request: NTKRequest, plan: NTKPlan, block: Sequence[int]):
    """NT's NTK of the leaves in `block`, the others (frozen included)
    constant, each leaf's Jacobian scaled by the square root of its learning
    rate; with the implementation and `vmap_axes` that `plan` chose."""
    view = restrict(request.apply_fn, request.params, block)
    fn = nt.empirical_ntk_fn(
        view.fn,
        trace_axes=request.trace_axes,
        diagonal_axes=request.diagonal_axes,
        vmap_axes=plan.nt_vmap_axes,
        implementation=plan.nt_implementation,
        **request.nt_options,
    )
    return fn(request.x1, request.x2, view.leaves, **request.apply_fn_kwargs)


def _no_examples(x1, x2) -> bool:
    return any(
        isinstance(x, (jax.Array, np.ndarray)) and x.ndim and x.shape[0] == 0
        for x in (x1, x2)
    )


def block_ntks(
    apply_fn: Callable,
    x1,
    x2,
    params: PyTree,
    blocks: Sequence[Sequence[int]],
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    nt_options: dict | None = None,
    **apply_fn_kwargs,
) -> list:
    """The empirical NTK of each block of trainable leaves, by the fastest path.

    `blocks[b]` lists indices into `jax.tree_util.tree_leaves(params)`; frozen
    leaves in a block are ignored (a block without trainable leaves gives
    zeros). One forward and one batched backward pass per input set serve
    every block; unmatched leaves go to NT block by block.
    """
    mask = jax.tree_util.tree_leaves(trainable_mask(params))
    rates = jax.tree_util.tree_leaves(learning_rates(params))
    blocks = [[i for i in block if mask[i]] for block in blocks]
    request = NTKRequest(
        apply_fn,
        x1,
        x2,
        params,
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        vmap_axes=vmap_axes,
        nt_options=nt_options or {},
        apply_fn_kwargs=apply_fn_kwargs,
    )
    if _no_examples(x1, x2):  # an empty kernel, as NT gives
        return [_zeros_like_ntk(request) for _ in blocks]
    analysis = analyse(request)
    matched = set(analysis.sides[0].targets) if analysis.sides else set()
    structured = [None] * len(blocks)
    if matched:
        structured = _structured_blocks(
            analysis, blocks, rates, trace_axes, diagonal_axes
        )
    results = []
    for block, ntk in zip(blocks, structured):
        rest = [i for i in block if i not in matched]
        if rest:
            theirs = _nt_block_ntk(request, analysis.plan, rest)
            ntk = theirs if ntk is None else ntk + theirs
        results.append(_zeros_like_ntk(request) if ntk is None else ntk)
    return results


def _zeros_like_ntk(request: NTKRequest):
    """Zeros of the NTK's shape (a block without trainable leaves)."""
    shape = jax.eval_shape(
        lambda: nt.empirical_ntk_fn(
            request.apply_fn,
            request.trace_axes,
            request.diagonal_axes,
            implementation=1,
        )(request.x1, request.x2, request.params, **request.apply_fn_kwargs)
    )
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
