"""Analytic frozen NTK vs the Monte Carlo mean of finite-width empirical NTKs
(`nt.empirical_ntk_fn` on the frozen network's `apply_fn`), per architecture
family. The tolerance is the Monte Carlo standard error of the mean plus an
O(1/width) bias allowance (nt_frozen.validation.statistics); the "identity"
guess and the unfrozen NTK must fail the same check."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from nt_frozen import Frozen, nt, stax
from nt_frozen.validation.controls import IdentityGuess
from nt_frozen.validation.statistics import agreement

N_DRAWS = 8


def mlp(n, parameterization="ntk"):
    p = {"parameterization": parameterization}
    layers = [
        stax.Dense(n, W_std=1.2, b_std=0.3, **p),
        stax.Relu(),
        stax.Dense(n, W_std=1.5, b_std=0.4, **p),
        stax.Relu(),
        stax.Dense(1, W_std=1.5, b_std=0.2, **p),
    ]
    # In standard parameterization the readout's own term grows with width and
    # dominates the NTK, so freezing a hidden layer barely shows; freeze the
    # readout there.
    return layers, (8, 6), 2 if parameterization == "ntk" else 4


def cnn(n):
    return (
        [
            stax.Conv(n, (3, 3), padding="SAME", W_std=1.3, b_std=1.0),
            stax.Relu(),
            stax.Conv(n, (3, 3), padding="SAME", W_std=2.0, b_std=0.1),
            stax.AvgPool((2, 2)),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1, W_std=1.0),
        ],
        (6, 4, 4, 2),
        2,
    )


def residual(n):
    branch = stax.serial(stax.Relu(), stax.Dense(n, W_std=1.5, b_std=0.3))
    block = stax.serial(
        stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum()
    )
    return (
        [stax.Dense(n, W_std=1.2, b_std=0.2), block, stax.Relu(), stax.Dense(1)],
        (8, 6),
        1,
    )


def attention(n):
    return (
        [
            stax.Dense(n, W_std=1.2, b_std=0.2),
            stax.GlobalSelfAttention(n, n, n, n_heads=2, W_out_std=1.5, b_std=0.1),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (5, 4, 3),
        1,
    )


FAMILIES = {
    "mlp-ntk": (functools.partial(mlp, parameterization="ntk"), 1024, N_DRAWS),
    "mlp-standard": (
        functools.partial(mlp, parameterization="standard"),
        1024,
        N_DRAWS,
    ),
    "cnn": (cnn, 256, 24),
    "residual": (residual, 1024, N_DRAWS),
    "attention": (attention, 256, N_DRAWS),
}


def empirical_draws(layers, x, n_draws=N_DRAWS):
    init_fn, apply_fn, _ = stax.serial(*layers)
    ntk_fn = nt.empirical_ntk_fn(apply_fn, implementation=1, vmap_axes=0)

    @jax.jit
    def one(key):
        _, params = init_fn(key, x.shape)
        return ntk_fn(x, None, params)

    keys = jax.random.split(jax.random.PRNGKey(2024), n_draws)
    return jnp.stack([one(k) for k in keys])


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_analytic_matches_empirical(family):
    make, width, n_draws = FAMILIES[family]
    layers, x_shape, frozen_index = make(width)
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    frozen_layers = [
        Frozen(lyr) if i == frozen_index else lyr for i, lyr in enumerate(layers)
    ]

    draws = empirical_draws(frozen_layers, x, n_draws)
    analytic = stax.serial(*frozen_layers)[2](x, None, "ntk")
    result = agreement(draws, analytic, width)
    assert result.agrees, result

    # Power: a wrong formula at the frozen layer fails the same check.
    unfrozen = stax.serial(*layers)[2](x, None, "ntk")
    assert not agreement(draws, unfrozen, width).agrees

    pre, post = layers[:frozen_index], layers[frozen_index + 1 :]
    identity_guess = stax.serial(*pre, IdentityGuess(layers[frozen_index]), *post)[2](
        x, None, "ntk"
    )
    assert not agreement(draws, identity_guess, width).agrees

