"""A network as a function of some of its trainable parameter leaves.

An NTK or a gradient differentiates every leaf it is given. To differentiate
only some (the trainable ones, or one block of them), the others are closed
over as constants and the chosen leaves alone are passed: :func:`restrict`
is that view, shared by the empirical kernels, the structured path's NT
fallback, the layer-wise decomposition (through it) and the training loop.
Frozen leaves (under :class:`~nt_frozen.params.FrozenParams`) are never
chosen: they cost no Jacobian and no gradient. With `rated=True` each chosen
leaf's Jacobian is scaled by the square root of its learning rate, as
:func:`~nt_frozen.rates.weight_jacobians` does, so that `J Jᵀ` of the view is
the rated NTK `Σ rate · J_p J_pᵀ`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from nt_frozen.params import merge, split, trainable_mask
from nt_frozen.rates import learning_rates, weight_jacobians

PyTree = Any


class Restriction(NamedTuple):
    """`apply_fn` as a function of chosen leaves; see :func:`restrict`.

    Attributes:
      fn: `fn(leaves, x, **apply_fn_kwargs)`, `apply_fn` with `leaves` in
        place of the chosen leaves of `params` (the others constant).
      leaves: the chosen leaves' values, a tuple in the order of `indices`.
      indices: their positions in `jax.tree_util.tree_leaves(params)`.
      rates: their effective learning rates (1 outside `LearningRate`).
    """

    fn: Callable
    leaves: tuple
    indices: tuple[int, ...]
    rates: tuple[float, ...]


def _chosen(leaves: Sequence[int] | None, mask: list[bool]) -> tuple[int, ...]:
    """The trainable ones among `leaves` (default: every trainable leaf)."""
    if leaves is None:
        return tuple(i for i, trainable in enumerate(mask) if trainable)
    indices = [operator.index(i) for i in leaves]
    wrong = [i for i in indices if not 0 <= i < len(mask)]
    if wrong:
        raise ValueError(
            f"restrict: leaf index {wrong[0]} is out of range; `params` has "
            f"{len(mask)} leaves (indices into jax.tree_util.tree_leaves(params))."
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"restrict: leaf indices repeat in {indices}; list each once.")
    return tuple(i for i in indices if mask[i])


def restrict(
    apply_fn: Callable,
    params: PyTree,
    leaves: Sequence[int] | None = None,
    *,
    rated: bool = True,
) -> Restriction:
    """`apply_fn` as a function of the chosen trainable leaves of `params`.

    Args:
      apply_fn: `apply_fn(params, x, **kwargs)`.
      params: its parameters, with any `FrozenParams` and `RatedParams`
        markers, nested at any depth.
      leaves: indices into `jax.tree_util.tree_leaves(params)`; frozen ones
        are dropped (they are constants whatever is asked). `None`: every
        trainable leaf.
      rated: scale each chosen leaf's derivatives by `sqrt(rate)` (values
        unchanged), so that an NTK of `fn` is the rated one; `False` for plain
        derivatives (a training loop applies the rates to its steps).

    Returns:
      A :class:`Restriction` `r`: `r.fn(r.leaves, x)` equals
      `apply_fn(params, x)`, and differentiating it in `r.leaves`
      differentiates the chosen leaves only.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, LearningRate, stax
      >>> dense = lambda n: stax.Dense(n, b_std=0.1)
      >>> init_fn, apply_fn, _ = stax.serial(
      ...     Frozen(dense(4)), LearningRate(dense(1), 4.0))
      >>> x = jnp.ones((2, 3))
      >>> _, params = init_fn(jax.random.PRNGKey(0), x.shape)
      >>> r = restrict(apply_fn, params)
      >>> r.indices, r.rates  # the readout's W and b; the frozen layer's are not
      ((2, 3), (4.0, 4.0))
      >>> bool(jnp.array_equal(r.fn(r.leaves, x), apply_fn(params, x)))
      True
    """
    flat = jax.tree_util.tree_leaves(params)
    mask = jax.tree_util.tree_leaves(trainable_mask(params))
    indices = _chosen(leaves, mask)
    all_rates = jax.tree_util.tree_leaves(learning_rates(params))
    trainable, frozen = split(params)
    values, treedef = jax.tree_util.tree_flatten(trainable)
    # Leaf i of `params` is leaf position[i] of the trainable half (same order).
    position = {i: k for k, i in enumerate(i for i, m in enumerate(mask) if m)}

    def fn(chosen, x, **apply_fn_kwargs):
        full = list(values)
        for i, value in zip(indices, chosen, strict=True):
            full[position[i]] = value
        half = jax.tree_util.tree_unflatten(treedef, full)
        # Same values; under `rated`, derivatives scaled by sqrt(rate) per leaf
        # (leaves at rate 1 are returned as they are).
        half = weight_jacobians(half) if rated else half
        return apply_fn(merge(half, frozen), x, **apply_fn_kwargs)

    return Restriction(
        fn,
        tuple(flat[i] for i in indices),
        indices,
        tuple(all_rates[i] for i in indices),
    )
