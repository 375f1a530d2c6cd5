"""Shared pieces of the stax idiom: types, checks of user-passed layers, and
helpers over `Kernel` pytrees (layers with several inputs pass trees of them).

Every module of the package takes these from here, so each exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from neural_tangents import Kernel

from nt_frozen._compat import get_req, stax

#: A stax layer: `(init_fn, apply_fn, kernel_fn)`.
Layer = tuple[Callable, Callable, Callable]
PyTree = Any
ArrayLike = Any


def is_kernel(x: Any) -> bool:
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
