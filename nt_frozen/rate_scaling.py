"""Learning rates at finite width: per-leaf scaling of updates and Jacobians.

The rates live in the parameters' markers (:mod:`nt_frozen.markers`), which
gradients and optimizer updates share with the parameters, so the functions
here need nothing but the tree they scale: :func:`apply_learning_rates` and
the optax-style :func:`scale_by_learning_rates` scale updates by each leaf's
rate, and :func:`weight_jacobians` makes any `J J^T` the rated
`sum_b rate_b J_b J_b^T`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax

from nt_frozen.markers import PyTree, check_rates_fit, map_with_rates


def apply_learning_rates(updates: PyTree) -> PyTree:
    """Multiply each leaf of `updates` (gradients, or any tree with the markers
    of the parameters) by its effective rate; leaves at rate 1 are untouched.

    Example:
      >>> import jax
      >>> from nt_frozen import FrozenParams, RatedParams
      >>> params = [RatedParams({"W": 1.0}, 0.5), FrozenParams({"W": 1.0}), {"W": 1.0}]
      >>> jax.tree_util.tree_leaves(apply_learning_rates(params))
      [0.5, 0.0, 1.0]
    """
    check_rates_fit(updates, "apply_learning_rates")
    return map_with_rates(lambda u, rate: u if rate == 1.0 else rate * u, updates)


def weight_jacobians(params: PyTree) -> PyTree:
    """The same values, with derivatives scaled by `sqrt(rate)` per leaf.

    Each leaf `p` at rate `r` becomes `stop_gradient(p) + sqrt(r) (p -
    stop_gradient(p))`: equal to `p`, bit for bit, but `d/dp` of anything
    computed from it is scaled by `sqrt(r)`. Inside a function whose Jacobian
    `J` an NTK contracts, `J J^T` becomes `sum_b r_b J_b J_b^T`: the rated
    empirical NTK, with any Jacobian implementation. Leaves at rate 1 and
    frozen ones are returned as they are.

    Example:
      >>> import jax
      >>> from nt_frozen import RatedParams
      >>> params = RatedParams({"W": 3.0}, rate=4.0)
      >>> f = lambda p: jax.tree_util.tree_leaves(weight_jacobians(p))[0] ** 2
      >>> float(f(params)), float(jax.grad(f)(params).params["W"])  # 2 * 3 * sqrt(4)
      (9.0, 12.0)
    """

    return map_with_rates(scale_jacobian, params)


def scale_jacobian(p: jax.Array, rate: float) -> jax.Array:
    """`p`, bit for bit, with derivatives scaled by `sqrt(rate)`: one leaf of
    :func:`weight_jacobians` (rates 0 and 1 return `p` itself)."""
    if rate in (0.0, 1.0):
        return p
    fixed = jax.lax.stop_gradient(p)
    return fixed + math.sqrt(rate) * (p - fixed)


class ScaleByLearningRates(NamedTuple):
    """An optax-style gradient transformation (`init`, `update`) that
    multiplies each update leaf by its effective rate."""

    init: Callable
    update: Callable


def scale_by_learning_rates() -> ScaleByLearningRates:
    """Per-leaf learning rates for optax: chain after any optimizer.

    `optax.chain(optax.sgd(lr), scale_by_learning_rates())` trains each leaf
    at `rate * lr` (frozen leaves at 0). The rates are read from the markers
    that updates share with the parameters, so the transformation has no
    state and needs no arguments. Works with any object that treats
    `(init, update)` as a transformation, without importing optax.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import LearningRate, stax
      >>> init_fn, apply_fn, _ = stax.serial(
      ...     stax.Dense(4), stax.Relu(), LearningRate(stax.Dense(1, b_std=0.1), 10.))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (2, 3))
      >>> grads = jax.tree_util.tree_map(jnp.ones_like, params)
      >>> tx = scale_by_learning_rates()
      >>> updates, _ = tx.update(grads, tx.init(params))
      >>> [float(u.ravel()[0]) for u in jax.tree_util.tree_leaves(updates)]
      [1.0, 10.0, 10.0]
    """

    def init(params):
        del params
        return ()

    def update(updates, state, params=None):
        del params
        return apply_learning_rates(updates), state

    return ScaleByLearningRates(init, update)
