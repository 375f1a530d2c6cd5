"""Structured empirical NTKs: the fastest exact path, chosen by default.

The empirical NTK is a sum over parameter leaves, `Θ = Σ_p J_p J_pᵀ`. For a
leaf `p` that reaches the network only through one linear operation
`z = E(a, L(p))` (a `dot_general`, a `conv_general_dilated` or a bias `add`;
`L` a chain of scalings, casts and reshapes), `J_p = δ_z ∘ ∂z/∂p` with
`δ_z = ∂f/∂z`. So one batched backward pass, with a zero perturbation added at
every such `z`, gives every `δ_z` at once, and the forward pass records every
`a`; the Jacobians of the parameters themselves are never built. For a `Dense`
leaf `W` (`z = a @ W`) the contraction is the Gram form

    Θ_W(x1, x2) = s² (a1 a2ᵀ) ⊙ (δ1 δ2ᵀ)      (s: the scale L applies to W)

at `O(N² (fan_in + fan_out))`; other matched leaves take the per-example
Jacobian `J_p = vjp(p ↦ E(a_n, L(p)))(δ_n)` from the recorded `a` and `δ`
(cheap for biases and convolution kernels), and a `Dense` leaf applied at many
positions (e.g. inside attention) takes whichever of the two forms costs fewer
flops. Scale factors are never assumed (`W_std / sqrt(fan_in)`, the standard
parameterization, ...): `δ` is taken at the raw operation and `s` is read off
`L`, so what `apply_fn` does to each leaf is what is differentiated.

How the path is chosen (:func:`ntk_plan` reports it):

1. `apply_fn(params, x)` is traced to a jaxpr (nested `jit`s inlined) and
   every value's *example axis* is tracked from `x`'s axis 0. The network
   treats examples independently when every operation keeps row `n` of its
   outputs a function of row `n` of its inputs (elementwise ops, reductions,
   `dot_general`s and convolutions that do not contract or window over the
   example axis, reshapes that keep it, `scan` carrying it, ...). Anything
   else, or an unknown primitive touching the example axis, counts as
   dependent.
2. Independent network, single array output, no `apply_fn_kwargs`, `x` and
   `x2` arrays of the same trailing shape: each trainable leaf that matches
   the pattern above takes the structured path; every other trainable leaf
   falls back to NT: implementation 2 with `vmap_axes=0`, or the user's
   `vmap_axes` if given; the results are summed (the NTK is additive over
   leaves, so the sum is exact).
3. Otherwise the whole network falls back to NT: implementation 2 with
   `vmap_axes=0` when the examples are independent, else without
   `vmap_axes` (the user's `vmap_axes`, if given, wins). Implementation 2
   because it traces every network NT supports (implementation 3 fails on
   `stax.repeat`'s `scan` on current JAX).

Frozen leaves (inside :class:`~nt_frozen.params.FrozenParams`) are constants
on every path: they contribute nothing and cost no Jacobian. An explicit
`implementation=` to :func:`nt_frozen.empirical_ntk_fn` bypasses all of this
and calls NT exactly as asked.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from nt_frozen._compat import (
    _dot_general,
    bind_equation,
    nt,
    nt_utils,
    scan_counts,
)
from nt_frozen.params import trainable_mask
from nt_frozen.rates import learning_rates, scale_jacobian

PyTree = Any

# ---------------------------------------------------------------------------
# A flat program: the jaxpr with nested jits inlined and values numbered.


@dataclasses.dataclass(frozen=True)
class _Lit:
    val: Any


@dataclasses.dataclass(frozen=True)
class _Eqn:
    prim: Any
    params: dict
    ins: tuple  # value ids (int) or _Lit
    outs: tuple[int, ...]


@dataclasses.dataclass
class _Program:
    eqns: list
    consts: dict  # id -> value
    avals: dict  # id -> aval (shape and dtype)
    invars: list
    outvars: list

    @property
    def shapes(self) -> dict:
        return {i: tuple(a.shape) for i, a in self.avals.items()}


# Call-like primitives whose body is inlined: differentiating the inlined body
# is what differentiating the call does (`remat2` is `jax.checkpoint`).
_INLINE = {"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}


def _sub_jaxpr(params: dict) -> tuple[Any, list] | None:
    """The (jaxpr, consts) held by a call-like primitive's params, or None."""
    for value in params.values():
        if isinstance(value, jex_core.ClosedJaxpr):
            return value.jaxpr, value.consts
        if isinstance(value, jex_core.Jaxpr):
            return value, []
    return None


def _flatten(closed) -> _Program:
    prog = _Program([], {}, {}, [], [])
    counter = iter(range(1 << 62))

    def new(aval) -> int:
        i = next(counter)
        prog.avals[i] = aval
        return i

    def walk(jaxpr, consts, in_refs):
        env = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = new(v.aval)
            prog.consts[env[v]] = c
        env.update(zip(jaxpr.invars, in_refs))

        def ref(a):
            return _Lit(a.val) if isinstance(a, jex_core.Literal) else env[a]

        for eqn in jaxpr.eqns:
            ins = tuple(ref(a) for a in eqn.invars)
            sub = _sub_jaxpr(eqn.params)
            if eqn.primitive.name in _INLINE and sub is not None:
                outs = walk(*sub, ins)
            else:
                outs = [new(v.aval) for v in eqn.outvars]
                prog.eqns.append(_Eqn(eqn.primitive, eqn.params, ins, tuple(outs)))
            env.update(zip(eqn.outvars, outs))
        return [ref(a) for a in jaxpr.outvars]

    prog.invars = [new(v.aval) for v in closed.jaxpr.invars]
    prog.outvars = walk(closed.jaxpr, closed.consts, prog.invars)
    return prog


def _shape(prog: _Program, r) -> tuple[int, ...]:
    return tuple(np.shape(r.val)) if isinstance(r, _Lit) else tuple(prog.avals[r].shape)


def _dtype(prog: _Program, r):
    return np.result_type(r.val) if isinstance(r, _Lit) else prog.avals[r].dtype


def _inexact(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def _bind(eqn: _Eqn, ins):
    return bind_equation(eqn.prim, eqn.params, list(ins))


def _evaluate(prog: _Program, in_values, eps: dict, record: set):
    """Run `prog`, adding `eps[k]` to the output of equation `k`; also return
    the values of the ids in `record`."""
    env = dict(prog.consts)
    env.update(zip(prog.invars, in_values))

    def read(r):
        return r.val if isinstance(r, _Lit) else env[r]

    for k, eqn in enumerate(prog.eqns):
        ans = _bind(eqn, map(read, eqn.ins))
        outs = list(ans) if eqn.prim.multiple_results else [ans]
        if k in eps:
            outs[0] = outs[0] + eps[k]
        env.update(zip(eqn.outs, outs))
    return [read(r) for r in prog.outvars], {i: env[i] for i in record}


# ---------------------------------------------------------------------------
# Which values carry the example axis, and where: one rule per primitive (in
# the style of NT's `STRUCTURE_RULES`), keyed by name because the primitive
# objects of call-like and control-flow operations moved between JAX releases.


class _Dependent(Exception):
    """The network may mix examples (or we cannot tell)."""


# rule(eqn, axes, shapes) -> the example axis of each output; `axes` holds each
# operand's example axis (None: the operand has none).
_AXIS_RULES: dict[str, Callable[[_Eqn, list, list], list]] = {}


def _carried_axis(axes) -> int:
    carried = {a for a in axes if a is not None}
    if len(carried) != 1:
        raise _Dependent("operands carry the example axis at different positions")
    return carried.pop()


def _rule(*names: str, carried: bool = True):
    """Register `rule` for `names`. With `carried`, every operand with an
    example axis must hold it at the same position `e`, passed as 4th
    argument; otherwise the rule reads `axes` itself."""

    def register(rule):
        def checked(eqn, axes, shapes):
            return rule(eqn, axes, shapes, _carried_axis(axes))

        for name in names:
            _AXIS_RULES[name] = checked if carried else rule
        return rule

    return register


@_rule(
    *"abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj "
    "convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc "
    "exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma log log1p "
    "logistic lt max min mul ne neg nextafter not or pow real reduce_precision "
    "rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan "
    "tanh xor sharding_constraint optimization_barrier".split()
)
def _elementwise(eqn, axes, shapes, e):
    return [e] * len(eqn.outs)


def _kept(name: str, axis_taken) -> None:
    """Register a rule for an operation that keeps the example axis unless it works
    along it (`axis_taken(params, e)`)."""

    def rule(eqn, axes, shapes, e):
        if axis_taken(eqn.params, e):
            raise _Dependent(f"{name} along the example axis")
        return [e] * len(eqn.outs)

    _rule(name)(rule)


for _name in "cumsum cumprod cummax cummin cumlogsumexp".split():
    _kept(_name, lambda p, e: p["axis"] == e)
_kept("sort", lambda p, e: p["dimension"] == e)
_kept("split", lambda p, e: p["axis"] == e)
_kept("concatenate", lambda p, e: p["dimension"] == e)
_kept("rev", lambda p, e: e in p["dimensions"])
_kept("pad", lambda p, e: tuple(p["padding_config"][e]) != (0, 0, 0))


@_rule("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
       "reduce_or", "argmax", "argmin")  # fmt: skip
def _reduce(eqn, axes, shapes, e):
    if e in eqn.params["axes"]:
        raise _Dependent(f"{eqn.prim.name} reduces over the example axis")
    return [e - sum(a < e for a in eqn.params["axes"])] * len(eqn.outs)


@_rule("transpose")
def _transpose(eqn, axes, shapes, e):
    return [list(eqn.params["permutation"]).index(e)]


@_rule("broadcast_in_dim")
def _broadcast_in_dim(eqn, axes, shapes, e):
    out = eqn.params["broadcast_dimensions"][e]
    if eqn.params["shape"][out] != shapes[0][e]:
        raise _Dependent("broadcast along the example axis")
    return [out]


@_rule("squeeze")
def _squeeze(eqn, axes, shapes, e):
    return [e - sum(d < e for d in eqn.params["dimensions"])]


@_rule("reshape")
def _reshape(eqn, axes, shapes, e):
    old, new = shapes[0], eqn.params["new_sizes"]
    if eqn.params.get("dimensions") is None:
        before = math.prod(old[:e])
        for j in range(len(new)):
            if math.prod(new[:j]) == before and new[j] == old[e]:
                return [j]
    raise _Dependent("reshape merges the example axis")


@_rule("dot_general", carried=False)
def _dot_general_axis(eqn, axes, shapes):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    le, re = axes
    if le is not None and re is not None:
        if le in lb and re in rb and lb.index(le) == rb.index(re):
            return [lb.index(le)]
        raise _Dependent("dot_general pairs different examples")
    e, contract, batch, side = (le, lc, lb, 0) if le is not None else (re, rc, rb, 1)
    if e in contract:
        raise _Dependent("dot_general contracts over the example axis")
    if e in batch:
        return [batch.index(e)]
    free = [d for d in range(len(shapes[side])) if d not in contract and d not in batch]
    offset = len(batch)
    if side == 1:
        offset += len(shapes[0]) - len(lc) - len(lb)
    return [offset + free.index(e)]


@_rule("conv_general_dilated")
def _conv(eqn, axes, shapes, e):
    dn = eqn.params["dimension_numbers"]
    if axes[1] is None and e == dn.lhs_spec[0] and eqn.params["batch_group_count"] == 1:
        return [dn.out_spec[0]]
    raise _Dependent("convolution mixes examples")


@_rule("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window")
def _reduce_window(eqn, axes, shapes, e):
    p = eqn.params
    trivial = (
        p["window_dimensions"][e] == 1
        and p["window_strides"][e] == 1
        and tuple(p["padding"][e]) == (0, 0)
        and p["base_dilation"][e] == 1
        and p["window_dilation"][e] == 1
    )
    if not trivial:
        raise _Dependent("pooling window over the example axis")
    return [e] * len(eqn.outs)


@_rule("slice")
def _slice(eqn, axes, shapes, e):
    p = eqn.params
    strides = p["strides"] or (1,) * len(shapes[0])
    if (p["start_indices"][e], p["limit_indices"][e], strides[e]) != (
        0,
        shapes[0][e],
        1,
    ):
        raise _Dependent("slice along the example axis")
    return [e]


@_rule("dynamic_slice", carried=False)
def _dynamic_slice(eqn, axes, shapes):
    # A full-length slice starts at 0 whatever the index (JAX clamps it).
    e = axes[0]
    if e is None or any(a is not None for a in axes[1:]):
        raise _Dependent("dynamic_slice indexed per example")
    if eqn.params["slice_sizes"][e] != shapes[0][e]:
        raise _Dependent("dynamic_slice along the example axis")
    return [e]


@_rule("gather", carried=False)
def _gather(eqn, axes, shapes):
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    batching = tuple(getattr(dn, "operand_batching_dims", ()))
    e = axes[0]
    if e is None or axes[1] is not None:
        raise _Dependent("gather indexed per example")
    if (
        e in dn.collapsed_slice_dims
        or e in dn.start_index_map
        or e in batching
        or sizes[e] != shapes[0][e]
    ):
        raise _Dependent("gather along the example axis")
    # The operand's dimensions that are sliced whole map, in order, to the
    # output's offset dimensions.
    kept = [
        d
        for d in range(len(shapes[0]))
        if d not in dn.collapsed_slice_dims and d not in batching
    ]
    return [dn.offset_dims[kept.index(e)]]


def _body_axes(closed, in_axes) -> list:
    """Example axes of a sub-jaxpr's outputs (a branch, a custom rule's body)."""
    if isinstance(closed, jex_core.Jaxpr):
        closed = jex_core.ClosedJaxpr(closed, [])
    return _example_axes(_flatten(closed), list(in_axes))[1]


@_rule("cond", carried=False)
def _cond(eqn, axes, shapes):
    if axes[0] is not None:
        raise _Dependent("cond chooses per example")
    outs = [_body_axes(branch, axes[1:]) for branch in eqn.params["branches"]]
    if any(o != outs[0] for o in outs):
        raise _Dependent("cond branches place the example axis differently")
    return outs[0]


@_rule("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", carried=False)
def _custom_call(eqn, axes, shapes):
    sub = _sub_jaxpr(eqn.params)
    if sub is None:
        raise _Dependent(f"{eqn.prim.name} on the example axis")
    return _body_axes(jex_core.ClosedJaxpr(*sub), axes)


@_rule("scan", carried=False)
def _scan_axes(eqn, axes, shapes):
    n_consts, n_carry = scan_counts(eqn.params)
    body = _flatten(eqn.params["jaxpr"])
    in_axes = list(axes)
    for i in range(n_consts + n_carry, len(in_axes)):
        if in_axes[i] == 0:
            raise _Dependent("scan over the example axis")
        in_axes[i] = None if in_axes[i] is None else in_axes[i] - 1
    for _ in range(3):  # carries settle after one extra round at most
        out_axes = _example_axes(body, in_axes)[1]
        carry_out = out_axes[:n_carry]
        carry_in = in_axes[n_consts : n_consts + n_carry]
        if carry_out == carry_in:
            ys = [None if a is None else a + 1 for a in out_axes[n_carry:]]
            return carry_out + ys
        for j, (a_in, a_out) in enumerate(zip(carry_in, carry_out)):
            if a_in is not None and a_out != a_in:
                raise _Dependent("scan moves the example axis of its carry")
            in_axes[n_consts + j] = a_out
    raise _Dependent("scan carry does not settle")


def _out_axes(eqn: _Eqn, axes, shapes) -> list:
    """Example axis of each output of `eqn`, or raise `_Dependent`."""
    if all(a is None for a in axes):
        return [None] * len(eqn.outs)
    rule = _AXIS_RULES.get(eqn.prim.name)
    if rule is None:
        raise _Dependent(f"{eqn.prim.name} on the example axis")
    return rule(eqn, axes, shapes)


def _example_axes(prog: _Program, in_axes) -> tuple[dict, list]:
    axes = dict.fromkeys(prog.consts)
    axes.update(zip(prog.invars, in_axes))

    def axis(r):
        return None if isinstance(r, _Lit) else axes[r]

    for eqn in prog.eqns:
        shapes = [_shape(prog, r) for r in eqn.ins]
        axes.update(zip(eqn.outs, _out_axes(eqn, [axis(r) for r in eqn.ins], shapes)))
    return axes, [axis(r) for r in prog.outvars]


# ---------------------------------------------------------------------------
# Which trainable leaves enter through one linear operation.

# Linear in their (single) non-constant operand; `mul`/`div` by a constant.
_CHAIN = {
    "convert_element_type", "copy", "copy_p", "neg", "reduce_precision",
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "mul", "div",
}  # fmt: skip
# Chain ops that only scale: the Gram form needs `L(p) = s * p`.
_SCALAR_CHAIN = {"convert_element_type", "copy", "copy_p", "neg", "mul", "div"}


@dataclasses.dataclass(frozen=True)
class _Target:
    leaf: int  # index among all parameter leaves
    chain: tuple[int, ...]  # equation indices of L
    eqn: int  # equation index of E
    q_pos: int  # operand position of L(p) in E
    a_id: int  # the other operand
    a_axis: int
    z_axis: int
    gram: bool  # a 2-D Dense-like leaf with a scalar chain


def _taint(prog: _Program, sources) -> set:
    tainted = set(sources)
    for eqn in prog.eqns:
        if any(not isinstance(r, _Lit) and r in tainted for r in eqn.ins):
            tainted.update(eqn.outs)
    return tainted


def _uses(prog: _Program) -> dict:
    uses: dict = {}
    for k, eqn in enumerate(prog.eqns):
        for pos, r in enumerate(eqn.ins):
            if not isinstance(r, _Lit):
                uses.setdefault(r, []).append((k, pos))
    for r in prog.outvars:
        if not isinstance(r, _Lit):
            uses.setdefault(r, []).append((None, None))
    return uses


def _match(prog, axes, uses, tainted, leaf, vid) -> _Target | str:
    """The target of leaf `vid`, or the reason it has none."""
    chain, cur, scalar = [], vid, True
    while True:
        us = uses.get(cur, [])
        if len(us) != 1 or us[0][0] is None:
            return f"used {len(us)} times" if len(us) != 1 else "is an output"
        k, pos = us[0]
        eqn = prog.eqns[k]
        name = eqn.prim.name
        others = [r for i, r in enumerate(eqn.ins) if i != pos]
        if name in _CHAIN and all(
            isinstance(r, _Lit) or (r not in tainted and axes[r] is None)
            for r in others
        ):
            if name == "div" and pos != 0:
                return "divides by the parameter"
            if name == "convert_element_type" and not (
                _inexact(_dtype(prog, cur)) and _inexact(eqn.params["new_dtype"])
            ):
                # Only casts between floating dtypes are linear; rounding to
                # an integer or boolean has zero derivative.
                to = np.dtype(eqn.params["new_dtype"]).name
                return f"is cast to {to} (not linear)"
            if name in ("mul", "div") and math.prod(_shape(prog, others[0])) != 1:
                scalar = False
            scalar = scalar and name in _SCALAR_CHAIN
            chain.append(k)
            cur = eqn.outs[0]
            continue
        break
    if len(eqn.ins) != 2 or isinstance(others[0], _Lit):
        return f"enters {name}"
    a = others[0]
    z_axis = axes[eqn.outs[0]]
    if axes[a] is None or z_axis is None:
        return f"enters {name} without the example axis"
    q_shape = _shape(prog, cur)
    if name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        a_batch = (lb, rb)[1 - pos]
        if axes[a] in a_batch:
            return "dot_general batches the parameter with the examples"
        q_contract = (lc, rc)[pos]
        gram = scalar and len(q_shape) == 2 and len(q_contract) == 1 and not lb
    elif name == "conv_general_dilated":
        if pos != 1:
            return "is a convolution's input"
        gram = False
    elif name in ("add", "sub"):
        if len(q_shape) == len(_shape(prog, a)) and q_shape[z_axis] != 1:
            return f"{name} along the example axis"
        if len(q_shape) not in (0, len(_shape(prog, a))):
            return f"{name} with an unexpected broadcast"
        gram = False
    else:
        return f"enters {name}"
    return _Target(leaf, tuple(chain), k, pos, a, axes[a], z_axis, gram)


# ---------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """How one trainable parameter leaf is differentiated.

    Attributes:
      path: the leaf's key path in `params` (`jax.tree_util.keystr`).
      method: `"gram"` (Dense-like Gram form), `"jacobian"` (per-example
        Jacobian from the recorded activations and cotangents) or `"nt"`
        (NT's implementation, see :class:`NTKPlan`).
      reason: why a leaf falls back to NT (empty otherwise).
    """

    path: str
    method: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class NTKPlan:
    """What the default empirical NTK does for given network and inputs.

    Attributes:
      independent: the network treats examples independently (see the module
        docstring); `None` when not analysed.
      leaves: one :class:`LeafPlan` per trainable leaf.
      nt_implementation: NT implementation for the leaves with method `"nt"`.
      nt_vmap_axes: NT `vmap_axes` for them.
      reason: why the whole network falls back to NT (empty otherwise).
    """

    independent: bool | None
    leaves: tuple[LeafPlan, ...]
    nt_implementation: int
    nt_vmap_axes: Any
    reason: str = ""

    @property
    def path(self) -> str:
        """`"structured"` (no NT call), `"mixed"` or `"nt"` (no structure)."""
        methods = {leaf.method for leaf in self.leaves}
        if "nt" not in methods:
            return "structured"
        return "nt" if methods == {"nt"} else "mixed"


@dataclasses.dataclass(frozen=True)
class _Side:
    """One input set (`x1` or `x2`): its program and the matched leaves."""

    x: Any
    prog: _Program
    targets: dict  # leaf index -> _Target, for the structured leaves


@dataclasses.dataclass(frozen=True)
class _Analysis:
    plan: NTKPlan
    leaves: list
    treedef: Any
    # (x1's,) when x2 is None, else (x1's, x2's); empty when NT takes it all.
    sides: tuple[_Side, ...] = ()


def _nt_choice(independent: bool | None, vmap_axes, out_axes=0) -> tuple[int, Any]:
    # Implementation 2 traces every network NT supports (3 does not trace
    # `stax.repeat`'s scan on current JAX); vmap where examples are independent.
    if vmap_axes is not None:
        return 2, vmap_axes
    if not independent or out_axes is None:
        return 2, None
    return 2, 0 if out_axes == 0 else (0, out_axes, {})


def _gram_cheaper(prog, t: _Target, fx_shape, n1, n2, trace, diagonal) -> bool:
    """Flop estimate of the Gram form against the per-example Jacobian."""
    a_shape = _shape(prog, t.a_id)
    dn = prog.eqns[t.eqn].params["dimension_numbers"]
    ca = dn[0][1 - t.q_pos][0]
    fan_in = a_shape[ca]
    fan_out = math.prod(_shape(prog, prog.eqns[t.eqn].ins[t.q_pos])) // fan_in
    positions = math.prod(a_shape) // (a_shape[t.a_axis] * fan_in)
    pairs, outputs = 1, 1
    for ax, size in enumerate(fx_shape):
        size_pair = (n1 * n2) if ax == 0 else size * size
        shared = n1 if ax == 0 else size
        pairs *= shared if (ax in trace or ax in diagonal) else size_pair
        outputs *= 1 if ax == 0 else size
    examples = n1 * n2 if 0 not in trace + diagonal else n1
    gram = pairs * positions**2 * fan_out + examples * positions**2 * fan_in
    jac = (n1 + n2) * outputs * positions * fan_in * fan_out
    jac += pairs * fan_in * fan_out
    return gram <= jac


def _target_key(prog: _Program, t: _Target) -> tuple:
    """What must agree between x1's and x2's programs for one leaf: the same
    operation at the same operand positions (the example count aside)."""
    eqn = prog.eqns[t.eqn]
    params = {k: v for k, v in eqn.params.items() if k != "sharding"}
    chain = tuple(prog.eqns[k].prim.name for k in t.chain)
    return (eqn.prim.name, repr(params), chain, t.q_pos, t.a_axis, t.z_axis, t.gram)


def _trace(apply_fn, leaves, treedef, x):
    """`apply_fn` on `x` as a flat program, with every value's example axis."""

    def apply_leaves(leaves, x):
        return apply_fn(jax.tree_util.tree_unflatten(treedef, leaves), x)

    closed, out_shape = jax.make_jaxpr(apply_leaves, return_shape=True)(leaves, x)
    prog = _flatten(closed)
    axes, out_axes = _example_axes(prog, [None] * len(leaves) + [0])
    return prog, axes, out_shape, out_axes


def _analyse(
    apply_fn, x1, x2, params, trace_axes, diagonal_axes, vmap_axes, kwargs
) -> _Analysis:
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    mask = jax.tree_util.tree_leaves(trainable_mask(params))
    trainable = tuple(i for i, m in enumerate(mask) if m)

    def fallback(independent, reason, out_axes=0) -> _Analysis:
        impl, vm = _nt_choice(independent, vmap_axes, out_axes)
        plans = tuple(LeafPlan(paths[i], "nt", reason) for i in trainable)
        return _Analysis(NTKPlan(independent, plans, impl, vm, reason), leaves, treedef)

    if kwargs:
        return fallback(None, "apply_fn_kwargs")
    inputs = [x1] if x2 is None else [x1, x2]
    if not all(isinstance(x, (jax.Array, np.ndarray)) for x in inputs) or (
        x2 is not None and x1.shape[1:] != x2.shape[1:]
    ):
        return fallback(None, "inputs are not arrays of one shape")
    # f(x1) and f(x2) are what NT differentiates: one program per input (the
    # same one when shapes and dtypes agree), never f on their concatenation,
    # which differs for functions of the batch size or the row position.
    traced: dict = {}
    try:
        for x in inputs:
            key = (x.shape, jnp.result_type(x))
            if key not in traced:
                traced[key] = _trace(apply_fn, leaves, treedef, x)
    except _Dependent as e:
        return fallback(False, str(e))
    programs = [traced[(x.shape, jnp.result_type(x))] for x in inputs]
    out_shape, out_axes = programs[0][2], programs[0][3]
    if not isinstance(out_shape, jax.ShapeDtypeStruct) or out_axes != [0]:
        known = None if None in out_axes else out_axes
        tree = jax.tree_util.tree_structure(out_shape)
        axes_tree = None if known is None else tree.unflatten(known)
        return fallback(True, "output is not one array of examples", axes_tree)
    if any(p[2].shape[1:] != out_shape.shape[1:] for p in programs):
        return fallback(True, "outputs of x1 and x2 differ in shape")
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    fx_shape = (n1, *out_shape.shape[1:])
    ndim = len(fx_shape)
    trace = nt_utils.canonicalize_axis(trace_axes, ndim)
    diagonal = nt_utils.canonicalize_axis(diagonal_axes, ndim)
    if 0 in trace + diagonal and n1 != n2:
        raise ValueError(
            f"empirical_ntk_fn: trace_axes={trace_axes!r} / diagonal_axes="
            f"{diagonal_axes!r} pair the examples of x1 and x2, which needs as "
            f"many of each; got {n1} and {n2}."
        )

    def match_all(prog, axes) -> dict:
        uses = _uses(prog)
        tainted = _taint(prog, [prog.invars[i] for i in trainable])
        return {
            i: _match(prog, axes, uses, tainted, i, prog.invars[i]) for i in trainable
        }

    matches = [match_all(p[0], p[1]) for p in programs]
    targets: list[dict] = [{} for _ in programs]
    leaf_plans = []
    for i in trainable:
        found = [m[i] for m in matches]
        reason = next((f for f in found if isinstance(f, str)), None)
        if (
            reason is None
            and len({_target_key(p[0], t) for p, t in zip(programs, found)}) != 1
        ):
            reason = "reaches the network differently for x1 and x2"
        if reason is not None:
            leaf_plans.append(LeafPlan(paths[i], "nt", f"the leaf {reason}"))
            continue
        gram = found[0].gram and _gram_cheaper(
            programs[0][0], found[0], fx_shape, n1, n2, trace, diagonal
        )
        for side, t in zip(targets, found):
            side[i] = dataclasses.replace(t, gram=gram)
        leaf_plans.append(LeafPlan(paths[i], "gram" if gram else "jacobian"))
    impl, vm = _nt_choice(True, vmap_axes)
    plan = NTKPlan(True, tuple(leaf_plans), impl, vm)
    sides = tuple(_Side(x, p[0], t) for x, p, t in zip(inputs, programs, targets))
    return _Analysis(plan, leaves, treedef, sides)


def ntk_plan(
    apply_fn: Callable,
    x1: PyTree,
    x2: PyTree | None,
    params: PyTree,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    **apply_fn_kwargs,
) -> NTKPlan:
    """How the default empirical NTK is computed for these arguments.

    Traces `apply_fn` only (no kernel is computed). See the module docstring
    for the rules.

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, stax
      >>> from nt_frozen.structured import ntk_plan
      >>> init_fn, apply_fn, _ = stax.serial(
      ...     stax.Dense(8), stax.Relu(), Frozen(stax.Dense(8)), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
      >>> _, params = init_fn(jax.random.PRNGKey(1), x.shape)
      >>> plan = ntk_plan(apply_fn, x, None, params)
      >>> plan.path, [leaf.method for leaf in plan.leaves]
      ('structured', ['gram', 'gram'])
    """
    return _analyse(
        apply_fn, x1, x2, params, trace_axes, diagonal_axes, vmap_axes, apply_fn_kwargs
    ).plan


# ---------------------------------------------------------------------------
# The contractions.


def _replay_chain(prog: _Program, t: _Target, p, env: dict):
    value = p
    cur = prog.invars[t.leaf]
    for k in t.chain:
        eqn = prog.eqns[k]
        ins = [
            value if r == cur else (r.val if isinstance(r, _Lit) else env[r])
            for r in eqn.ins
        ]
        value = _bind(eqn, ins)
        cur = eqn.outs[0]
    return value


def _chain_consts(prog: _Program, t: _Target) -> set:
    cur = prog.invars[t.leaf]
    ids: set[int] = set()
    for k in t.chain:
        eqn = prog.eqns[k]
        ids.update(r for r in eqn.ins if not isinstance(r, _Lit) and r != cur)
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


def _side_factors(side: _Side, leaves, wanted) -> tuple[dict, int]:
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
        outs, recorded = _evaluate(prog, [*leaves, side.x], eps, record)
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


def _structured_blocks(analysis: _Analysis, blocks, rates, trace_axes, diagonal_axes):
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


def _per_example_jacobian(prog, t: _Target, eqn: _Eqn, a, d, p, recorded):
    """J[n, *rest, *p.shape] = vjp(p ↦ E(a_n, L(p)))(δ_n), row by row."""
    fx_extra = d.ndim - (len(prog.shapes[eqn.outs[0]]) - 1) - 1

    def z_of(p, a_row):
        q = _replay_chain(prog, t, p, recorded)
        operands: list[Any] = [None, None]
        operands[t.q_pos] = q
        operands[1 - t.q_pos] = jnp.expand_dims(a_row, t.a_axis)
        return _bind(eqn, operands)

    def row(a_row, d_row):  # d_row: (*rest, *z without example axis)
        _, pullback = jax.vjp(lambda p: z_of(p, a_row), p)

        def one(ct):
            return pullback(jnp.expand_dims(ct, t.z_axis))[0]

        flat = d_row.reshape(-1, *d_row.shape[fx_extra:])
        return jax.vmap(one)(flat).reshape(*d_row.shape[:fx_extra], *p.shape)

    return jax.vmap(row, in_axes=(t.a_axis, 0))(a, d)


def _nt_block_ntk(
    apply_fn, analysis: _Analysis, block, rates, x1, x2, nt_options, apply_fn_kwargs
):
    """NT's NTK of the leaves in `block` (others, frozen included, constant),
    each leaf's Jacobian scaled by the square root of its learning rate.
    `nt_options` holds every keyword argument of `nt.empirical_ntk_fn` but
    the implementation and `vmap_axes`, which the plan sets."""
    leaves, treedef = analysis.leaves, analysis.treedef

    def apply_block(sub, x, **kw):
        full = list(leaves)
        for i, value in zip(block, sub):
            # Same value, derivative scaled by sqrt(rate) (`LearningRate`).
            full[i] = scale_jacobian(value, rates[i])
        return apply_fn(jax.tree_util.tree_unflatten(treedef, full), x, **kw)

    fn = nt.empirical_ntk_fn(
        apply_block,
        vmap_axes=analysis.plan.nt_vmap_axes,
        implementation=analysis.plan.nt_implementation,
        **nt_options,
    )
    return fn(x1, x2, [leaves[i] for i in block], **apply_fn_kwargs)


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

    def zeros():
        return _zeros_like_ntk(
            apply_fn, x1, x2, params, trace_axes, diagonal_axes, apply_fn_kwargs
        )

    if _no_examples(x1, x2):  # an empty kernel, as NT gives
        return [zeros() for _ in blocks]
    analysis = _analyse(
        apply_fn, x1, x2, params, trace_axes, diagonal_axes, vmap_axes, apply_fn_kwargs
    )
    matched = set(analysis.sides[0].targets) if analysis.sides else set()
    structured = [None] * len(blocks)
    if matched:
        structured = _structured_blocks(
            analysis, blocks, rates, trace_axes, diagonal_axes
        )
    options = dict(trace_axes=trace_axes, diagonal_axes=diagonal_axes)
    options.update(nt_options or {})
    results = []
    for block, ntk in zip(blocks, structured):
        rest = [i for i in block if i not in matched]
        if rest:
            theirs = _nt_block_ntk(
                apply_fn, analysis, rest, rates, x1, x2, options, apply_fn_kwargs
            )
            ntk = theirs if ntk is None else ntk + theirs
        results.append(zeros() if ntk is None else ntk)
    return results


def _zeros_like_ntk(apply_fn, x1, x2, params, trace_axes, diagonal_axes, kwargs):
    """Zeros of the NTK's shape (a block without trainable leaves)."""
    shape = jax.eval_shape(
        lambda: nt.empirical_ntk_fn(
            apply_fn, trace_axes, diagonal_axes, implementation=1
        )(x1, x2, params, **kwargs)
    )
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
