"""Checks of user input against the network, before any expensive work.

A stax network's `apply_fn` zips its layers with the entries of `params`, so
parameters of another architecture (fewer layers, other widths, another frozen
layout) can run without error and give a wrong kernel. The network's `init_fn`
says what its parameters must be: :func:`check_params` compares them with
`jax.eval_shape` of `init_fn` (no arrays are made, and under `jit` the check
costs tracing only) and names the first entry that differs. Functions that
receive only an `apply_fn` check what they can: that `apply_fn(params, x)`
traces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nt_frozen.markers import is_frozen, is_rated

PyTree = Any


def input_shape_of(x: PyTree) -> Any:
    """`x.shape`, or a list of shapes for a network with several inputs."""
    if isinstance(x, (tuple, list)):
        return [input_shape_of(xi) for xi in x]
    return tuple(np.shape(x))


def _hashable(shape: Any) -> Any:
    if isinstance(shape, (tuple, list)):
        return tuple(_hashable(s) for s in shape)
    return shape


def _as_input_shape(shape: Any) -> Any:
    # NT's init_fns take one shape (a tuple) or a list of them.
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        return [_as_input_shape(s) for s in shape]
    return shape


@functools.lru_cache(maxsize=64)
def _expected_params(init_fn: Callable, input_shape: Any) -> PyTree:
    key = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: init_fn(key, _as_input_shape(input_shape))[1])


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def _describe(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} entries"
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)):
        return f"an array of shape {_shape(x)}"
    return f"a {type(x).__name__}"


def _one_level(tree: PyTree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda n: n is not tree)


def _first_mismatch(got: PyTree, want: PyTree, path: tuple) -> tuple[tuple, str] | None:
    """`(path, what differs)` for the first place where `got` is not like `want`."""
    if is_frozen(want) != is_frozen(got):
        if is_frozen(want):
            return path, (
                "is not marked frozen, but the network freezes it (its init_fn "
                "wraps these parameters in FrozenParams)"
            )
        return path, "is marked frozen (FrozenParams), but the network trains it"
    if is_rated(want) or is_rated(got):
        rate = _rate_problem(got, want)
        if rate is not None:
            return path, rate
    want_children, want_def = _one_level(want)
    got_children, got_def = _one_level(got)
    if jax.tree_util.treedef_is_leaf(want_def) and jax.tree_util.treedef_is_leaf(
        got_def
    ):
        if _shape(got) != _shape(want):
            return path, f"has shape {_shape(got)}, the network makes {_shape(want)}"
        return None
    if got_def != want_def:
        return path, f"is {_describe(got)}, the network has {_describe(want)}"
    for (key, g), (_, w) in zip(got_children, want_children):
        mismatch = _first_mismatch(g, w, path + key)
        if mismatch is not None:
            return mismatch
    return None


_MARKER_FIX = (
    " To give the values of another network (a checkpoint) this network's "
    "markers: nt_frozen.freeze_like(params, init_fn(key, x.shape)[1])."
)


def _rate_problem(got: PyTree, want: PyTree) -> str | None:
    """What differs in the learning-rate markers of `got` and `want`, if anything."""
    if not is_rated(want):
        return (
            f"is marked with rate {got.rate:g} (RatedParams), the network trains "
            f"it at rate 1"
        )
    if not is_rated(got):
        return (
            f"carries no learning-rate marker, but the network trains it at rate "
            f"{want.rate:g} (its init_fn wraps these parameters in RatedParams)"
        )
    if got.rate != want.rate:
        return (
            f"is marked with rate {got.rate:g}, the network trains it at rate "
            f"{want.rate:g}"
        )
    return None


def check_params(
    init_fn: Callable, params: PyTree, input_shape: Any, where: str = "check_params"
) -> None:
    """Check `params` against the parameters `init_fn` makes for `input_shape`.

    Compares the structure (layers, entries), every array's shape, and which
    parameters are frozen (:class:`~nt_frozen.FrozenParams`) with
    `jax.eval_shape(init_fn)`: no arrays are made, and under `jax.jit` the
    check costs tracing only. Dtypes are not compared (casting is allowed).

    Args:
      init_fn: the network's `init_fn`.
      params: parameters to check (arrays, tracers or `jax.ShapeDtypeStruct`s).
      input_shape: the shape of the inputs (`x.shape`), as for `init_fn`.
      where: the name of the calling function, for the message.

    Raises:
      ValueError: naming the first entry of `params` that differs, e.g.
        `params[2][0] has shape (64, 1), the network makes (64, 64)`.

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, check_params, stax
      >>> init_fn, _, _ = stax.serial(stax.Dense(8), Frozen(stax.Dense(4)))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (2, 3))
      >>> check_params(init_fn, params, (2, 3))  # passes silently
      >>> check_params(init_fn, params, (2, 5))  # doctest: +NORMALIZE_WHITESPACE
      Traceback (most recent call last):
        ...
      ValueError: check_params: params do not match the network (for inputs of
      shape (2, 5)): params[0][0] has shape (3, 8), the network makes (5, 8).
      Were they made by this network (same layers, widths and Frozen layers)?
    """
    if params is None:
        raise TypeError(f"{where}: params is None; pass the network's parameters.")
    expected = _expected_params(init_fn, _hashable(input_shape))
    mismatch = _first_mismatch(params, expected, ())
    if mismatch is not None:
        path, problem = mismatch
        raise ValueError(
            f"{where}: params do not match the network (for inputs of shape "
            f"{input_shape}): params{jax.tree_util.keystr(path)} {problem}. Were "
            f"they made by this network (same layers, widths and Frozen layers)?"
            f"{_MARKER_FIX if 'marke' in problem else ''}"
        )


def check_apply(
    apply_fn: Callable, params: PyTree, x: PyTree, where: str, **apply_fn_kwargs
) -> Any:
    """`jax.eval_shape(apply_fn)(params, x)`, with a clear error if it fails.

    All a function that receives only `apply_fn` can check: parameters of
    another network usually fail to trace (shapes or frozen layout differ),
    though a `serial` network silently ignores extra layers or entries.
    """
    try:
        return jax.eval_shape(functools.partial(apply_fn, **apply_fn_kwargs), params, x)
    except (TypeError, ValueError, IndexError, AttributeError) as error:
        raise ValueError(
            f"{where}: apply_fn(params, x) fails for x of shape "
            f"{input_shape_of(x)}: {type(error).__name__}: {error}\nThe "
            f"parameters are probably not those of this network (other layers, "
            f"widths or Frozen layers). nt_frozen.check_params(init_fn, params, "
            f"x.shape) names the first entry that differs."
        ) from error


def check_targets(
    init_fn: Callable | None,
    apply_fn: Callable | None,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array | None,
    where: str,
) -> None:
    """`y_train` of shape `(len(x_train), network outputs)`; `x_test` like `x_train`.

    Without `init_fn` and `apply_fn` (None: no network, e.g. kernel-only
    prediction) the number of outputs is not checked.
    """
    n_train = np.shape(x_train)[0]
    if np.ndim(y_train) != 2 or np.shape(y_train)[0] != n_train:
        raise ValueError(
            f"{where}: y_train must have shape (n_train, outputs) = ({n_train}, "
            f"outputs), one row per row of x_train, got {np.shape(y_train)}."
        )
    if x_test is not None and np.shape(x_test)[1:] != np.shape(x_train)[1:]:
        raise ValueError(
            f"{where}: x_test must have the shape of x_train's rows "
            f"(n_test, {', '.join(map(str, np.shape(x_train)[1:]))}), got "
            f"{np.shape(x_test)}."
        )
    if init_fn is None or apply_fn is None:
        return
    params = _expected_params(init_fn, _hashable(input_shape_of(x_train)))
    out = check_apply(apply_fn, params, x_train, where)
    if np.shape(out) != np.shape(y_train):
        raise ValueError(
            f"{where}: the network's outputs on x_train have shape "
            f"{np.shape(out)}, y_train has shape {np.shape(y_train)}; give "
            f"y_train one column per network output (no broadcasting)."
        )
