"""`Frozen(layer)`: a stax layer whose own parameters are not trained.

The analytic NTK of every neural-tangents layer is affine in the incoming NTK,

    ntk_out = L_nngp(ntk_in) + P(nngp_in),

where `P` is the layer's own parameter term. A frozen layer keeps the linear
part `L(ntk_in)`, which is the directional derivative of `ntk_out` with
respect to `ntk_in` in the direction `ntk_in`. `jax.jvp` computes it in one
pass, exactly: no subtraction of `P` (hence no cancellation), and under `jit`
the unused primal NTK is dead code, so the cost is that of the unfrozen layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax

from nt_frozen._compat import get_req, layer, requires
from nt_frozen._stax_utils import (
    Layer,
    check_layer,
    checked_get_kernel_fn,
    function_hint,
    looks_like_layer,
    ntk_map,
    ntks,
    replace_ntks,
    zeros_like_ntks,
)
from nt_frozen.markers import freeze_params, frozen_values

_FROZEN_MARK = "_nt_frozen_layer"


def check_wrapped_layer(candidate: Any, where: str) -> Layer:
    """The one layer a wrapper (`where`: `Frozen`, `LearningRate`) is given."""
    if callable(candidate) and not isinstance(candidate, (tuple, list)):
        name = getattr(candidate, "__name__", repr(candidate))
        call = where + ("({})" if where == "Frozen" else "({}, rate)")
        raise TypeError(
            f"{where} expects a layer triple (init_fn, apply_fn, kernel_fn), got "
            f"the function {name!r}. {function_hint(candidate, call)}"
        )
    if (
        isinstance(candidate, (tuple, list))
        and candidate
        and all(looks_like_layer(item) for item in candidate)
    ):
        raise TypeError(
            f"{where} takes one layer, got a {type(candidate).__name__} of "
            f"{len(candidate)} layer{'s' * (len(candidate) > 1)}. "
            f"Wrap their composition: {where}(stax.serial(...)) (or wrap each "
            f"one, e.g. [{where}(layer) for layer in layers])."
        )
    return check_layer(candidate, f"{where} expects a layer triple")


def ntk_jvp(kernel_fn: Callable, k: Any, *, at_zero: bool = False, **kwargs):
    """One `jax.jvp` of `ntks -> kernel_fn(k with ntks)` along `k`'s own NTKs.

    The map is affine in the NTKs, so the tangent is the linear part
    `L(ntk_in)` wherever it is taken. The primal point is `k`'s NTKs, or zero
    with `at_zero` (then the primal NTK is the own-parameter term `P`).
    Returns `(out, linear)`: `out` is `kernel_fn` at the primal point (a
    `Kernel` tree shaped like `kernel_fn(k)`), `linear` the list of `L(ntk_in)`
    per `Kernel` of `out`; or `None` when `k` carries no NTK (`get='nngp'`).
    `k` is a `Kernel` or a pytree of them (layers with several inputs).
    """
    ntks_in = ntks(k)
    if any(ntk is None for ntk in ntks_in):
        return None
    point = zeros_like_ntks(k) if at_zero else ntks_in
    _, linear, out = jax.jvp(
        ntk_map(kernel_fn, k, **kwargs), (point,), (ntks_in,), has_aux=True
    )
    return out, linear


def propagate_ntk_linearly(kernel_fn: Callable, k: Any, **kwargs) -> Any:
    """Apply `kernel_fn` to `k` keeping only the part of the NTK linear in `k.ntk`.

    `k` is a `Kernel` or a pytree of them (layers with several inputs). Every
    field of the result but `ntk` is exactly `kernel_fn(k)`'s.

    Example:
      >>> import jax.numpy as jnp
      >>> from nt_frozen import stax
      >>> k = stax.Dense(4)[2](jnp.ones((2, 3)), None)  # ntk == nngp here
      >>> out = propagate_ntk_linearly(stax.Dense(4, W_std=2.0, b_std=1.0)[2], k)
      >>> bool(jnp.allclose(out.ntk, 4.0 * k.ntk))  # W_std^2 times, no own term
      True
    """
    pair = ntk_jvp(kernel_fn, k, **kwargs)
    if pair is None:  # NTK not requested (get='nngp').
        return kernel_fn(k, **kwargs)
    # The map is affine in the NTKs, so its derivative along the NTKs themselves
    # is the linear part L(ntk_in), with the own-parameter term P dropped.
    out, linear = pair
    return replace_ntks(out, linear)


@layer
def _frozen(init_fn: Callable, apply_fn: Callable, kernel_fn: Callable) -> Layer:
    def frozen_init_fn(rng, input_shape):
        output_shape, params = init_fn(rng, input_shape)
        return output_shape, freeze_params(params)

    def frozen_apply_fn(params, inputs, **kwargs):
        # Values reach the output; gradients to them are cut, also when a user
        # differentiates with respect to `params` explicitly.
        return apply_fn(lax.stop_gradient(frozen_values(params)), inputs, **kwargs)

    @requires(**get_req(kernel_fn, {}))
    def frozen_kernel_fn(k, **kwargs):
        return propagate_ntk_linearly(kernel_fn, k, **kwargs)

    return frozen_init_fn, frozen_apply_fn, frozen_kernel_fn


def is_frozen_layer(candidate: Any) -> bool:
    """True if `candidate` is a layer triple returned by :func:`Frozen`.

    Example:
      >>> from nt_frozen import Frozen, stax
      >>> is_frozen_layer(Frozen(stax.Dense(1))), is_frozen_layer(stax.Dense(1))
      (True, False)
    """
    return (
        isinstance(candidate, Sequence)
        and len(candidate) == 3
        and getattr(candidate[2], _FROZEN_MARK, False)
    )


def Frozen(layer: Layer) -> Layer:  # noqa: N802 (stax layers are CamelCase)
    """Freeze a stax layer: same outputs and NNGP, no training of its parameters.

    Args:
      layer: any `(init_fn, apply_fn, kernel_fn)` triple of `neural_tangents.stax`
        (a single layer or a combinator such as `serial`, `parallel`, `repeat`).

    Returns:
      A layer triple with

      - `init_fn`: the same parameters (same values for the same key), wrapped
        in :class:`~nt_frozen.FrozenParams`;
      - `apply_fn`: the same outputs; gradients flow to the inputs, and are
        exactly zero for the layer's own parameters;
      - `kernel_fn`: every `Kernel` field as `layer` computes it, except the
        NTK, which keeps only the contribution of trainable layers upstream
        propagated through this one (its own parameter term is dropped).

    Example:
      >>> import jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> x = jnp.linspace(-1., 1., 12).reshape(4, 3)
      >>> _, _, kernel_fn = stax.serial(
      ...     stax.Dense(512), stax.Relu(), Frozen(stax.Dense(512, W_std=1.5)))
      >>> k = kernel_fn(x, None, ("nngp", "ntk"))
      >>> k.ntk.shape
      (4, 4)
    """
    init_fn, apply_fn, kernel_fn = check_wrapped_layer(layer, "Frozen")
    if getattr(kernel_fn, _FROZEN_MARK, False):
        return layer  # Freezing is idempotent.
    f_init, f_apply, f_kernel = _frozen(init_fn, apply_fn, kernel_fn)
    # `get` checked before any work (NT's bare KeyError comes after it).
    frozen = (
        f_init,
        f_apply,
        checked_get_kernel_fn(
            f_kernel, f"Frozen({getattr(kernel_fn, '__name__', 'layer')})"
        ),
    )
    # Name after the wrapped layer (`Frozen(Dense)`), for labels and tracebacks.
    for fn, original in zip(frozen, (init_fn, apply_fn, kernel_fn)):
        fn.__name__ = f"Frozen({getattr(original, '__name__', 'layer')})"
    setattr(frozen[2], _FROZEN_MARK, True)
    return frozen
