"""The marker nodes a frozen or rated layer wraps its parameters in, and the
one walk that reads them.

`Frozen(layer).init_fn` returns the layer's parameters inside a
:class:`FrozenParams` node, `LearningRate(layer, rate).init_fn` inside a
:class:`RatedParams` node. A marker is an ordinary pytree node with one child
(the original parameter tree), so marked parameters are saved, loaded, mapped
and replaced like any others, and gradients and optimizer states keep the
markers. `Frozen` is `LearningRate(., 0)`: both nodes have a `rate` (0 for
:class:`FrozenParams`), and :func:`map_with_rates`, the only walk through
markers, multiplies the rates down the tree, so its callers never tell the
two apart.

This module is the bottom of the package: it imports nothing of nt_frozen
(nor neural-tangents), and everything that reads markers builds on it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@jax.tree_util.register_pytree_with_keys_class
class FrozenParams:
    """Marks the parameters of a frozen layer; its single child is the tree.

    Its `rate` is 0: a frozen layer trains at rate 0.

    Example:
      >>> import jax
      >>> node = FrozenParams({"W": 1.0})
      >>> is_frozen(node), node.rate, jax.tree_util.tree_leaves(node)
      (True, 0.0, [1.0])
    """

    __slots__ = ("params",)

    def __init__(self, params: PyTree):
        self.params = params

    @property
    def rate(self) -> float:
        return 0.0

    def tree_flatten(self):
        return (self.params,), None

    def tree_flatten_with_keys(self):
        # Key paths read `[2].params[0]`, the attribute that holds the tree.
        return ((jax.tree_util.GetAttrKey("params"), self.params),), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del aux_data
        return cls(children[0])

    def __repr__(self) -> str:
        return f"FrozenParams({self.params!r})"


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


#: Both marker classes, for `isinstance`.
MARKERS = (FrozenParams, RatedParams)
Marker = FrozenParams | RatedParams


def is_frozen(node: Any) -> bool:
    """True for a :class:`FrozenParams` node (use as `is_leaf` in tree maps).

    Example:
      >>> is_frozen(freeze_params({"W": 1.0})), is_frozen({"W": 1.0})
      (True, False)
    """
    return isinstance(node, FrozenParams)


def is_rated(node: Any) -> bool:
    """True for a :class:`RatedParams` node (use as `is_leaf` in tree maps).

    Example:
      >>> is_rated(rate_params({"W": 1.0}, 2.0)), is_rated({"W": 1.0})
      (True, False)
    """
    return isinstance(node, RatedParams)


def is_marker(node: Any) -> bool:
    """True for a marker node, frozen or rated (use as `is_leaf` in tree maps).

    Example:
      >>> is_marker(FrozenParams(1.0)), is_marker(RatedParams(1.0, 2.0))
      (True, True)
      >>> is_marker({"W": 1.0})
      False
    """
    return isinstance(node, MARKERS)


def freeze_params(params: PyTree) -> PyTree:
    """Wrap `params` in a :class:`FrozenParams` node.

    A tree without leaves (a parameter-free layer) and an already frozen tree
    are returned unchanged, so freezing is idempotent.

    Example:
      >>> freeze_params({"W": 1.0})
      FrozenParams({'W': 1.0})
      >>> freeze_params(()), freeze_params(freeze_params(1.0))  # idempotent
      ((), FrozenParams(1.0))
    """
    if is_frozen(params) or not jax.tree_util.tree_leaves(params):
        return params
    return FrozenParams(params)


def frozen_values(params: PyTree) -> PyTree:
    """The parameter values under a (possibly absent) frozen marker.

    Example:
      >>> frozen_values(freeze_params({"W": 1.0})), frozen_values({"W": 1.0})
      ({'W': 1.0}, {'W': 1.0})
    """
    return params.params if is_frozen(params) else params


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
        return freeze_params(params)
    return RatedParams(params, rate)


def rated_values(params: PyTree) -> PyTree:
    """The parameter values under a (possibly absent) rate marker.

    Example:
      >>> rated_values(rate_params({"W": 1.0}, 2.0)), rated_values({"W": 1.0})
      ({'W': 1.0}, {'W': 1.0})
    """
    return params.params if is_rated(params) else params


# --- The walk -------------------------------------------------------------------


def _rewrap(node: Marker, params: PyTree) -> Marker:
    # As JAX rebuilds the node: the same class and rate (checked when made).
    return type(node).tree_unflatten(node.tree_flatten()[1], (params,))


def map_with_rates(
    fn: Callable[[Any, float], Any],
    tree: PyTree,
    rate: float = 1.0,
    *,
    keep_markers: bool = True,
) -> PyTree:
    """`fn(leaf, effective rate)` on every leaf of `tree`.

    A leaf's effective rate is `rate` times the rates of the markers above it
    (so 0 under a :class:`FrozenParams`). The markers are kept, or with
    `keep_markers=False` each is replaced by its child.

    Example:
      >>> tree = [RatedParams({"W": 1.0, "b": FrozenParams(1.0)}, 2.0), 1.0]
      >>> map_with_rates(lambda leaf, rate: leaf * rate, tree)
      [RatedParams({'W': 2.0, 'b': FrozenParams(0.0)}, rate=2.0), 1.0]
      >>> map_with_rates(lambda _, rate: rate, tree, keep_markers=False)
      [{'W': 2.0, 'b': 0.0}, 1.0]
    """

    def visit(node):
        if not is_marker(node):
            return fn(node, rate)
        inner = map_with_rates(
            fn, node.params, rate * node.rate, keep_markers=keep_markers
        )
        return _rewrap(node, inner) if keep_markers else inner

    return jax.tree_util.tree_map(visit, tree, is_leaf=is_marker)


def unmarked(tree: PyTree) -> PyTree:
    """`tree` with every marker node, at any depth, replaced by its child.

    Example:
      >>> unmarked([RatedParams({"W": FrozenParams(1.0)}, 2.0), 3.0])
      [{'W': 1.0}, 3.0]
    """
    return map_with_rates(lambda leaf, _: leaf, tree, keep_markers=False)


# --- Rate checks ----------------------------------------------------------------


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
    rates = jax.tree_util.tree_leaves(map_with_rates(lambda _, rate: rate, params))
    for (path, leaf), rate in zip(paths, rates):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None:
            check_rate_fits(rate, dtype, f"{where}: params{jax.tree_util.keystr(path)}")
