"""The controls of the sweep: wrong kernels that must fail."""

from __future__ import annotations

import pytest

from nt_frozen.validation import IdentityGuess


def test_identity_guess_is_undefined_across_shape_changes():
    import jax.numpy as jnp

    from nt_frozen import stax

    _, _, kernel_fn = stax.serial(stax.Dense(4), IdentityGuess(stax.AvgPool((2,))))
    with pytest.raises(ValueError, match="'unchanged' is undefined"):
        kernel_fn(jnp.ones((2, 4, 3)), None, "ntk")
