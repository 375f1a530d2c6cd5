"""Finite-width kernels that differentiate only the trainable parameters.

`nt.empirical_ntk_fn` on a network with frozen layers differentiates every
leaf, frozen ones included (their Jacobians are zero, but are still built:
memory proportional to frozen parameters x batch). The functions here have
NT's signatures and options, and close the frozen leaves over as constants
(:func:`nt_frozen.restrict.restrict`, or :mod:`nt_frozen.structured`), so
that NT differentiates the trainable leaves only: frozen leaves cost no
Jacobian at all.
"""

from __future__ import annotations

import functools
import operator
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from nt_frozen._compat import nt, nt_utils
from nt_frozen._stax_utils import EMPIRICAL_KERNELS, check_get
from nt_frozen.checks import check_apply
from nt_frozen.rates import check_rates_fit
from nt_frozen.restrict import restrict
from nt_frozen.structured import block_ntks

PyTree = Any


def _check_inputs(
    apply_fn: Callable, x1, x2, params: PyTree, where: str, apply_fn_kwargs: dict
) -> None:
    """What can be checked with `apply_fn` alone: `apply_fn(params, x)` traces.

    `nt_frozen.check_params(init_fn, params, x1.shape)` checks more (layers
    a `serial` network would silently ignore)."""
    if params is None:
        raise TypeError(f"{where}: params is None; pass the network's parameters.")
    check_rates_fit(params, where)
    kwargs1, kwargs2 = nt_utils.split_kwargs(apply_fn_kwargs, x1, x2)
    check_apply(apply_fn, params, x1, where, **kwargs1)
    if x2 is not None:
        check_apply(apply_fn, params, x2, where, **kwargs2)


@functools.cache
def _kernel_tuple(names: tuple[str, ...]) -> type:
    # One class per `get`: the running sums of `monte_carlo_kernel_fn` are
    # tree-mapped together, which needs equal pytree node types.
    return namedtuple("EmpiricalKernel", names)


def empirical_ntk_fn(
    apply_fn: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int | None = None,
    **nt_options,
) -> Callable:
    """`nt.empirical_ntk_fn` that differentiates only the trainable parameters.

    Same arguments as `nt.empirical_ntk_fn`; returns
    `ntk_fn(x1, x2, params, **apply_fn_kwargs)`. With `implementation=None`
    (default) the fastest exact path is chosen per call: structured
    contractions for `Dense`/`Conv`-like leaves, NT for the rest
    (:mod:`nt_frozen.structured` states the rules; `vmap_axes`, if given, is
    used for the NT part). An explicit `implementation` calls NT as asked.

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
    unchecked_ntk_fn = _unchecked_ntk_fn(
        apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, nt_options
    )

    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        _check_inputs(apply_fn, x1, x2, params, "empirical_ntk_fn", apply_fn_kwargs)
        return unchecked_ntk_fn(x1, x2, params, **apply_fn_kwargs)

    return ntk_fn


def _unchecked_ntk_fn(
    apply_fn: Callable,
    trace_axes,
    diagonal_axes,
    vmap_axes,
    implementation: int | None,
    nt_options: dict,
) -> Callable:
    """`empirical_ntk_fn` without its input checks (callers that checked)."""
    options = dict(
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        vmap_axes=vmap_axes,
        implementation=implementation,
        **nt_options,
    )

    def unchecked_ntk_fn(x1, x2, params, **apply_fn_kwargs):
        if implementation is None:
            every_leaf = range(len(jax.tree_util.tree_leaves(params)))
            return block_ntks(
                apply_fn,
                x1,
                x2,
                params,
                [every_leaf],
                trace_axes=trace_axes,
                diagonal_axes=diagonal_axes,
                vmap_axes=vmap_axes,
                nt_options=nt_options,
                **apply_fn_kwargs,
            )[0]
        # The trainable leaves only (rated: J scaled by sqrt(rate), so NT's
        # J J^T is the rated sum_b rate_b J_b J_b^T); frozen ones constant.
        view = restrict(apply_fn, params)
        if not view.leaves:  # everything frozen: the NTK is exactly 0
            shape = jax.eval_shape(
                lambda: nt.empirical_ntk_fn(apply_fn, **options)(
                    x1, x2, params, **apply_fn_kwargs
                )
            )
            return jnp.zeros(shape.shape, shape.dtype)
        fn = nt.empirical_ntk_fn(view.fn, **options)
        return fn(x1, x2, view.leaves, **apply_fn_kwargs)

    return unchecked_ntk_fn


def empirical_kernel_fn(
    apply_fn: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: int | None = None,
    **nt_options,
) -> Callable:
    """`nt.empirical_kernel_fn` whose NTK differentiates only trainable parameters.

    Returns `kernel_fn(x1, x2, get, params, **apply_fn_kwargs)`, like NT's.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, _ = stax.serial(Frozen(stax.Dense(8)), stax.Dense(1))
      >>> x = jnp.ones((2, 3))
      >>> _, params = init_fn(jax.random.PRNGKey(0), x.shape)
      >>> k = empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
      >>> h = Frozen(stax.Dense(8))[1](params[0], x)  # the readout's inputs
      >>> bool(jnp.allclose(k.ntk, h @ h.T / 8))  # the readout's J J^T only
      True
    """
    fns = {
        "nngp": nt.empirical_nngp_fn(apply_fn, trace_axes, diagonal_axes),
        "ntk": _unchecked_ntk_fn(
            apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, nt_options
        ),
    }

    def kernel_fn(x1, x2, get, params, **apply_fn_kwargs):
        where = "empirical_kernel_fn"
        requested = check_get(get, EMPIRICAL_KERNELS, where) or EMPIRICAL_KERNELS
        _check_inputs(apply_fn, x1, x2, params, where, apply_fn_kwargs)
        values = [fns[name](x1, x2, params, **apply_fn_kwargs) for name in requested]
        if isinstance(get, str):
            return values[0]
        return _kernel_tuple(requested)(*values)

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
    implementation: int | None = None,
    **nt_options,
) -> Callable:
    """`nt.monte_carlo_kernel_fn` built on :func:`empirical_kernel_fn`.

    Averages `n_samples` empirical kernels over parameter draws of `init_fn`
    (draw `i` uses `jax.random.fold_in(key, i)`). With an iterable `n_samples`,
    the returned function yields the running average at each requested count.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     stax.Dense(256), stax.Relu(), Frozen(stax.Dense(1)))
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
      >>> mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 8)
      >>> ntk = mc(x, None, "ntk")
      >>> float(jnp.linalg.norm(ntk - kernel_fn(x, None, "ntk"))
      ...       / jnp.linalg.norm(kernel_fn(x, None, "ntk"))) < 0.3
      True
    """
    counts = _sample_counts(n_samples)
    one_draw = empirical_kernel_fn(
        apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation, **nt_options
    )
    if batch_size or device_count not in (-1, 0, 1):
        one_draw = nt.batch(one_draw, batch_size, device_count, store_on_device)

    def draws(x1, x2, get, **apply_fn_kwargs) -> Iterator[tuple[int, Any]]:
        check_get(get, EMPIRICAL_KERNELS, "monte_carlo_kernel_fn")
        total, count = None, 0
        while True:
            _, params = init_fn(jax.random.fold_in(key, count), x1.shape)
            k = one_draw(x1, x2, get, params, **apply_fn_kwargs)
            total = k if total is None else jax.tree_util.tree_map(jnp.add, total, k)
            count += 1
            yield count, jax.tree_util.tree_map(lambda t, c=count: t / c, total)

    if isinstance(counts, int):

        def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
            for count, mean in draws(x1, x2, get, **apply_fn_kwargs):
                if count == counts:
                    return mean

        return kernel_fn

    targets = sorted(set(counts))

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


def _sample_counts(n_samples: Any) -> int | list[int]:
    """`n_samples` as a positive int or a non-empty list of them."""

    def positive(n: Any) -> int:
        try:
            if isinstance(n, bool):  # `True` is an int, but surely not meant
                raise TypeError
            count = operator.index(n)
        except TypeError:
            raise TypeError(
                f"monte_carlo_kernel_fn: n_samples must be a positive int or a "
                f"list of them, got {n_samples!r}."
            ) from None
        if count < 1:
            raise ValueError(
                f"monte_carlo_kernel_fn: n_samples must be positive (a number of "
                f"parameter draws), got {n_samples!r}."
            )
        return count

    if isinstance(n_samples, Iterable) and not isinstance(n_samples, str):
        counts = [positive(n) for n in n_samples]
        if not counts:
            raise ValueError("monte_carlo_kernel_fn: n_samples is empty.")
        return counts
    return positive(n_samples)
