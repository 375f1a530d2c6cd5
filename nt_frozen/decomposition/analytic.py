"""The analytic layer-wise NTK decomposition, all groups in one pass (the
affine NTK map of every layer, one vmapped `jax.jvp` per layer; see
:mod:`nt_frozen.decomposition`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from nt_frozen._compat import get_req, layer, requires, stax
from nt_frozen._stax_utils import (
    KERNEL_FIELDS,
    Layer,
    PyTree,
    check_get,
    check_layers,
    is_kernel,
    layer_name,
    ntk_map,
    ntks,
    replace_ntks,
    zeros_like_ntks,
)
from nt_frozen.decomposition.groups import (
    Group,
    Groups,
    _default_groups,
    _groups_at_construction,
    _param_shapes,
)


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
