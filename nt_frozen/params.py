"""Frozen parameters: a marker pytree node, and the trainable/frozen partition.

`Frozen(layer).init_fn` returns the wrapped layer's parameters inside a
:class:`FrozenParams` node. The node is an ordinary pytree node (its child is
the original parameter tree), so frozen parameters are saved, loaded, mapped
and replaced like any others, while :func:`split`, :func:`merge` and
:func:`trainable_mask` can still tell them apart at any nesting depth.
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


@jax.tree_util.register_pytree_node_class
class FrozenParams:
    """Marks the parameters of a frozen layer; its single child is the tree."""

    __slots__ = ("params",)

    def __init__(self, params: PyTree):
        self.params = params

    def tree_flatten(self):
        return (self.params,), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del aux_data
        return cls(children[0])

    def __repr__(self) -> str:
        return f"FrozenParams({self.params!r})"


def is_frozen(node: Any) -> bool:
    """True for a :class:`FrozenParams` node (use as `is_leaf` in tree maps)."""
    return isinstance(node, FrozenParams)


def freeze_params(params: PyTree) -> PyTree:
    """Wrap `params` in a :class:`FrozenParams` node.

    A tree without leaves (a parameter-free layer) and an already frozen tree
    are returned unchanged, so freezing is idempotent.
    """
    if is_frozen(params) or not jax.tree_util.tree_leaves(params):
        return params
    return FrozenParams(params)


def frozen_values(params: PyTree) -> PyTree:
    """The parameter values under a (possibly absent) frozen marker."""
    return params.params if is_frozen(params) else params


def _is_frozen_or_none(node: Any) -> bool:
    return node is None or is_frozen(node)


def _mismatch(what: str, error: Exception) -> ValueError:
    return ValueError(f"{what}: the parameter structures do not match ({error}).")


def split(params: PyTree) -> tuple[PyTree, PyTree]:
    """Split `params` into `(trainable, frozen)` trees of the same layout.

    `trainable` holds `None` where `params` has a :class:`FrozenParams` node;
    `frozen` keeps those nodes and holds `None` for every trainable leaf.
    :func:`merge` inverts it exactly. Both halves are pytrees, so
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
        lambda x: x if is_frozen(x) else None, params, is_leaf=is_frozen
    )
    return trainable, frozen


def merge(trainable: PyTree, frozen: PyTree) -> PyTree:
    """Inverse of :func:`split`: put the frozen nodes back among the trainable."""
    try:
        merged = jax.tree_util.tree_map(
            lambda f, t: f if is_frozen(f) else t,
            frozen,
            trainable,
            is_leaf=_is_frozen_or_none,
        )
    except (ValueError, TypeError) as error:
        raise _mismatch("merge(trainable, frozen)", error) from None
    again = split(merged)
    for name, half, rebuilt in zip(("trainable", "frozen"), (trainable, frozen), again):
        if jax.tree_util.tree_structure(half) != jax.tree_util.tree_structure(rebuilt):
            raise ValueError(
                f"merge(trainable, frozen): the {name} half does not come from the "
                f"same network as the other; expected the layout "
                f"{jax.tree_util.tree_structure(rebuilt)}, got "
                f"{jax.tree_util.tree_structure(half)}. Use the two halves of one "
                f"split(params)."
            )
    return merged


def trainable_mask(params: PyTree) -> PyTree:
    """Boolean tree like `params`: True on trainable leaves, False on frozen ones.

    Plugs into `optax.masked(transform, trainable_mask(params))`, so that e.g.
    weight decay never touches frozen weights.
    """
    return jax.tree_util.tree_map(
        lambda x: jax.tree_util.tree_map(lambda _: False, x) if is_frozen(x) else True,
        params,
        is_leaf=is_frozen,
    )


def labels(
    params: PyTree, trainable: str = "trainable", frozen: str = "frozen"
) -> PyTree:
    """String labels like `params`, for `optax.multi_transform`.

    Example: `optax.multi_transform({"trainable": optax.adam(1e-3),
    "frozen": optax.set_to_zero()}, labels(params))`.
    """
    return jax.tree_util.tree_map(
        lambda is_trainable: trainable if is_trainable else frozen,
        trainable_mask(params),
    )


def unfreeze(params: PyTree) -> PyTree:
    """Remove every frozen marker: the parameters of the unfrozen network."""
    return jax.tree_util.tree_map(frozen_values, params, is_leaf=is_frozen)


def freeze_like(params: PyTree, like: PyTree) -> PyTree:
    """Mark `params` (e.g. pretrained, from an unfrozen network) frozen where
    `like` (parameters of the frozen network, e.g. from its `init_fn`) is.

    Raises:
      ValueError: naming the first place where the layouts or shapes differ.
    """
    like_plain = unfreeze(like)
    paths_like = jax.tree_util.tree_flatten_with_path(like_plain)[0]
    paths_params = jax.tree_util.tree_flatten_with_path(unfreeze(params))[0]
    if jax.tree_util.tree_structure(like_plain) != jax.tree_util.tree_structure(
        unfreeze(params)
    ):
        raise ValueError(
            "freeze_like: params do not have the layout of the frozen network: "
            f"expected {jax.tree_util.tree_structure(like_plain)}, got "
            f"{jax.tree_util.tree_structure(unfreeze(params))}. Were they made by "
            "the same architecture?"
        )
    for (path, a), (_, b) in zip(paths_params, paths_like):
        if jax.numpy.shape(a) != jax.numpy.shape(b):
            raise ValueError(
                f"freeze_like: parameter {jax.tree_util.keystr(path)} has shape "
                f"{jax.numpy.shape(a)}, the frozen network expects "
                f"{jax.numpy.shape(b)}."
            )
    mask_like = jax.tree_util.tree_map(lambda x: is_frozen(x), like, is_leaf=is_frozen)
    return jax.tree_util.tree_map(
        lambda frozen_here, p: FrozenParams(p) if frozen_here else p,
        mask_like,
        unfreeze(params),
        is_leaf=lambda x: isinstance(x, bool),
    )
