"""Controls: wrong "frozen" kernels that the validation must reject."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from nt_frozen._compat import get_req, layer, requires
from nt_frozen._stax_utils import Layer


@layer
def IdentityGuess(wrapped: Layer) -> Layer:  # noqa: N802 (stax layers are CamelCase)
    """The wrong "frozen" rule: NNGP as `wrapped`, NTK passed through unchanged.

    A control for validation: it ignores the `W_std**2` factor of a frozen
    `Dense`/`Conv` and the derivative kernel of a frozen nonlinearity.

    Example:
      >>> import jax.numpy as jnp
      >>> from nt_frozen import stax
      >>> x = jnp.ones((2, 3))
      >>> k_in = stax.Dense(4)[2](x, None, "ntk")
      >>> guess = stax.serial(stax.Dense(4), IdentityGuess(stax.Dense(4, W_std=2.0)))
      >>> bool(jnp.allclose(guess[2](x, None, "ntk"), k_in))  # passed through unchanged
      True
    """
    init_fn, apply_fn, kernel_fn = wrapped

    @requires(**get_req(kernel_fn, {}))
    def guess_kernel_fn(k, **kwargs):
        out = kernel_fn(k, **kwargs)
        if k.ntk is None:
            return out
        if k.ntk.ndim == 0:  # NT's input kernel carries the NTK as a scalar 0.
            return out.replace(ntk=jnp.broadcast_to(k.ntk, out.ntk.shape))
        if out.ntk.shape != k.ntk.shape:
            raise ValueError(
                f"IdentityGuess({getattr(kernel_fn, '__name__', 'layer')}): the "
                f"layer maps NTK shape {k.ntk.shape} to {out.ntk.shape}, so "
                f"'unchanged' is undefined; apply the guess to its shape-preserving "
                f"layers with parameters instead."
            )
        return out.replace(ntk=k.ntk)

    return init_fn, apply_fn, guess_kernel_fn


def _unfrozen(layer: Layer) -> Layer:
    return layer


CONTROLS: dict[str, Callable[[Layer], Layer]] = {
    "unfrozen": _unfrozen,
    "identity_guess": IdentityGuess,
}
