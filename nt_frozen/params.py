"""The trainable/frozen partition of marked parameters, and per-leaf rates.

The markers (:class:`~nt_frozen.FrozenParams`, :class:`~nt_frozen.RatedParams`,
in :mod:`nt_frozen.markers`) are ordinary pytree nodes, so marked parameters
are saved, loaded, mapped and replaced like any others, while :func:`split`,
:func:`merge`, the masks and :func:`labels` can still tell frozen leaves apart
at any nesting depth, and :func:`learning_rates` reads each leaf's rate.
"""

from __future__ import annotations

from typing import Any

import jax

from nt_frozen.markers import (  # noqa: F401 (re-exported: nt_frozen.params)
    FrozenParams,
    PyTree,
    freeze_params,
    frozen_values,
    is_frozen,
    map_with_rates,
    unmarked,
)


@jax.tree_util.register_pytree_node_class
class TrainableSlot:
    """Stands for a trainable leaf in the frozen half of :func:`split`.

    It has no children (nothing to store or differentiate) and keeps the
    leaf's shape as static data, so that :func:`merge` can tell the halves of
    networks of different widths apart.
    """

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def tree_flatten(self):
        return (), self.shape

    @classmethod
    def tree_unflatten(cls, shape, children):
        del children
        return cls(shape)

    def __repr__(self) -> str:
        return f"TrainableSlot({self.shape})"


def _is_frozen_or_slot(node: Any) -> bool:
    return node is None or is_frozen(node) or isinstance(node, TrainableSlot)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(jax.numpy.shape(x))


def _mismatch(what: str, error: Exception) -> ValueError:
    return ValueError(f"{what}: the parameter structures do not match ({error}).")


def split(params: PyTree) -> tuple[PyTree, PyTree]:
    """Split `params` into `(trainable, frozen)` trees of the same layout.

    `trainable` holds `None` where `params` has a :class:`FrozenParams` node;
    `frozen` keeps those nodes and holds a leafless :class:`TrainableSlot`
    (which remembers the shape) for every trainable leaf. :func:`merge`
    inverts it exactly. Both halves are pytrees, so
    `jax.grad(lambda t: loss(merge(t, frozen)))(trainable)` differentiates the
    trainable parameters only.

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, stax, split, merge
      >>> init_fn, _, _ = stax.serial(stax.Dense(3, b_std=0.1), Frozen(stax.Dense(2)))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 4))
      >>> trainable, frozen = split(params)
      >>> jax.tree_util.tree_map(lambda x: x.shape, trainable)
      [((4, 3), (1, 3)), None]
      >>> merge(trainable, frozen)[1].params[0].shape
      (3, 2)
    """
    trainable = jax.tree_util.tree_map(
        lambda x: None if is_frozen(x) else x, params, is_leaf=is_frozen
    )
    frozen = jax.tree_util.tree_map(
        lambda x: x if is_frozen(x) else TrainableSlot(_shape(x)),
        params,
        is_leaf=is_frozen,
    )
    return trainable, frozen


def _same_up_to_batch(shape: tuple[int, ...], recorded: tuple[int, ...]) -> bool:
    # Halves of stacked (e.g. vmapped ensemble) parameters may be merged per
    # member: then one shape ends the other, past leading batch axes.
    n = min(len(shape), len(recorded))
    return shape[len(shape) - n :] == recorded[len(recorded) - n :]


def merge(trainable: PyTree, frozen: PyTree) -> PyTree:
    """Inverse of :func:`split`: put the frozen nodes back among the trainable.

    Raises:
      ValueError: if the halves do not come from one network: another layout,
        or a trainable leaf whose shape differs from the one `frozen` recorded
        (e.g. the halves of networks of different widths).

    Example:
      >>> params = [{"W": 1.0}, freeze_params({"W": 2.0})]
      >>> trainable, frozen = split(params)
      >>> jax.tree_util.tree_leaves(trainable)
      [1.0]
      >>> merge(trainable, frozen)
      [{'W': 1.0}, FrozenParams({'W': 2.0})]
    """
    wrong_shapes = []

    def put_back(path, f, t):
        if isinstance(f, TrainableSlot) and t is not None:
            if not _same_up_to_batch(_shape(t), f.shape):
                wrong_shapes.append((path, _shape(t), f.shape))
        return f if is_frozen(f) else t

    try:
        merged = jax.tree_util.tree_map_with_path(
            put_back, frozen, trainable, is_leaf=_is_frozen_or_slot
        )
    except (ValueError, TypeError) as error:
        raise _mismatch("merge(trainable, frozen)", error) from None
    if wrong_shapes:
        path, got, recorded = wrong_shapes[0]
        raise ValueError(
            f"merge(trainable, frozen): trainable{jax.tree_util.keystr(path)} has "
            f"shape {got}, but the frozen half comes from parameters where it had "
            f"shape {recorded}: the halves come from different networks (other "
            f"widths?). Use the two halves of one split(params)."
        )
    again = split(merged)
    for name, half, rebuilt in zip(("trainable", "frozen"), (trainable, frozen), again):
        if _layout(half) != _layout(rebuilt):
            raise ValueError(
                f"merge(trainable, frozen): the {name} half does not come from the "
                f"same network as the other; expected the layout "
                f"{_layout(rebuilt)}, got {_layout(half)}. Use the two halves of "
                f"one split(params)."
            )
    return merged


def _layout(half: PyTree) -> Any:
    """The tree structure, without the shapes that trainable slots recorded
    (checked by :func:`merge` already, up to batch axes)."""
    return jax.tree_util.tree_structure(
        jax.tree_util.tree_map(
            lambda x: None if isinstance(x, TrainableSlot) else x,
            half,
            is_leaf=lambda x: isinstance(x, TrainableSlot),
        )
    )


def trainable_mask(params: PyTree) -> PyTree:
    """Boolean tree like `params`: True on trainable leaves, False on frozen ones.

    For `optax.masked(transform, trainable_mask(params))`, which applies
    `transform` (e.g. weight decay) to trainable leaves only. To keep frozen
    leaves *fixed*, use :func:`labels` or :func:`frozen_mask` instead:
    `optax.masked` passes the updates of masked-out leaves through unchanged,
    so any gradient that reaches a frozen leaf (e.g. an L2 term on all
    parameters) would still move it.

    Example:
      >>> trainable_mask([{"W": 1.0}, freeze_params({"W": 2.0})])
      [{'W': True}, FrozenParams({'W': False})]
    """
    return jax.tree_util.tree_map(
        lambda x: jax.tree_util.tree_map(lambda _: False, x) if is_frozen(x) else True,
        params,
        is_leaf=is_frozen,
    )


def frozen_mask(params: PyTree) -> PyTree:
    """Boolean tree like `params`: True on frozen leaves, the complement of
    :func:`trainable_mask`.

    For `optax.chain(opt, optax.masked(optax.set_to_zero(), frozen_mask(params)))`,
    which zeroes the updates of frozen leaves, and for the masks of
    `optax.freeze` / `optax.selective_transform` in optax versions with them.

    Example:
      >>> frozen_mask([{"W": 1.0}, freeze_params({"W": 2.0})])
      [{'W': False}, FrozenParams({'W': True})]
    """
    return jax.tree_util.tree_map(lambda m: not m, trainable_mask(params))


def labels(
    params: PyTree, trainable: str = "trainable", frozen: str = "frozen"
) -> PyTree:
    """String labels like `params`, for `optax.multi_transform`.

    With `optax.set_to_zero()` for the frozen label, frozen leaves stay exactly
    fixed whatever gradient reaches them, and get no optimizer state.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from nt_frozen import Frozen, labels, stax
      >>> init_fn, apply_fn, _ = stax.serial(stax.Dense(4), Frozen(stax.Dense(1)))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (3, 2))
      >>> opt = optax.multi_transform(
      ...     {"trainable": optax.adam(1e-2), "frozen": optax.set_to_zero()},
      ...     labels(params))
      >>> state = opt.init(params)
      >>> def loss(p):  # an L2 term on every parameter reaches frozen ones too
      ...     l2 = sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))
      ...     return jnp.sum(apply_fn(p, jnp.ones((3, 2)))**2) + l2
      >>> updates, state = opt.update(jax.grad(loss)(params), state, params)
      >>> new = optax.apply_updates(params, updates)
      >>> bool((new[1].params[0] == params[1].params[0]).all())
      True
    """
    return jax.tree_util.tree_map(
        lambda is_trainable: trainable if is_trainable else frozen,
        trainable_mask(params),
    )


def unfreeze(params: PyTree) -> PyTree:
    """Remove every frozen marker: the parameters of the unfrozen network.

    Example:
      >>> unfreeze([{"W": 1.0}, freeze_params({"W": 2.0})])
      [{'W': 1.0}, {'W': 2.0}]
    """
    return jax.tree_util.tree_map(frozen_values, params, is_leaf=is_frozen)


def freeze_like(params: PyTree, like: PyTree) -> PyTree:
    """Mark `params` (e.g. pretrained, from an unfrozen network) as `like`
    (parameters of the frozen network, e.g. from its `init_fn`) is marked:
    frozen where it is frozen, and with its learning rates
    (:class:`~nt_frozen.RatedParams`) where it has them.

    Raises:
      ValueError: naming the first place where the layouts or shapes differ.

    Example:
      >>> like = [{"W": 0.0}, freeze_params({"W": 0.0})]
      >>> freeze_like([{"W": 1.0}, {"W": 2.0}], like)
      [{'W': 1.0}, FrozenParams({'W': 2.0})]
      >>> from nt_frozen import Frozen, LearningRate, stax, freeze_like
      >>> from nt_frozen import is_frozen, learning_rates
      >>> x_shape = (1, 3)
      >>> _, pretrained = stax.serial(stax.Dense(4), stax.Dense(1))[0](
      ...     jax.random.PRNGKey(0), x_shape)
      >>> init_fn = stax.serial(
      ...     Frozen(stax.Dense(4)), LearningRate(stax.Dense(1), 10.))[0]
      >>> _, like = init_fn(jax.random.PRNGKey(1), x_shape)
      >>> marked = freeze_like(pretrained, like)
      >>> is_frozen(marked[0]), jax.tree_util.tree_leaves(learning_rates(marked))
      (True, [0.0, 10.0])
    """
    plain_like, plain = unmarked(like), unmarked(params)
    # Any: jaxlib ships no type stubs for `PyTreeDef`, so mypy cannot compare it.
    expected: Any = jax.tree_util.tree_structure(plain_like)
    got: Any = jax.tree_util.tree_structure(plain)
    if got != expected:
        raise ValueError(
            "freeze_like: params do not have the layout of the frozen network: "
            f"expected {expected}, got {got}. Were they made by the same "
            "architecture?"
        )
    paths_like = jax.tree_util.tree_flatten_with_path(plain_like)[0]
    paths_params = jax.tree_util.tree_flatten_with_path(plain)[0]
    for (path, a), (_, b) in zip(paths_params, paths_like):
        if jax.numpy.shape(a) != jax.numpy.shape(b):
            raise ValueError(
                f"freeze_like: parameter {jax.tree_util.keystr(path)} has shape "
                f"{jax.numpy.shape(a)}, the frozen network expects "
                f"{jax.numpy.shape(b)}."
            )
    # Markers are nodes with one child, so `like`'s tree holds the same leaves
    # in the same order: rebuild it around the values of `params`.
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(like), jax.tree_util.tree_leaves(plain)
    )


def learning_rates(params: PyTree) -> PyTree:
    """Each leaf's effective learning rate, a Python float, in a plain tree.

    The product of the rates of the :class:`~nt_frozen.RatedParams` markers
    above a leaf; 0 under a :class:`~nt_frozen.FrozenParams` marker; 1
    elsewhere. The result has the layout of `params` without the marker nodes
    (numbers, not markers, at every level), and its leaves come in the order
    of `jax.tree_util.tree_leaves(params)`. To scale gradients or updates,
    which keep the markers, use :func:`~nt_frozen.apply_learning_rates`.

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, LearningRate, learning_rates, stax
      >>> dense = lambda n: stax.Dense(n, b_std=0.1)
      >>> init_fn, _, _ = stax.serial(
      ...     LearningRate(dense(3), 0.1), stax.Relu(),
      ...     LearningRate(stax.serial(dense(3), Frozen(dense(3)),
      ...                              LearningRate(dense(1), 10.)), 2.))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 4))
      >>> learning_rates(params)
      [(0.1, 0.1), (), [(2.0, 2.0), (0.0, 0.0), (20.0, 20.0)]]
    """
    return map_with_rates(lambda _, rate: float(rate), params, keep_markers=False)
