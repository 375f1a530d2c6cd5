"""`LearningRate(layer, rate)`: a stax layer trained at `rate` times the base rate.

Under gradient flow in which the parameters of layer `l` move with rate
`eta_l`, a wide network follows the kernel `Theta = sum_l eta_l Theta_l`.
Per layer, the NTK map is affine in the incoming NTK,
`ntk_out = L(ntk_in) + P(nngp_in)`, and the rated layer scales only its own
parameter term: `ntk_out = L(ntk_in) + rate * P(nngp_in)`. One `jax.jvp` of
the map at `ntk = 0` in the direction `ntk_in` gives both parts, the primal
`P` and the tangent `L(ntk_in)`, so the rated map costs one pass, and nothing
is subtracted (no cancellation for small rates when `P` is large).

`rate = 0` is :func:`~nt_frozen.Frozen` and `rate = 1` the layer itself.
Rates nest and multiply. The parameters carry the rate in a
:class:`RatedParams` marker, so that finite-width code can honour it:
:func:`learning_rates` gives each leaf's effective rate,
:func:`weight_jacobians` makes any `J J^T` the rated `sum_b rate_b J_b J_b^T`,
and :func:`apply_learning_rates` / :func:`scale_by_learning_rates` scale
gradient-descent updates per leaf.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from nt_frozen._compat import get_req, layer, requires
from nt_frozen._stax_utils import Layer, ntks, replace_ntks
from nt_frozen.frozen import Frozen, check_wrapped_layer, ntk_jvp
from nt_frozen.params import FrozenParams, is_frozen

PyTree = Any


# --- Parameters ---------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class RatedParams:
    """Marks the parameters of a rated layer: its child is the parameter tree,
    its rate (a positive float) is static pytree data, so gradients, optimizer
    states and `tree_map`s of the parameters keep it.

    Rate 0 is :class:`~nt_frozen.FrozenParams`; nested markers multiply.

    Example:
      >>> import jax
      >>> node = RatedParams({"W": 1.0}, rate=0.5)
      >>> is_rated(node), node.rate, jax.tree_util.tree_leaves(node)
      (True, 0.5, [1.0])
    """

    __slots__ = ("params", "rate")

    def __init__(self, params: PyTree, rate: float):
        self.params = params
        self.rate = _check_rate(rate, "RatedParams", allow_zero=False)

    def tree_flatten(self):
        return (self.params,), self.rate

    @classmethod
    def tree_unflatten(cls, rate, children):
        # JAX rebuilds nodes with placeholder children; the rate was checked.
        node = object.__new__(cls)
        node.params, node.rate = children[0], rate
        return node

    def __repr__(self) -> str:
        return f"RatedParams({self.params!r}, rate={self.rate!r})"


def is_rated(node: Any) -> bool:
    """True for a :class:`RatedParams` node (use as `is_leaf` in tree maps).

    Example:
      >>> is_rated(rate_params({"W": 1.0}, 2.0)), is_rated({"W": 1.0})
      (True, False)
    """
    return isinstance(node, RatedParams)


def _is_marker(node: Any) -> bool:
    return is_rated(node) or is_frozen(node)


def rate_params(params: PyTree, rate: float) -> PyTree:
    """Mark `params` as trained at `rate`: `FrozenParams` for 0, unchanged for
    1 or a tree without leaves, else a :class:`RatedParams` node.

    Example:
      >>> rate_params({"W": 1.0}, 2.0)
      RatedParams({'W': 1.0}, rate=2.0)
      >>> rate_params({"W": 1.0}, 0.0), rate_params({"W": 1.0}, 1.0)
      (FrozenParams({'W': 1.0}), {'W': 1.0})
    """
    rate = _check_rate(rate, "rate_params")
    if not jax.tree_util.tree_leaves(params) or rate == 1.0:
        return params
    if rate == 0.0:
        return params if is_frozen(params) else FrozenParams(params)
    return RatedParams(params, rate)


def rated_values(params: PyTree) -> PyTree:
    """The parameter values under a (possibly absent) rate marker.

    Example:
      >>> rated_values(rate_params({"W": 1.0}, 2.0)), rated_values({"W": 1.0})
      ({'W': 1.0}, {'W': 1.0})
    """
    return params.params if is_rated(params) else params


def _map_with_rates(fn: Callable[[Any, float], Any], tree: PyTree, rate=1.0):
    """`fn(leaf, effective rate)` on every leaf, keeping every marker node."""

    def visit(node):
        if is_rated(node):
            return RatedParams.tree_unflatten(
                node.rate, (_map_with_rates(fn, node.params, rate * node.rate),)
            )
        if is_frozen(node):
            return FrozenParams(_map_with_rates(fn, node.params, 0.0))
        return fn(node, rate)

    return jax.tree_util.tree_map(visit, tree, is_leaf=_is_marker)


def learning_rates(params: PyTree) -> PyTree:
    """Each leaf's effective learning rate (a float), in a tree like `params`.

    The product of the rates of the :class:`RatedParams` markers above a leaf;
    0 under a :class:`~nt_frozen.FrozenParams` marker; 1 elsewhere. Marker
    nodes are kept, so the result has exactly the structure of `params` (and
    of their gradients and optimizer states).

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, LearningRate, learning_rates, stax
      >>> dense = lambda n: stax.Dense(n, b_std=0.1)
      >>> init_fn, _, _ = stax.serial(
      ...     LearningRate(dense(3), 0.1), stax.Relu(),
      ...     LearningRate(stax.serial(dense(3), Frozen(dense(3)),
      ...                              LearningRate(dense(1), 10.)), 2.))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 4))
      >>> jax.tree_util.tree_leaves(learning_rates(params))
      [0.1, 0.1, 2.0, 2.0, 0.0, 0.0, 20.0, 20.0]
    """
    return _map_with_rates(lambda _, rate: rate, params)


def apply_learning_rates(updates: PyTree) -> PyTree:
    """Multiply each leaf of `updates` (gradients, or any tree with the markers
    of the parameters) by its effective rate; leaves at rate 1 are untouched.

    Example:
      >>> params = [RatedParams({"W": 1.0}, 0.5), FrozenParams({"W": 1.0}), {"W": 1.0}]
      >>> jax.tree_util.tree_leaves(apply_learning_rates(params))
      [0.5, 0.0, 1.0]
    """
    return _map_with_rates(lambda u, rate: u if rate == 1.0 else rate * u, updates)


def weight_jacobians(params: PyTree) -> PyTree:
    """The same values, with derivatives scaled by `sqrt(rate)` per leaf.

    Each leaf `p` at rate `r` becomes `stop_gradient(p) + sqrt(r) (p -
    stop_gradient(p))`: equal to `p`, bit for bit, but `d/dp` of anything
    computed from it is scaled by `sqrt(r)`. Inside a function whose Jacobian
    `J` an NTK contracts, `J J^T` becomes `sum_b r_b J_b J_b^T`: the rated
    empirical NTK, with any Jacobian implementation. Leaves at rate 1 and
    frozen ones are returned as they are.

    Example:
      >>> params = RatedParams({"W": 3.0}, rate=4.0)
      >>> f = lambda p: jax.tree_util.tree_leaves(weight_jacobians(p))[0] ** 2
      >>> float(f(params)), float(jax.grad(f)(params).params["W"])  # 2 * 3 * sqrt(4)
      (9.0, 12.0)
    """

    return _map_with_rates(scale_jacobian, params)


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


# --- The layer ------------------------------------------------------------------


def _check_rate(rate: Any, where: str, allow_zero: bool = True) -> float:
    """`rate` as a Python float, or an error naming `where`, the value and the fix."""
    fix = "pass a finite number >= 0, e.g. 0.1 (0 freezes the layer, 1 leaves it)"
    if isinstance(rate, bool) or not isinstance(
        rate, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"{where}: rate must be a real number, got {rate!r}; {fix}.")
    try:
        value = np.asarray(rate)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{where}: rate is a traced value ({rate!r}); the rate is part of the "
            f"network's structure, so pass a concrete number, not one under jit "
            f"or grad."
        ) from None
    if value.ndim != 0:
        raise ValueError(
            f"{where}: rate must be a scalar, got an array of shape {value.shape}; "
            f"wrap each layer that needs its own rate in its own LearningRate."
        )
    if not (
        np.issubdtype(value.dtype, np.integer)
        or np.issubdtype(value.dtype, np.floating)
    ):
        raise TypeError(
            f"{where}: rate must be a real number, got dtype {value.dtype}; {fix}."
        )
    rate = float(value)
    if not math.isfinite(rate) or rate < 0 or (rate == 0 and not allow_zero):
        expected = "finite and >= 0" if allow_zero else "finite and > 0"
        extra = "" if allow_zero else " (use FrozenParams / Frozen for rate 0)"
        raise ValueError(
            f"{where}: rate must be {expected}, got {rate!r}; {fix}{extra}."
        )
    return rate


def propagate_ntk_rated(kernel_fn: Callable, k: Any, rate: float, **kwargs) -> Any:
    """Apply `kernel_fn` to `k` with its own parameter term scaled by `rate`.

    `k` is a `Kernel` or a pytree of them (layers with several inputs). Every
    field of the result but `ntk` is exactly `kernel_fn(k)`'s; the NTK is
    `L(ntk_in) + rate * P(nngp_in)`.
    """
    pair = ntk_jvp(kernel_fn, k, at_zero=True, **kwargs)
    if pair is None:  # NTK not requested (get='nngp').
        return kernel_fn(k, **kwargs)
    # Affine in the NTKs: at ntk = 0 the primal is the own term P (L(0) = 0
    # exactly), and the tangent along ntk_in is L(ntk_in), computed apart from
    # P. Neither is a difference of large numbers.
    own, linear = pair
    return replace_ntks(own, [t + rate * p for t, p in zip(linear, ntks(own))])


@layer
def _rated(init_fn: Callable, apply_fn: Callable, kernel_fn: Callable, rate: float):
    def rated_init_fn(rng, input_shape):
        output_shape, params = init_fn(rng, input_shape)
        return output_shape, rate_params(params, rate)

    def rated_apply_fn(params, inputs, **kwargs):
        # True values and true gradients: the rate acts on training and on
        # kernels, through the marker, not on the function.
        return apply_fn(rated_values(params), inputs, **kwargs)

    @requires(**get_req(kernel_fn, {}))
    def rated_kernel_fn(k, **kwargs):
        return propagate_ntk_rated(kernel_fn, k, rate, **kwargs)

    return rated_init_fn, rated_apply_fn, rated_kernel_fn


def LearningRate(layer: Layer, rate: float) -> Layer:  # noqa: N802 (stax CamelCase)
    """Train a stax layer's own parameters at `rate` times the base learning rate.

    Args:
      layer: any `(init_fn, apply_fn, kernel_fn)` triple of `neural_tangents.stax`
        (a single layer or a combinator such as `serial`, `parallel`, `repeat`).
      rate: a finite number `>= 0`. Nested rates multiply.

    Returns:
      `Frozen(layer)` for `rate == 0`, `layer` itself for `rate == 1`, else a
      layer triple with

      - `init_fn`: the same parameters (same values for the same key), wrapped
        in :class:`RatedParams` carrying the rate;
      - `apply_fn`: the same outputs and gradients;
      - `kernel_fn`: every `Kernel` field as `layer` computes it, except the
        NTK, `L(ntk_in) + rate * P(nngp_in)`: the incoming NTK propagated as
        by the layer, plus `rate` times its own parameter term.

    Raises:
      TypeError, ValueError: for a rate that is negative, NaN, infinite, not a
        scalar or not a real number, or a `layer` that is not a stax triple.

    Example:
      >>> import jax.numpy as jnp
      >>> from nt_frozen import LearningRate, stax
      >>> x = jnp.linspace(-1., 1., 12).reshape(4, 3)
      >>> readout = stax.Dense(1, W_std=1.5, b_std=0.5)
      >>> _, _, kernel_fn = stax.serial(
      ...     stax.Dense(512), stax.Relu(), LearningRate(readout, 10.))
      >>> _, _, plain_fn = stax.serial(stax.Dense(512), stax.Relu(), readout)
      >>> k, plain = kernel_fn(x, None), plain_fn(x, None)
      >>> # The readout's own term is the NNGP of the output; it counts 10x.
      >>> bool(jnp.allclose(k.ntk, plain.ntk + 9. * plain.nngp, rtol=1e-5))
      True
      >>> LearningRate(readout, 0.1)[2].__name__
      'LearningRate(Dense, 0.1)'
    """
    init_fn, apply_fn, kernel_fn = check_wrapped_layer(layer, "LearningRate")
    name = getattr(kernel_fn, "__name__", "layer")
    rate = _check_rate(rate, f"LearningRate({name}, rate={rate!r})")
    if rate == 0.0:
        return Frozen(layer)
    if rate == 1.0:
        return layer
    rated = _rated(init_fn, apply_fn, kernel_fn, rate)
    # Name after the wrapped layer (`LearningRate(Dense, 0.1)`), for labels
    # and tracebacks.
    for fn, original in zip(rated, (init_fn, apply_fn, kernel_fn)):
        wrapped = getattr(original, "__name__", "layer")
        fn.__name__ = f"LearningRate({wrapped}, {rate:g})"
    return rated
