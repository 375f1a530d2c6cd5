"""The empirical layer-wise NTK decomposition: one block of parameter leaves
per group, every block by :func:`nt_frozen.structured.block_ntks` (the
structured contractions, NT on the restricted network for the rest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import nt_utils, stax
from nt_frozen._stax_utils import Layer, PyTree, check_layers, layer_name
from nt_frozen.checks import check_apply, check_params, input_shape_of
from nt_frozen.decomposition.groups import (
    Group,
    Groups,
    _default_groups,
    _groups_at_construction,
    _parse_groups,
)
from nt_frozen.rates import check_rates_fit
from nt_frozen.structured import block_ntks


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
        # One block of parameter leaves per group; frozen leaves in a block
        # are constants (block_ntks drops them), rated ones weigh rate x J J^T.
        offsets = np.cumsum([0] + [len(jax.tree_util.tree_leaves(p)) for p in params])
        blocks = [
            [k for i in group.indices for k in range(offsets[i], offsets[i + 1])]
            for group in groups
        ]
        # No group: one empty block gives the NTK's shapes for an empty stack.
        rows = block_ntks(
            self.apply_fn,
            x1,
            x2,
            params,
            blocks or [[]],
            trace_axes=self.trace_axes,
            diagonal_axes=self.diagonal_axes,
            **apply_fn_kwargs,
        )
        stack = jax.tree_util.tree_map(lambda *row: jnp.stack(row), *rows)
        return stack if blocks else jax.tree_util.tree_map(lambda s: s[:0], stack)


def empirical_ntk_decomposition(
    network: Sequence[Layer] | Callable,
    groups: Groups = None,
    trace_axes=(-1,),
    diagonal_axes=(),
    input_shape: PyTree | None = None,
) -> EmpiricalNTKDecomposition:
    """Split the empirical NTK of a `stax.serial` network over groups of layers.

    The finite-width counterpart of :func:`ntk_decomposition`: row `g` is the
    NTK of the trainable parameters of group `g`'s layers, `J_g J_g^T`. Every
    row is one block of leaves of :func:`nt_frozen.structured.block_ntks`, the
    default empirical NTK's path: one forward and one batched backward pass
    serve every structured leaf, NT the others; `x2`, `apply_fn_kwargs` and
    networks with several outputs are taken as by
    :func:`~nt_frozen.empirical_ntk_fn`, and frozen leaves are in no row. The
    rows sum to
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
