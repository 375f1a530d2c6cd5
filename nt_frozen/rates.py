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
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import get_req, layer, requires
from nt_frozen._stax_utils import (
    Layer,
    checked_get_kernel_fn,
    has_leaves,
    ntks,
    replace_ntks,
)
from nt_frozen.frozen import Frozen, check_wrapped_layer, ntk_jvp
from nt_frozen.params import FrozenParams, is_frozen

PyTree = Any


# --- Parameters ---------------------------------------------------------------


@jax.tree_util.register_pytree_with_keys_class
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

    def tree_flatten_with_keys(self):
        # Key paths read `[2].params[0]`, as under FrozenParams, so that errors
        # name the parameter.
        return ((jax.tree_util.GetAttrKey("params"), self.params),), self.rate

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
    """Each leaf's effective learning rate, a Python float, in a plain tree.

    The product of the rates of the :class:`RatedParams` markers above a leaf;
    0 under a :class:`~nt_frozen.FrozenParams` marker; 1 elsewhere. The
    result has the layout of `params` without the marker nodes (numbers, not
    markers, at every level), and its leaves come in the order of
    `jax.tree_util.tree_leaves(params)`. To scale gradients or updates, which
    keep the markers, use :func:`apply_learning_rates`.

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
    return _without_markers(_map_with_rates(lambda _, rate: float(rate), params))


def _without_markers(tree: PyTree) -> PyTree:
    """`tree` with every marker node replaced by its child."""
    return jax.tree_util.tree_map(
        lambda node: _without_markers(node.params) if _is_marker(node) else node,
        tree,
        is_leaf=_is_marker,
    )


def apply_learning_rates(updates: PyTree) -> PyTree:
    """Multiply each leaf of `updates` (gradients, or any tree with the markers
    of the parameters) by its effective rate; leaves at rate 1 are untouched.

    Example:
      >>> params = [RatedParams({"W": 1.0}, 0.5), FrozenParams({"W": 1.0}), {"W": 1.0}]
      >>> jax.tree_util.tree_leaves(apply_learning_rates(params))
      [0.5, 0.0, 1.0]
    """
    check_rates_fit(updates, "apply_learning_rates")
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
    """`rate` as a Python float, or an error naming `where`, the value and the fix.

    Any real scalar is a rate: a Python int or float (or `fractions.Fraction`),
    and a NumPy or JAX scalar or 0-d array of any integer or floating dtype,
    `bfloat16` and other ML dtypes included."""
    fix = "pass a finite number >= 0, e.g. 0.1 (0 freezes the layer, 1 leaves it)"
    if isinstance(rate, (bool, np.bool_)):
        raise TypeError(f"{where}: rate must be a real number, got {rate!r}; {fix}.")
    if isinstance(rate, numbers.Real) and not isinstance(rate, np.generic):
        value = float(rate)  # Python numbers (NumPy scalars are checked below)
    elif isinstance(rate, (np.ndarray, np.generic, jax.Array)):
        value = _scalar_value(rate, where, fix)
    else:
        raise TypeError(f"{where}: rate must be a real number, got {rate!r}; {fix}.")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = "finite and >= 0" if allow_zero else "finite and > 0"
        extra = "" if allow_zero else " (use FrozenParams / Frozen for rate 0)"
        raise ValueError(
            f"{where}: rate must be {expected}, got {value!r}; {fix}{extra}."
        )
    return value


def _scalar_value(rate: Any, where: str, fix: str) -> float:
    """A NumPy / JAX scalar or 0-d array of a real dtype, as a Python float."""
    try:
        array = np.asarray(rate)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{where}: rate is a traced value ({rate!r}); the rate is part of the "
            f"network's structure, so pass a concrete number, not one under jit "
            f"or grad."
        ) from None
    if array.ndim != 0:
        raise ValueError(
            f"{where}: rate must be a scalar, got an array of shape {array.shape}; "
            f"wrap each layer that needs its own rate in its own LearningRate."
        )
    # `jnp.issubdtype` knows the ML dtypes (bfloat16, float8_*), which NumPy
    # does not count as floating.
    if not (
        jnp.issubdtype(array.dtype, jnp.integer)
        or jnp.issubdtype(array.dtype, jnp.floating)
    ):
        raise TypeError(
            f"{where}: rate must be a real number, got dtype {array.dtype}; {fix}."
        )
    return float(array)


def check_rate_fits(rate: float, dtype: Any, where: str) -> None:
    """Raise if `rate` is not a normal number of `dtype` (the kernel's, or the
    parameter's): above the largest, the kernels would be `inf` / NaN; below
    the smallest, the layer's term would round to zero. Rates 0 and 1 and
    non-floating dtypes always pass.

    Example:
      >>> check_rate_fits(1e30, "float32", "here")
      >>> check_rate_fits(1e39, "float32", "LearningRate(Dense, 1e+39)")
      ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
      Traceback (most recent call last):
        ...
      ValueError: LearningRate(Dense, 1e+39): the learning rate 1e+39 is beyond
      the range of float32 (normal numbers from 1.18e-38 to 3.4e+38), so the
      kernel would hold inf or NaN. Rates count ...
    """
    dtype = jnp.dtype(dtype)
    if rate in (0.0, 1.0) or not jnp.issubdtype(dtype, jnp.inexact):
        return
    info = jnp.finfo(dtype)
    big = rate > float(info.max)
    if big or rate < float(info.smallest_normal):
        what = "hold inf or NaN" if big else "round this layer's term to zero"
        raise ValueError(
            f"{where}: the learning rate {rate:g} is beyond the range of {dtype} "
            f"(normal numbers from {float(info.smallest_normal):.3g} to "
            f"{float(info.max):.3g}), so the kernel would {what}. Rates count "
            f"relative to the base learning rate: divide every rate by one "
            f"factor and multiply the base learning rate (or the training time) "
            f'by it, or compute in float64 (jax.config.update("jax_enable_x64", '
            f"True), float64 inputs and parameters)."
        )


def check_rates_fit(params: PyTree, where: str) -> None:
    """:func:`check_rate_fits` for every leaf of `params` at its effective
    rate (the product of the markers above it) and in its own dtype; the
    error names the leaf (`params[2].params[0]`).

    Example:
      >>> import jax.numpy as jnp
      >>> check_rates_fit([RatedParams(jnp.ones(2), 1e30)], "here")
      >>> check_rates_fit([RatedParams(RatedParams(jnp.ones(2), 1e20), 1e20)],
      ...                 "here")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: here: params[0].params.params: the learning rate 1e+40 is ...
    """
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    rates = jax.tree_util.tree_leaves(learning_rates(params))
    for (path, leaf), rate in zip(paths, rates):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None:
            check_rate_fits(rate, dtype, f"{where}: params{jax.tree_util.keystr(path)}")


def propagate_ntk_rated(
    kernel_fn: Callable,
    k: Any,
    rate: float,
    *,
    where: str = "propagate_ntk_rated",
    **kwargs,
) -> Any:
    """Apply `kernel_fn` to `k` with its own parameter term scaled by `rate`.

    `k` is a `Kernel` or a pytree of them (layers with several inputs). Every
    field of the result but `ntk` is exactly `kernel_fn(k)`'s; the NTK is
    `L(ntk_in) + rate * P(nngp_in)`. A rate outside the range of the NTK's
    dtype raises (naming `where`) before any work.
    """
    for ntk in ntks(k):  # before any work: a rate the kernel's dtype can't hold
        if ntk is not None:
            check_rate_fits(rate, ntk.dtype, where)
    pair = ntk_jvp(kernel_fn, k, at_zero=True, **kwargs)
    if pair is None:  # NTK not requested (get='nngp').
        return kernel_fn(k, **kwargs)
    # Affine in the NTKs: at ntk = 0 the primal is the own term P (L(0) = 0
    # exactly), and the tangent along ntk_in is L(ntk_in), computed apart from
    # P. Neither is a difference of large numbers.
    own, linear = pair
    return replace_ntks(own, [t + rate * p for t, p in zip(linear, ntks(own))])


@layer
def _rated(
    init_fn: Callable, apply_fn: Callable, kernel_fn: Callable, rate: float, name: str
):
    def rated_init_fn(rng, input_shape):
        output_shape, params = init_fn(rng, input_shape)
        return output_shape, rate_params(params, rate)

    def rated_apply_fn(params, inputs, **kwargs):
        # True values and true gradients: the rate acts on training and on
        # kernels, through the marker, not on the function.
        check_rate_marker(params, rate, name)
        return apply_fn(rated_values(params), inputs, **kwargs)

    @requires(**get_req(kernel_fn, {}))
    def rated_kernel_fn(k, **kwargs):
        return propagate_ntk_rated(kernel_fn, k, rate, where=name, **kwargs)

    return rated_init_fn, rated_apply_fn, rated_kernel_fn


def check_rate_marker(params: PyTree, rate: float, where: str) -> None:
    """Raise unless `params` carry the marker `LearningRate(layer, rate)` gives.

    A `Frozen` layer needs no marker to be right: its `apply_fn` stops the
    gradients itself, so every Jacobian of its parameters is zero whatever
    they are marked (the marker only spares the work). A rate cannot act in
    the function like that (a gradient scaled in `apply_fn` would scale the
    training steps a second time), so it lives in the marker alone, and
    parameters without it (a checkpoint of the unrated network, say) would
    silently give every empirical kernel and rated optimizer rate 1.

    Example:
      >>> check_rate_marker(RatedParams({"W": 1.0}, 2.0), 2.0, "here")
      >>> check_rate_marker((), 2.0, "here")  # no parameters, nothing to rate
      >>> check_rate_marker({"W": 1.0}, 2.0, "LearningRate(Dense, 2)")
      ... # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: LearningRate(Dense, 2): its parameters carry no learning-rate ...
    """
    if is_rated(params) and params.rate == rate:
        return
    if not has_leaves(params):
        return
    fix = (
        "mark them as this network's init_fn does: "
        "params = nt_frozen.freeze_like(params, init_fn(key, x.shape)[1])"
    )
    if is_rated(params):
        raise ValueError(
            f"{where}: its parameters are marked with rate {params.rate:g} "
            f"(RatedParams), but this layer trains at rate {rate:g}: the "
            f"empirical kernels would use {params.rate:g}. They come from another "
            f"network; {fix}."
        )
    raise ValueError(
        f"{where}: its parameters carry no learning-rate marker (RatedParams, "
        f"rate={rate:g}; got {type(params).__name__}), so every empirical kernel "
        f"and rated optimizer would train them at rate "
        f"{0 if is_frozen(params) else 1}. They probably come from a network "
        f"without this LearningRate (a checkpoint of the unrated network?); {fix}."
    )


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
    label = f"LearningRate({name}, {rate:g})"
    r_init, r_apply, r_kernel = _rated(init_fn, apply_fn, kernel_fn, rate, label)
    # `get` checked before any work (NT's bare KeyError comes after it).
    rated = r_init, r_apply, checked_get_kernel_fn(r_kernel, label)
    # Name after the wrapped layer (`LearningRate(Dense, 0.1)`), for labels
    # and tracebacks.
    for fn, original in zip(rated, (init_fn, apply_fn, kernel_fn)):
        wrapped = getattr(original, "__name__", "layer")
        fn.__name__ = f"LearningRate({wrapped}, {rate:g})"
    return rated
