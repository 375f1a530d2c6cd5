"""Shared pieces of the stax idiom: types, checks of user-passed layers, and
helpers over `Kernel` pytrees (layers with several inputs pass trees of them).

Every module of the package takes these from here, so each exists once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from neural_tangents import Kernel

from nt_frozen._compat import get_req, stax

#: Names `get` may hold for an analytic `kernel_fn` (the `Kernel` fields).
KERNEL_FIELDS = tuple(field.name for field in dataclasses.fields(Kernel))
#: Names `get` may hold for an empirical kernel.
EMPIRICAL_KERNELS = ("nngp", "ntk")


def check_get(get: Any, valid: Sequence[str], where: str) -> tuple[str, ...] | None:
    """The names in `get` (`None` stays `None`); a ValueError for a wrong one."""
    if get is None:
        return None
    names = (get,) if isinstance(get, str) else get
    try:
        names = tuple(names)
    except TypeError:
        names = (get,)
    for name in names:
        if not isinstance(name, str) or name not in valid:
            what = "is" if names == (get,) else f"holds {name!r}, which is"
            raise ValueError(
                f"{where}: get={get!r} {what} not a kernel name here; use one or "
                f"several of {', '.join(map(repr, valid))}."
            )
    return names


#: A stax layer: `(init_fn, apply_fn, kernel_fn)`.
Layer = tuple[Callable, Callable, Callable]
PyTree = Any
ArrayLike = Any


def is_kernel(x: Any) -> bool:
    """Whether `x` is an `nt.Kernel` (the leaf test for Kernel pytrees).

    Example:
      >>> import jax.numpy as jnp
      >>> from nt_frozen import stax
      >>> k = stax.Dense(1)[2](jnp.ones((2, 3)), None)
      >>> is_kernel(k), is_kernel(k.ntk)
      (True, False)
    """
    return isinstance(x, Kernel)


def has_leaves(tree: PyTree) -> bool:
    return bool(jax.tree_util.tree_leaves(tree))


def layer_name(lyr: Layer) -> str:
    """The name NT gives a layer (`Dense`, `ABRelu`, `Frozen(Dense)`, ...)."""
    return getattr(lyr[0], "__name__", type(lyr[0]).__name__)


def looks_like_layer(item: Any) -> bool:
    """A layer triple, or an `(init_fn, apply_fn)` pair."""
    return (
        isinstance(item, (tuple, list))
        and len(item) in (2, 3)
        and all(map(callable, item))
    )


def function_hint(fn: Callable, wrap: str = "{}") -> str:
    """How to turn the function `fn`, given where a layer was expected, into a
    layer (`wrap` formats the suggested call, e.g. `"Frozen({})"`).

    Example:
      >>> function_hint(stax.Dense, "Frozen({})")
      'Call it first, e.g. Frozen(stax.Dense(...)).'
      >>> import jax
      >>> function_hint(jax.nn.relu)
      "'relu' is a function, not a stax layer: its closed-form layer is stax.Relu()."
    """
    name = getattr(fn, "__name__", repr(fn))
    if callable(getattr(stax, name, None)):
        return f"Call it first, e.g. {wrap.format(f'stax.{name}(...)')}."
    # NT's closed-form layer of the same nonlinearity (relu -> Relu, ...).
    same = {n.lower(): n for n in dir(stax) if not n.startswith("_")}.get(name.lower())
    if same is not None and callable(getattr(stax, same)):
        return (
            f"{name!r} is a function, not a stax layer: its closed-form layer is "
            f"{wrap.format(f'stax.{same}()')}."
        )
    return (
        f"{name!r} is a function, not a stax layer (neural_tangents.stax has no "
        f"layer for it). For an elementwise nonlinearity use "
        f"{wrap.format(f'stax.ElementwiseNumerical({name}, deg=25)')} (its kernel "
        f"by Gauss-Hermite quadrature), stax.Elementwise({name}, nngp_fn) with "
        f"its closed-form NNGP, or a closed-form layer such as stax.Erf(), "
        f"stax.Gelu() or stax.Relu()."
    )


def check_layer(candidate: Any, where: str, name: str = "the layer") -> Layer:
    """`candidate` as a layer triple, or an error that names `where` and says
    how to fix the call (`name` is what the error calls the candidate)."""
    if callable(candidate) and not isinstance(candidate, (tuple, list)):
        fn = getattr(candidate, "__name__", repr(candidate))
        raise TypeError(
            f"{where}: {name} is the function {fn!r}, not a layer triple "
            f"(init_fn, apply_fn, kernel_fn). {function_hint(candidate)}"
        )
    if not isinstance(candidate, (tuple, list)):
        raise TypeError(
            f"{where}: {name} is not a layer triple (init_fn, apply_fn, "
            f"kernel_fn) of neural_tangents.stax: got "
            f"{type(candidate).__name__} {candidate!r}."
        )
    if len(candidate) != 3:
        hint = (
            " A pair (init_fn, apply_fn) is a jax.example_libraries.stax layer, "
            "which has no analytic kernel_fn: use the neural_tangents.stax layer."
            if len(candidate) == 2
            else ""
        )
        raise ValueError(
            f"{where}: {name} is not a layer triple (init_fn, apply_fn, "
            f"kernel_fn) of neural_tangents.stax: got a sequence of "
            f"{len(candidate)} items.{hint}"
        )
    for role, fn in zip(("init_fn", "apply_fn", "kernel_fn"), candidate):
        if not callable(fn):
            raise TypeError(
                f"{where}: in {name}, {role} must be callable, got "
                f"{type(fn).__name__} {fn!r}."
            )
    init_fn, apply_fn, kernel_fn = candidate
    return init_fn, apply_fn, kernel_fn


def ntks(k: PyTree) -> list[jax.Array]:
    """The NTK of every `Kernel` in `k`, in tree order."""
    return [kk.ntk for kk in jax.tree_util.tree_leaves(k, is_leaf=is_kernel)]


def zeros_like_ntks(k: PyTree) -> list[jax.Array]:
    return [jnp.zeros_like(ntk) for ntk in ntks(k)]


def replace_ntks(k: PyTree, new_ntks: Sequence[jax.Array]) -> PyTree:
    """`k` with the NTK of each `Kernel` replaced, in tree order."""
    kernels, treedef = jax.tree_util.tree_flatten(k, is_leaf=is_kernel)
    replaced = [kk.replace(ntk=ntk) for kk, ntk in zip(kernels, new_ntks)]
    return jax.tree_util.tree_unflatten(treedef, replaced)


def ntk_map(kernel_fn: Callable, k: PyTree, **kwargs) -> Callable:
    """`ntks -> (outgoing ntks, outgoing Kernel tree)`: `kernel_fn` applied to
    `k` with its NTKs replaced; affine in `ntks` for every stax layer."""

    def apply(new_ntks):
        out = kernel_fn(replace_ntks(k, new_ntks), **kwargs)
        return ntks(out), out

    return apply


def check_layers(layers: Any, where: str) -> list[Layer]:
    """`layers`, the list given to `stax.serial`, as layer triples."""
    if (
        isinstance(layers, (tuple, list))
        and len(layers) == 3
        and all(map(callable, layers))
        and get_req(layers[2]) is not None  # NT's `@layer` marks its kernel_fn
    ):
        # One layer (e.g. `stax.serial(...)` itself), not a list of layers.
        raise TypeError(
            f"{where}: `layers` is a single layer (init_fn, apply_fn, kernel_fn), "
            f"not a list of layers. Pass the layers given to stax.serial, e.g. "
            f"{where}([stax.Dense(512), stax.Relu(), stax.Dense(1)])."
        )
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        raise TypeError(
            f"{where}: `layers` must be a list of stax layers, got "
            f"{type(layers).__name__}."
        )
    if not layers:
        raise ValueError(f"{where}: `layers` is empty; pass at least one layer.")
    return [check_layer(c, where, f"layers[{i}]") for i, c in enumerate(layers)]


def is_nt_layer(candidate: Any) -> bool:
    """A layer triple whose `kernel_fn` went through NT's `@layer` (it carries
    input requirements), as every layer constructor returns."""
    return (
        isinstance(candidate, tuple)
        and len(candidate) == 3
        and all(map(callable, candidate))
        and get_req(candidate[2]) is not None
    )


def checked_get_kernel_fn(kernel_fn: Callable, where: str) -> Callable:
    """`kernel_fn` that checks `get` before any work.

    NT's `kernel_fn(x1, x2, get)` computes the whole kernel and then looks
    `get` up, so a typo (`"ntkk"`) ends in a bare `KeyError` after the work;
    this raises a ValueError naming the value and the valid names first.
    Calls on a `Kernel` (inside a network) pass straight through; the
    attributes NT reads (input requirements) are kept.

    Example:
      >>> import jax.numpy as jnp
      >>> kernel_fn = checked_get_kernel_fn(stax.Dense(4)[2], "Dense")
      >>> kernel_fn(jnp.ones((2, 3)), None, "nngp").shape
      (2, 2)
      >>> kernel_fn(jnp.ones((2, 3)), None, "ntkk")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: Dense kernel_fn: get='ntkk' is not a kernel name here; use one ...
    """

    @functools.wraps(kernel_fn)
    def kernel_fn_checked(*args, **kwargs):
        get = kwargs["get"] if "get" in kwargs else args[2] if len(args) > 2 else None
        check_get(get, KERNEL_FIELDS, f"{where} kernel_fn")
        return kernel_fn(*args, **kwargs)

    return kernel_fn_checked


def checked_entries_apply_fn(apply_fn: Callable, n_layers: int, where: str):
    """`apply_fn` of `stax.serial` / `stax.parallel` that requires one entry of
    `params` per layer.

    NT's combinators zip the layers with `params`: the parameters of a
    shallower network run through a deeper one without an error (the last
    layers are skipped) and extra entries are ignored, a wrong output rather
    than an error. One `len` per call (under `jit`, per trace).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layers = (stax.Dense(2), stax.Relu(), stax.Dense(1))
      >>> init_fn, apply_fn, _ = stax.serial(*layers)
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 3))
      >>> apply_fn = checked_entries_apply_fn(apply_fn, 3, "serial")
      >>> apply_fn(params, jnp.ones((1, 3))).shape
      (1, 1)
      >>> apply_fn(params[:2], jnp.ones((1, 3)))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: serial apply_fn: params has 2 entries, but the network has 3 ...
    """

    @functools.wraps(apply_fn)
    def apply_fn_checked(params, inputs, **kwargs):
        if not isinstance(params, (tuple, list)) or len(params) != n_layers:
            got = (
                f"{len(params)} entries"
                if isinstance(params, (tuple, list))
                else f"a {type(params).__name__}, not a tuple"
            )
            raise ValueError(
                f"{where} apply_fn: params has {got}, but the network has "
                f"{n_layers} layers; NT's {where} pairs layers with entries and "
                f"would silently skip layers or ignore entries (a wrong output, "
                f"not an error). Pass this network's parameters (from its "
                f"init_fn); nt_frozen.check_params(init_fn, params, x.shape) names "
                f"the first entry that differs."
            )
        return apply_fn(params, inputs, **kwargs)

    return apply_fn_checked
