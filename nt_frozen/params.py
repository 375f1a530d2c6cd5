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
