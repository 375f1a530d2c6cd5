"""Which values carry the example axis, and where.

The network treats examples independently when every operation keeps row `n`
of its outputs a function of row `n` of its inputs; one rule per primitive
says where the example axis goes, or raises `Dependent`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from jax.extend import core as jex_core

from nt_frozen._compat import scan_counts
from nt_frozen.structured.jaxpr import Eqn, Lit, Program, flatten, shape_of, sub_jaxpr

# One rule per primitive, in the style of NT's `STRUCTURE_RULES`, keyed by name
# because the primitive objects of call-like and control-flow operations moved
# between JAX releases.


class Dependent(Exception):
    """The network may mix examples (or we cannot tell)."""


# rule(eqn, axes, shapes) -> the example axis of each output; `axes` holds each
# operand's example axis (None: the operand has none).
_AXIS_RULES: dict[str, Callable[[Eqn, list, list], list]] = {}


def _carried_axis(axes) -> int:
    carried = {a for a in axes if a is not None}
    if len(carried) != 1:
        raise Dependent("operands carry the example axis at different positions")
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
            raise Dependent(f"{name} along the example axis")
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
        raise Dependent(f"{eqn.prim.name} reduces over the example axis")
    return [e - sum(a < e for a in eqn.params["axes"])] * len(eqn.outs)


@_rule("transpose")
def _transpose(eqn, axes, shapes, e):
    return [list(eqn.params["permutation"]).index(e)]


@_rule("broadcast_in_dim")
def _broadcast_in_dim(eqn, axes, shapes, e):
    out = eqn.params["broadcast_dimensions"][e]
    if eqn.params["shape"][out] != shapes[0][e]:
        raise Dependent("broadcast along the example axis")
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
    raise Dependent("reshape merges the example axis")


@_rule("dot_general", carried=False)
def _dot_general_axis(eqn, axes, shapes):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    le, re = axes
    if le is not None and re is not None:
        if le in lb and re in rb and lb.index(le) == rb.index(re):
            return [lb.index(le)]
        raise Dependent("dot_general pairs different examples")
    e, contract, batch, side = (le, lc, lb, 0) if le is not None else (re, rc, rb, 1)
    if e in contract:
        raise Dependent("dot_general contracts over the example axis")
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
    raise Dependent("convolution mixes examples")


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
        raise Dependent("pooling window over the example axis")
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
        raise Dependent("slice along the example axis")
    return [e]


@_rule("dynamic_slice", carried=False)
def _dynamic_slice(eqn, axes, shapes):
    # A full-length slice starts at 0 whatever the index (JAX clamps it).
    e = axes[0]
    if e is None or any(a is not None for a in axes[1:]):
        raise Dependent("dynamic_slice indexed per example")
    if eqn.params["slice_sizes"][e] != shapes[0][e]:
        raise Dependent("dynamic_slice along the example axis")
    return [e]


@_rule("gather", carried=False)
def _gather(eqn, axes, shapes):
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    batching = tuple(getattr(dn, "operand_batching_dims", ()))
    e = axes[0]
    if e is None or axes[1] is not None:
        raise Dependent("gather indexed per example")
    if (
        e in dn.collapsed_slice_dims
        or e in dn.start_index_map
        or e in batching
        or sizes[e] != shapes[0][e]
    ):
        raise Dependent("gather along the example axis")
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
    return example_axes(flatten(closed), list(in_axes))[1]


@_rule("cond", carried=False)
def _cond(eqn, axes, shapes):
    if axes[0] is not None:
        raise Dependent("cond chooses per example")
    outs = [_body_axes(branch, axes[1:]) for branch in eqn.params["branches"]]
    if any(o != outs[0] for o in outs):
        raise Dependent("cond branches place the example axis differently")
    return outs[0]


@_rule("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", carried=False)
def _custom_call(eqn, axes, shapes):
    sub = sub_jaxpr(eqn.params)
    if sub is None:
        raise Dependent(f"{eqn.prim.name} on the example axis")
    return _body_axes(jex_core.ClosedJaxpr(*sub), axes)


@_rule("scan", carried=False)
def _scan_axes(eqn, axes, shapes):
    n_consts, n_carry = scan_counts(eqn.params)
    body = flatten(eqn.params["jaxpr"])
    in_axes = list(axes)
    for i in range(n_consts + n_carry, len(in_axes)):
        if in_axes[i] == 0:
            raise Dependent("scan over the example axis")
        in_axes[i] = None if in_axes[i] is None else in_axes[i] - 1
    for _ in range(3):  # carries settle after one extra round at most
        out_axes = example_axes(body, in_axes)[1]
        carry_out = out_axes[:n_carry]
        carry_in = in_axes[n_consts : n_consts + n_carry]
        if carry_out == carry_in:
            ys = [None if a is None else a + 1 for a in out_axes[n_carry:]]
            return carry_out + ys
        for j, (a_in, a_out) in enumerate(zip(carry_in, carry_out)):
            if a_in is not None and a_out != a_in:
                raise Dependent("scan moves the example axis of its carry")
            in_axes[n_consts + j] = a_out
    raise Dependent("scan carry does not settle")


def _out_axes(eqn: Eqn, axes, shapes) -> list:
    """Example axis of each output of `eqn`, or raise `Dependent`."""
    if all(a is None for a in axes):
        return [None] * len(eqn.outs)
    rule = _AXIS_RULES.get(eqn.prim.name)
    if rule is None:
        raise Dependent(f"{eqn.prim.name} on the example axis")
    return rule(eqn, axes, shapes)


def example_axes(prog: Program, in_axes) -> tuple[dict, list]:
    axes = dict.fromkeys(prog.consts)
    axes.update(zip(prog.invars, in_axes))

    def axis(r):
        return None if isinstance(r, Lit) else axes[r]

    for eqn in prog.eqns:
        shapes = [shape_of(prog, r) for r in eqn.ins]
        axes.update(zip(eqn.outs, _out_axes(eqn, [axis(r) for r in eqn.ins], shapes)))
    return axes, [axis(r) for r in prog.outvars]
