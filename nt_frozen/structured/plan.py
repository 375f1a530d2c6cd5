"""The plan: per trainable leaf, the Gram form, a per-example Jacobian or NT.

One immutable analysis per call: each input set's program, the example axes,
and the matched leaves that agree between `x1` and `x2`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import nt_utils
from nt_frozen.params import trainable_mask
from nt_frozen.structured.independence import Dependent, example_axes
from nt_frozen.structured.jaxpr import Program, flatten, shape_of
from nt_frozen.structured.matching import Target, match, taint, uses_of

PyTree = Any


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
class NTKRequest:
    """One empirical NTK asked for: the network, its inputs and NT's options.

    `nt_options` holds the keyword arguments of `nt.empirical_ntk_fn` other
    than the axes and the implementation (which the plan chooses)."""

    apply_fn: Callable
    x1: Any
    x2: Any
    params: PyTree
    trace_axes: Any = (-1,)
    diagonal_axes: Any = ()
    vmap_axes: Any = None
    nt_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    apply_fn_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Side:
    """One input set (`x1` or `x2`): its program and the matched leaves."""

    x: Any
    prog: Program
    targets: dict  # leaf index -> Target, for the structured leaves


@dataclasses.dataclass(frozen=True)
class Analysis:
    plan: NTKPlan
    leaves: list
    # (x1's,) when x2 is None, else (x1's, x2's); empty when NT takes it all.
    sides: tuple[Side, ...] = ()


def _nt_choice(independent: bool | None, vmap_axes, out_axes=0) -> tuple[int, Any]:
    # Implementation 2 traces every network NT supports (3 does not trace
    # `stax.repeat`'s scan on current JAX); vmap where examples are independent.
    if vmap_axes is not None:
        return 2, vmap_axes
    if not independent or out_axes is None:
        return 2, None
    return 2, 0 if out_axes == 0 else (0, out_axes, {})


def _gram_cheaper(prog, t: Target, fx_shape, n1, n2, trace, diagonal) -> bool:
    """Flop estimate of the Gram form against the per-example Jacobian."""
    a_shape = shape_of(prog, t.a_id)
    dn = prog.eqns[t.eqn].params["dimension_numbers"]
    ca = dn[0][1 - t.q_pos][0]
    fan_in = a_shape[ca]
    fan_out = math.prod(shape_of(prog, prog.eqns[t.eqn].ins[t.q_pos])) // fan_in
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


def target_key(prog: Program, t: Target) -> tuple:
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
    prog = flatten(closed)
    axes, out_axes = example_axes(prog, [None] * len(leaves) + [0])
    return prog, axes, out_shape, out_axes


def analyse(request: NTKRequest) -> Analysis:
    """The plan for `request`, with what the contractions need."""
    apply_fn, x1, x2, params = request.apply_fn, request.x1, request.x2, request.params
    trace_axes, diagonal_axes = request.trace_axes, request.diagonal_axes
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    mask = jax.tree_util.tree_leaves(trainable_mask(params))
    trainable = tuple(i for i, m in enumerate(mask) if m)

    def fallback(independent, reason, out_axes=0) -> Analysis:
        impl, vm = _nt_choice(independent, request.vmap_axes, out_axes)
        plans = tuple(LeafPlan(paths[i], "nt", reason) for i in trainable)
        return Analysis(NTKPlan(independent, plans, impl, vm, reason), leaves)

    if request.apply_fn_kwargs:
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
    except Dependent as e:
        return fallback(False, str(e))
    programs = [traced[(x.shape, jnp.result_type(x))] for x in inputs]
    out_shape, out_axes = programs[0][2], programs[0][3]
    if not isinstance(out_shape, jax.ShapeDtypeStruct) or out_axes != [0]:
        known = None if None in out_axes else out_axes
        tree = jax.tree_util.tree_structure(out_shape)
        axes_tree = None if known is None else jax.tree_util.tree_unflatten(tree, known)
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
        uses = uses_of(prog)
        tainted = taint(prog, [prog.invars[i] for i in trainable])
        return {
            i: match(prog, axes, uses, tainted, i, prog.invars[i]) for i in trainable
        }

    matches = [match_all(p[0], p[1]) for p in programs]
    targets: list[dict] = [{} for _ in programs]
    leaf_plans = []
    for i in trainable:
        found = [m[i] for m in matches]
        reason = next((f for f in found if isinstance(f, str)), None)
        if (
            reason is None
            and len({target_key(p[0], t) for p, t in zip(programs, found)}) != 1
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
    impl, vm = _nt_choice(True, request.vmap_axes)
    plan = NTKPlan(True, tuple(leaf_plans), impl, vm)
    sides = tuple(Side(x, p[0], t) for x, p, t in zip(inputs, programs, targets))
    return Analysis(plan, leaves, sides)


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
    request = NTKRequest(
        apply_fn,
        x1,
        x2,
        params,
        trace_axes,
        diagonal_axes,
        vmap_axes,
        apply_fn_kwargs=apply_fn_kwargs,
    )
    return analyse(request).plan
