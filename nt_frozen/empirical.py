"""Finite-width kernels that differentiate only the trainable parameters.

`nt.empirical_ntk_fn` on a network with frozen layers differentiates every
leaf, frozen ones included (their Jacobians are zero, but are still built:
memory proportional to frozen parameters x batch). The functions here have
NT's signatures and options, and close the frozen leaves over as constants, so
that NT differentiates the trainable leaves only: frozen leaves cost no
Jacobian at all.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from neural_tangents._src.empirical import DEFAULT_NTK_IMPLEMENTATION

from nt_frozen import nt
from nt_frozen.params import merge, split
from nt_frozen.rates import weight_jacobians

PyTree = Any


def _has_leaves(tree: PyTree) -> bool:
    return bool(jax.tree_util.tree_leaves(tree))


def _check_params(params: PyTree, where: str) -> None:
    if params is None:
        raise TypeError(f"{where}: params is None; pass the network's parameters.")


def _on_trainable(apply_fn: Callable, frozen: PyTree) -> Callable:
    """`apply_fn` as a function of the trainable half; frozen values are constants."""

    def apply_trainable(trainable, x, **kwargs):
        # Rated leaves (`LearningRate`): same values, Jacobians scaled by
        # sqrt(rate), so NT's J J^T is the rated sum_b rate_b J_b J_b^T.
        return apply_fn(merge(weight_jacobians(trainable), frozen), x, **kwargs)

    return apply_trainable


def empirical_ntk_fn(
    apply_fn: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int = DEFAULT_NTK_IMPLEMENTATION,
    **nt_options,
) -> Callable:
    """`nt.empirical_ntk_fn` that differentiates only the trainable parameters.

    Same arguments as `nt.empirical_ntk_fn`; returns
    `ntk_fn(x1, x2, params, **apply_fn_kwargs)`.

    Example:
      >>> import jax
      >>> from nt_frozen import Frozen, stax, empirical_ntk_fn
      >>> init_fn, apply_fn, _ = stax.serial(
      ...     stax.Dense(64), stax.Relu(), Frozen(stax.Dense(64)), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
      >>> _, params = init_fn(jax.random.PRNGKey(1), x.shape)
      >>> empirical_ntk_fn(apply_fn)(x, None, params).shape
      (3, 3)
    """
    options = dict(
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        vmap_axes=vmap_axes,
        implementation=implementation,
        **nt_options,
    )

    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        _check_params(params, "empirical_ntk_fn")
        trainable, frozen = split(params)
        if not _has_leaves(trainable):  # everything frozen: the NTK is exactly 0
            shape = jax.eval_shape(
                lambda: nt.empirical_ntk_fn(apply_fn, **options)(
                    x1, x2, params, **apply_fn_kwargs
                )
            )
            return jnp.zeros(shape.shape, shape.dtype)
        fn = nt.empirical_ntk_fn(_on_trainable(apply_fn, frozen), **options)
        return fn(x1, x2, trainable, **apply_fn_kwargs)

    return ntk_fn


def empirical_kernel_fn(
    apply_fn: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int = DEFAULT_NTK_IMPLEMENTATION,
    **nt_options,
) -> Callable:
    """`nt.empirical_kernel_fn` whose NTK differentiates only trainable parameters.

    Returns `kernel_fn(x1, x2, get, params, **apply_fn_kwargs)`, like NT's.
    """
    fns = {
        "nngp": nt.empirical_nngp_fn(apply_fn, trace_axes, diagonal_axes),
        "ntk": empirical_ntk_fn(
            apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, **nt_options
        ),
    }

    def kernel_fn(x1, x2, get, params, **apply_fn_kwargs):
        _check_params(params, "empirical_kernel_fn")
        names = ("nngp", "ntk") if get is None else get
        requested = (names,) if isinstance(names, str) else tuple(names)
        if not set(requested) <= set(fns):
            raise ValueError(
                f"empirical_kernel_fn: get must name 'nngp' and/or 'ntk', got {get!r}."
            )
        values = [fns[name](x1, x2, params, **apply_fn_kwargs) for name in requested]
        if isinstance(names, str):
            return values[0]
        return namedtuple("EmpiricalKernel", requested)(*values)

    return kernel_fn


def monte_carlo_kernel_fn(
    init_fn: Callable,
    apply_fn: Callable,
    key: jax.Array,
    n_samples: int | Iterable[int],
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int = DEFAULT_NTK_IMPLEMENTATION,
    **nt_options,
) -> Callable:
    """`nt.monte_carlo_kernel_fn` built on :func:`empirical_kernel_fn`.

    Averages `n_samples` empirical kernels over parameter draws of `init_fn`
    (draw `i` uses `jax.random.fold_in(key, i)`). With an iterable `n_samples`,
    the returned function yields the running average at each requested count.
    """
    one_draw = empirical_kernel_fn(
        apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, **nt_options
    )
    if batch_size or device_count not in (-1, 0, 1):
        one_draw = nt.batch(one_draw, batch_size, device_count, store_on_device)

    def draws(x1, x2, get, **apply_fn_kwargs) -> Iterator[tuple[int, Any]]:
        total, count = None, 0
        while True:
            _, params = init_fn(jax.random.fold_in(key, count), x1.shape)
            k = one_draw(x1, x2, get, params, **apply_fn_kwargs)
            total = k if total is None else jax.tree_util.tree_map(jnp.add, total, k)
            count += 1
            yield count, jax.tree_util.tree_map(lambda t, c=count: t / c, total)

    if isinstance(n_samples, int):

        def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
            for count, mean in draws(x1, x2, get, **apply_fn_kwargs):
                if count == n_samples:
                    return mean

        return kernel_fn

    targets = sorted(set(n_samples))

    def kernel_fn_gen(x1, x2=None, get=None, **apply_fn_kwargs):
        wanted = iter(targets)
        target = next(wanted, None)
        for count, mean in draws(x1, x2, get, **apply_fn_kwargs):
            if target is None:
                return
            if count == target:
                yield mean
                target = next(wanted, None)

    return kernel_fn_gen
