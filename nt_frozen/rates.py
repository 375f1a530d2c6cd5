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
gradient-descent updates per leaf. Those live below this layer
(:mod:`nt_frozen.markers`, :mod:`nt_frozen.params`, :mod:`nt_frozen.rate_scaling`,
none of which needs neural-tangents) and are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nt_frozen._compat import get_req, layer, requires
from nt_frozen._stax_utils import (
    Layer,
    checked_get_kernel_fn,
    has_leaves,
    ntks,
    replace_ntks,
)
from nt_frozen.frozen import Frozen, check_wrapped_layer, ntk_jvp

# The parameter side of rates, re-exported: `nt_frozen.rates` is one place to
# import everything about rates from.
from nt_frozen.markers import (  # noqa: F401
    FrozenParams,
    PyTree,
    RatedParams,
    _check_rate,
    check_rate_fits,
    check_rates_fit,
    is_frozen,
    is_rated,
    rate_params,
    rated_values,
)
from nt_frozen.params import learning_rates  # noqa: F401
from nt_frozen.rate_scaling import (  # noqa: F401
    ScaleByLearningRates,
    apply_learning_rates,
    scale_by_learning_rates,
    scale_jacobian,
    weight_jacobians,
)


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
