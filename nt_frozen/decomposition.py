"""Layer-wise NTK decomposition: which layers' parameters make up the NTK.

The NTK is a sum over parameters, so it splits exactly over disjoint groups of
layers: contribution `g` is the NTK of the network in which only group `g`
trains (every other layer frozen), and the contributions sum to the full NTK.

:func:`ntk_decomposition` computes all contributions analytically in *one*
pass over the network. Every NT `kernel_fn` is affine in the incoming NTK,

    ntk_out = L_nngp(ntk_in) + P(nngp_in),

so at each layer one `jax.jvp` of `ntk -> kernel_fn(k with ntk)` at `ntk = 0`,
vmapped over the stack of contributions accumulated so far, gives the outgoing
NNGP and the layer's own parameter term `P` (the primal, computed once: it does
not depend on the tangents) and `L` applied to every contribution (the
tangents); `P` is then added to the layer's own group. Only groups that have
started are carried, so the NNGP is computed once instead of once per group,
and the NTK work is about half that of one frozen network per group.

:func:`empirical_ntk_decomposition` is the finite-width counterpart: one
Jacobian of the outputs with respect to the trainable parameters, contracted
block by block.

Example:
  >>> import jax
  >>> from nt_frozen import stax, ntk_decomposition
  >>> layers = [stax.Dense(64), stax.Relu(), stax.Dense(1)]
  >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  >>> decomposition = ntk_decomposition(layers, input_shape=x.shape)
  >>> parts = decomposition(x)
  >>> parts.shape, decomposition.labels
  ((2, 3, 3), ('0:Dense', '2:Dense'))
  >>> full = stax.serial(*layers)[2](x, None, "ntk")
  >>> bool(jax.numpy.allclose(parts.sum(0), full))
  True
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import (
    _dot_general,
    _ntk_shape,
    get_req,
    layer,
    nt_utils,
    requires,
    stax,
)
from nt_frozen._stax_utils import (
    KERNEL_FIELDS,
    Layer,
    PyTree,
    check_get,
    check_layers,
    has_leaves,
    is_kernel,
    layer_name,
    ntk_map,
    ntks,
    replace_ntks,
    zeros_like_ntks,
)
from nt_frozen.checks import (
    check_apply,
    check_params,
    input_shape_of,
)
from nt_frozen.params import merge, split
from nt_frozen.rates import check_rates_fit, weight_jacobians
from nt_frozen.structured import block_ntks

#: Layer indices of one group: an `int` or a sequence of `int`s.
GroupSpec = int | Sequence[int]
#: `None` (default), a sequence of groups, or a mapping from names to groups.
Groups = Sequence[GroupSpec] | Mapping[str, GroupSpec] | None


@dataclasses.dataclass(frozen=True)
class Group:
    """A named set of layer indices whose parameters train together."""

    label: str
    indices: tuple[int, ...]


def _index(i: Any, n: int, label: str, where: str) -> int:
    try:
        if isinstance(i, bool):  # `True` is an int, but surely not meant as one
            raise TypeError
        index = operator.index(i)
    except TypeError:
        raise TypeError(
            f"{where}: group {label!r} holds {i!r}; a group is a layer index or "
            f"a sequence of layer indices (ints)."
        ) from None
    if not -n <= index < n:
        raise ValueError(
            f"{where}: group {label!r} names layer {index}, but the network has "
            f"{n} layers (indices 0..{n - 1}, or negative from the end)."
        )
    return index % n


def _parse_groups(
    groups: Groups, n: int, names: Sequence[str] | None, where: str
) -> tuple[Group, ...] | None:
    """Validate user groups: disjoint, non-empty, existing layer indices."""
    if groups is None:
        return None
    if isinstance(groups, Mapping):
        items: list[tuple[str | None, Any]] = [
            (str(label), spec) for label, spec in groups.items()
        ]
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        items = [(None, spec) for spec in groups]
    else:
        raise TypeError(
            f"{where}: `groups` must be None, a list of groups or a dict of named "
            f"groups (each a layer index or a list of them), got "
            f"{type(groups).__name__}."
        )
    if not items:
        raise ValueError(
            f"{where}: `groups` is empty; pass at least one group, or None for "
            f"one group per layer with parameters."
        )
    owner: dict[int, str] = {}
    parsed = []
    for position, (label, spec) in enumerate(items):
        shown = label if label is not None else f"groups[{position}]"
        is_many = isinstance(spec, Iterable) and not isinstance(spec, str)
        specs = list(spec) if is_many else [spec]
        indices = tuple(_index(i, n, shown, where) for i in specs)
        if not indices:
            raise ValueError(f"{where}: group {shown!r} is empty.")
        for i in indices:
            if i in owner:
                other = owner[i]
                clash = (
                    f"twice in group {shown!r}"
                    if other == shown
                    else f"in both group {other!r} and group {shown!r}"
                )
                raise ValueError(
                    f"{where}: layer {i} is {clash}. Groups must be disjoint, so "
                    f"that each parameter is counted once; remove it from one."
                )
            owner[i] = shown
        if label is None:
            label = "+".join(
                f"{i}:{names[i]}" if names is not None else str(i) for i in indices
            )
        parsed.append(Group(label, indices))
    return tuple(parsed)


def _default_groups(
    params: Sequence[PyTree], names: Sequence[str] | None
) -> tuple[Group, ...]:
    """One group per entry of `params` with trainable leaves."""
    trainable, _ = split(tuple(params))
    return tuple(
        Group(f"{i}:{names[i]}" if names is not None else str(i), (i,))
        for i, entry in enumerate(trainable)
        if has_leaves(entry)
    )


def _param_shapes(init_fn: Callable, input_shape: PyTree) -> PyTree:
    """The parameters `init_fn` makes for `input_shape`, as shapes only."""
    key = jax.eval_shape(jax.random.PRNGKey, 0)
    return jax.eval_shape(lambda k: init_fn(k, input_shape)[1], key)


def _groups_at_construction(
    init_fn: Callable,
    names: Sequence[str],
    groups: Groups,
    input_shape: PyTree | None,
    where: str,
) -> tuple[Group, ...] | None:
    """The explicit groups, or the default ones when `input_shape` is known;
    None when only a call's inputs can tell."""
    parsed = _parse_groups(groups, len(names), names, where)
    if parsed is None and input_shape is not None:
        return _default_groups(_param_shapes(init_fn, input_shape), names)
    return parsed


class NTKDecomposition:
    """Analytic layer-wise NTK decomposition; see :func:`ntk_decomposition`.

    Immutable: the groups are fixed at construction (explicit, or the default
    ones found from `input_shape`), or found afresh from the input shapes at
    each call, never stored by a call.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        groups: Groups = None,
        input_shape: PyTree | None = None,
    ):
        where = "ntk_decomposition"
        self.layers = check_layers(layers, where)
        self._names = [layer_name(lyr) for lyr in self.layers]
        self._kernel_fns = [lyr[2] for lyr in self.layers]
        self._init_fn = stax.serial(*self.layers)[0]
        self._groups = _groups_at_construction(
            self._init_fn, self._names, groups, input_shape, where
        )
        # NT-style `kernel_fn(x1_or_kernel, x2=None, get=None, **kwargs)`: every
        # field as `stax.serial(*layers)` has it, but `ntk` is the stack.
        self.kernel_fn = _checking_get(_decomposition_layer(self)[2])

    @property
    def groups(self) -> tuple[Group, ...]:
        """The groups, in the order of the stack's leading axis."""
        if self._groups is None:
            raise ValueError(
                "ntk_decomposition: the default groups (one per layer with "
                "trainable parameters) are found from the parameter shapes, so "
                "they need the input shape: pass input_shape=x.shape (or "
                "groups=...) to ntk_decomposition, or call .resolve(x.shape)."
            )
        return self._groups

    @property
    def labels(self) -> tuple[str, ...]:
        """Group labels (`"index:LayerName"` by default), in stack order."""
        return tuple(group.label for group in self.groups)

    def resolve(self, input_shape: PyTree) -> tuple[Group, ...]:
        """The groups for inputs of `input_shape` (needed only for the default,
        which keeps the layers whose `init_fn` makes trainable parameters)."""
        if self._groups is not None:
            return self._groups
        return _default_groups(_param_shapes(self._init_fn, input_shape), self._names)

    def __call__(self, x1: PyTree, x2: PyTree | None = None, **kwargs) -> jax.Array:
        """The stack of NTK contributions, shape `(G, *ntk.shape)`.

        `x1` is an input batch (or a `Kernel`, whose own NTK, from layers
        upstream, is then treated as frozen: it is in no contribution); `x2=None`
        means `x2 = x1`; `kwargs` (`diagonal_batch`, `diagonal_spatial`,
        `mask_constant`, ...) are as for any NT `kernel_fn`.
        """
        return self.kernel_fn(x1, x2, "ntk", **kwargs)

    def _propagate(self, k: PyTree, **kwargs) -> PyTree:
        """Kernel -> Kernel whose `ntk` is the stack of group contributions."""
        if any(ntk is None for ntk in ntks(k)):
            for kernel_fn in self._kernel_fns:  # `get` without "ntk"
                k = kernel_fn(k, **kwargs)
            return k
        shapes = jax.tree_util.tree_map(lambda kk: kk.shape1, k, is_leaf=is_kernel)
        groups = self.resolve(shapes)
        group_of = {i: g for g, group in enumerate(groups) for i in group.indices}

        # An incoming NTK (a Kernel input) comes from layers upstream, which are
        # in no group: start every contribution from zero.
        k = replace_ntks(k, zeros_like_ntks(k))
        slots: list[int] = []  # group of each row of `stack`, in order of start
        stack: list[jax.Array] | None = None  # per Kernel leaf: (len(slots), ...)
        for i, kernel_fn in enumerate(self._kernel_fns):
            group = group_of.get(i)
            if stack is None:
                # Nothing upstream trains yet: the input NTK is 0, so the
                # primal NTK is the layer's own term P; no linear map needed.
                k = kernel_fn(k, **kwargs)
                own = ntks(k)
            else:
                # Affine in the NTK: at ntk = 0 the primal is P (and the NNGP),
                # the tangent along a contribution is L(contribution). Under
                # vmap the primal does not depend on the tangents: computed once.
                ntk_fn, zeros = ntk_map(kernel_fn, k, **kwargs), zeros_like_ntks(k)

                def jvp(tangent, ntk_fn=ntk_fn, zeros=zeros):
                    return jax.jvp(ntk_fn, (zeros,), (tangent,), has_aux=True)

                own, stack, k = jax.vmap(jvp, out_axes=(None, 0, None))(stack)
            if group is None:  # frozen in every contribution: P is dropped
                if stack is None:
                    # `k.ntk` is this layer's own P; no group may inherit it.
                    k = replace_ntks(k, zeros_like_ntks(k))
                continue
            if stack is None:
                stack, slots = [p[None] for p in own], [group]
            elif group in slots:  # a group whose layers are not contiguous
                row = slots.index(group)
                stack = [s.at[row].add(p) for s, p in zip(stack, own)]
            else:  # the first layer of a group: its contribution starts here
                stack = [jnp.concatenate([s, p[None]]) for s, p in zip(stack, own)]
                slots.append(group)

        if stack is None:  # no group at all: an empty stack of the right shape
            stack = [jnp.zeros((0, *jnp.shape(p)), p.dtype) for p in ntks(k)]
        else:
            order = jnp.asarray([slots.index(g) for g in range(len(groups))])
            stack = [s[order] for s in stack]
        return replace_ntks(k, stack)


def _checking_get(kernel_fn: Callable) -> Callable:
    """`kernel_fn` with a clear error for a `get` that names no Kernel field."""

    @functools.wraps(kernel_fn)
    def checked_kernel_fn(x1_or_kernel, x2=None, get=None, **kwargs):
        check_get(get, KERNEL_FIELDS, "ntk_decomposition(...).kernel_fn")
        return kernel_fn(x1_or_kernel, x2, get, **kwargs)

    return checked_kernel_fn


@layer
def _decomposition_layer(decomposition: NTKDecomposition) -> Layer:
    # NT's `@layer` turns inputs into a Kernel with the requirements (diagonal
    # batch/spatial, axes) of the whole serial network, and `get` picks fields;
    # the stack lives in `ntk` only after the last layer, so no layer sees it.
    init_fn, apply_fn, kernel_fn = stax.serial(*decomposition.layers)

    @requires(**get_req(kernel_fn, {}))
    def decomposed_kernel_fn(k, **kwargs):
        return decomposition._propagate(k, **kwargs)

    return init_fn, apply_fn, decomposed_kernel_fn


def ntk_decomposition(
    layers: Sequence[Layer], groups: Groups = None, input_shape: PyTree | None = None
) -> NTKDecomposition:
    """Split the analytic NTK of `stax.serial(*layers)` over groups of layers.

    Contribution `g` is the NTK of the network in which only the layers of
    group `g` train (all others frozen, as by :func:`~nt_frozen.Frozen`). All
    contributions come from one pass over the network (see the module notes),
    not one pass per group.

    Args:
      layers: the layers of a `stax.serial` network, each a stax triple
        `(init_fn, apply_fn, kernel_fn)`; combinators (`serial`, `parallel`,
        `repeat`, `FanOut`/`FanIn*`) and :func:`~nt_frozen.Frozen` layers are
        single layers.
      groups: `None` for one group per layer with trainable parameters (found
        from the parameter shapes that `init_fn` makes for the inputs, ordered
        by layer); or a list of groups; or a dict `{name: group}`. A group is
        a layer index (negative ones count from the end) or a list of them;
        groups must be disjoint. Layers in no group are frozen in every
        contribution, so the contributions sum to the full NTK exactly when
        every layer with trainable parameters is in some group. A parameter-free layer
        (`Relu`, pooling, ...) or a `Frozen` one contributes exactly zero.
      input_shape: the shape of `x1` (a tree of shapes for several inputs);
        with the default groups, it makes `d.groups` / `d.labels` known at
        construction (otherwise each call finds the groups from its inputs,
        and `d.resolve(x1.shape)` gives them).

    Returns:
      An :class:`NTKDecomposition` `d`: `d(x1, x2=None, **kwargs)` is the
      stack of contributions, shape `(G, *ntk.shape)`; `d.labels` /
      `d.groups` name its rows (with explicit groups or `input_shape`, before
      any call); `d.kernel_fn(x1, x2, get, **kwargs)` is an NT `kernel_fn`
      whose `ntk` field is that stack (other fields as usual).

    Example:
      >>> import jax
      >>> from nt_frozen import stax, ntk_decomposition
      >>> layers = [stax.Dense(64), stax.Erf(), stax.Dense(64), stax.Dense(1)]
      >>> d = ntk_decomposition(layers, {"body": [0, 2], "readout": -1})
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
      >>> jax.jit(d)(x, x[:2]).shape, d.labels
      ((2, 5, 2), ('body', 'readout'))
    """
    return NTKDecomposition(layers, groups, input_shape)


def _one_array(apply_fn: Callable, params: PyTree, x: PyTree) -> bool:
    return isinstance(jax.eval_shape(apply_fn, params, x), jax.ShapeDtypeStruct)


class EmpiricalNTKDecomposition:
    """Empirical layer-wise NTK decomposition; see
    :func:`empirical_ntk_decomposition`."""

    def __init__(
        self,
        network: Sequence[Layer] | Callable,
        groups: Groups,
        trace_axes,
        diagonal_axes,
        input_shape: PyTree | None = None,
    ):
        where = "empirical_ntk_decomposition"
        self.trace_axes = trace_axes
        self.diagonal_axes = diagonal_axes
        self._groups_spec = groups
        if callable(network) and not isinstance(network, (tuple, list)):
            self.layers, self._names, self._init_fn = None, None, None
            self.apply_fn = network
            self._groups = None  # only `params` tell how many layers there are
        else:
            self.layers = check_layers(network, where)
            names = [layer_name(lyr) for lyr in self.layers]
            init_fn, self.apply_fn, _ = stax.serial(*self.layers)
            self._names, self._init_fn = names, init_fn
            # The same groups as the analytic decomposition of these layers.
            self._groups = _groups_at_construction(
                init_fn, names, groups, input_shape, where
            )

    @property
    def groups(self) -> tuple[Group, ...]:
        """The groups, in the order of the stack's rows."""
        if self._groups is None:
            how = (
                "pass input_shape=x.shape (or groups=...)"
                if self.layers is not None
                else "pass the layers instead of the apply_fn"
            )
            raise ValueError(
                f"empirical_ntk_decomposition: the groups are found from the "
                f"parameters; to know them before a call, {how} to "
                f"empirical_ntk_decomposition, or call .resolve(params)."
            )
        return self._groups

    @property
    def labels(self) -> tuple[str, ...]:
        """Group labels in stack order: as :func:`ntk_decomposition`'s
        (`"index:LayerName"`) when made from the layers, the layer index when
        made from an `apply_fn` (which does not know the layers' names)."""
        return tuple(group.label for group in self.groups)

    def resolve(self, params: PyTree) -> tuple[Group, ...]:
        """The groups for `params` (one entry per layer of `stax.serial`)."""
        where = "empirical_ntk_decomposition"
        if params is None:
            raise TypeError(f"{where}: params is None; pass the network's params.")
        if not isinstance(params, (tuple, list)):
            raise TypeError(
                f"{where}: params must be those of a stax.serial network, a "
                f"tuple with one entry per layer, got {type(params).__name__}. "
                f"Wrap a single layer as stax.serial(layer)."
            )
        if self._groups is not None:
            return self._groups
        groups = _parse_groups(self._groups_spec, len(params), self._names, where)
        return _default_groups(params, self._names) if groups is None else groups

    def __call__(
        self, x1: PyTree, x2: PyTree | None, params: PyTree, **apply_fn_kwargs
    ) -> PyTree:
        """The stack of empirical NTK contributions, shape `(G, *ntk.shape)`.

        Same arguments as the `ntk_fn` of `nt.empirical_ntk_fn`; for a network
        with several outputs, a tree of such stacks.
        """
        where = "empirical_ntk_decomposition"
        kwargs1, kwargs2 = nt_utils.split_kwargs(apply_fn_kwargs, x1, x2)
        if self._init_fn is not None:
            check_params(self._init_fn, params, input_shape_of(x1), where)
        groups = self.resolve(params)
        check_rates_fit(params, where)
        if self._init_fn is None:
            check_apply(self.apply_fn, params, x1, where, **kwargs1)
        if groups and not apply_fn_kwargs and _one_array(self.apply_fn, params, x1):
            # One array output: the fastest exact path (nt_frozen.structured),
            # with one block of parameter leaves per group.
            offsets = np.cumsum(
                [0] + [len(jax.tree_util.tree_leaves(p)) for p in params]
            )
            blocks = [
                [k for i in group.indices for k in range(offsets[i], offsets[i + 1])]
                for group in groups
            ]
            return jnp.stack(
                block_ntks(
                    self.apply_fn,
                    x1,
                    x2,
                    params,
                    blocks,
                    self.trace_axes,
                    self.diagonal_axes,
                    **apply_fn_kwargs,
                )
            )
        trainable, frozen = split(params)
        # Differentiate only trainable leaves of grouped layers: the rest,
        # frozen leaves included, are constants and cost no Jacobian.
        grouped = sorted({i for group in groups for i in group.indices})
        wrt = [i for i in grouped if has_leaves(trainable[i])]

        def f(sub, x, kwargs):
            full = list(trainable)
            for i, entry in zip(wrt, sub):
                full[i] = entry
            # Rated leaves (`LearningRate`) weigh rate x J J^T, as analytically.
            rated = weight_jacobians(type(params)(full))
            return self.apply_fn(merge(rated, frozen), x, **kwargs)

        sub = tuple(trainable[i] for i in wrt)
        fx1 = jax.eval_shape(lambda s: f(s, x1, kwargs1), sub)
        j1 = jax.jacobian(lambda s: f(s, x1, kwargs1))(sub)
        if x2 is None:
            fx2, j2 = fx1, j1
        else:
            fx2 = jax.eval_shape(lambda s: f(s, x2, kwargs2), sub)
            j2 = jax.jacobian(lambda s: f(s, x2, kwargs2))(sub)

        def per_output(fx1, fx2, j1, j2):
            ndim = len(fx1.shape)
            trace = nt_utils.canonicalize_axis(self.trace_axes, ndim)
            diagonal = nt_utils.canonicalize_axis(self.diagonal_axes, ndim)
            size = nt_utils.size_at(fx1.shape, trace)

            def contract(a, b):  # J_a J_b^T over parameter and traced axes
                axes = trace + list(range(ndim, a.ndim))
                return _dot_general(a, b, axes, diagonal) / size

            shape = _ntk_shape(fx1.shape, fx2.shape, trace, diagonal)
            rows = []
            for group in groups:
                row = jnp.zeros(shape, fx1.dtype)
                for i in group.indices:
                    if i in wrt:
                        position = wrt.index(i)
                        blocks = jax.tree_util.tree_map(
                            contract, j1[position], j2[position]
                        )
                        row = row + jax.tree_util.tree_reduce(operator.add, blocks)
                rows.append(row)
            return jnp.stack(rows) if rows else jnp.zeros((0, *shape), fx1.dtype)

        return jax.tree_util.tree_map(per_output, fx1, fx2, j1, j2)


def empirical_ntk_decomposition(
    network: Sequence[Layer] | Callable,
    groups: Groups = None,
    trace_axes=(-1,),
    diagonal_axes=(),
    input_shape: PyTree | None = None,
) -> EmpiricalNTKDecomposition:
    """Split the empirical NTK of a `stax.serial` network over groups of layers.

    The finite-width counterpart of :func:`ntk_decomposition`: row `g` is the
    NTK of the trainable parameters of group `g`'s layers, `J_g J_g^T`. For a
    network with one array output and no `apply_fn_kwargs`, every row comes
    from one forward and one batched backward pass (:mod:`nt_frozen.structured`,
    one block of leaves per group); otherwise one Jacobian of the outputs with
    respect to the trainable parameters of the grouped layers (frozen leaves
    excluded) gives every row. The rows sum to
    :func:`~nt_frozen.empirical_ntk_fn`'s NTK when every layer with trainable
    parameters is in some group.

    Args:
      network: the layers of the `stax.serial` network, as given to
        :func:`ntk_decomposition` (then the rows have the same labels, and
        `params` are checked against the network with
        :func:`~nt_frozen.check_params`); or its `apply_fn` (labels are then
        the layer indices, and only `apply_fn(params, x1)` is checked). The
        `params` are a tuple with one entry per layer, which the group
        indices refer to.
      groups: as for :func:`ntk_decomposition`; `None` gives one group per
        layer with trainable parameters.
      trace_axes, diagonal_axes: as for `nt.empirical_ntk_fn` (the output
        axes traced over, normalized by their size, and kept diagonal).
      input_shape: as for :func:`ntk_decomposition`, with `network` a list of
        layers and default groups.

    Returns:
      An :class:`EmpiricalNTKDecomposition` `d`: `d(x1, x2, params,
      **apply_fn_kwargs)` is the stack, shape `(G, *ntk.shape)`, and
      `d.labels` / `d.groups` name its rows: known at construction from the
      layers and explicit groups or `input_shape`, and from `params` by
      `d.resolve(params)` otherwise (nothing is stored by a call).

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, stax, empirical_ntk_decomposition
      >>> layers = [stax.Dense(16), stax.Relu(), Frozen(stax.Dense(16)), stax.Dense(1)]
      >>> init_fn, apply_fn, _ = stax.serial(*layers)
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
      >>> _, params = init_fn(jax.random.PRNGKey(1), x.shape)
      >>> d = empirical_ntk_decomposition(layers, input_shape=x.shape)
      >>> jax.jit(d)(x, None, params).shape, d.labels
      ((2, 3, 3), ('0:Dense', '3:Dense'))
    """
    return EmpiricalNTKDecomposition(
        network, groups, trace_axes, diagonal_axes, input_shape
    )
