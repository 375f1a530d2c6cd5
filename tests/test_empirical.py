"""The trainable-only empirical kernels (`nt_frozen.empirical`) against NT on
the same network with its frozen parameters behind a stop-gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nt_frozen
from nt_frozen import Frozen, nt, stax
from nt_frozen.testing import frozen_middle_mlp


def _cnn_frozen_middle():
    return stax.serial(
        stax.Conv(8, (2, 2), b_std=0.1),
        stax.Relu(),
        Frozen(stax.Conv(8, (2, 2))),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(2),
    )


@pytest.mark.parametrize("implementation", [1, 2, 3])
@pytest.mark.parametrize(
    "make, shape",
    [(frozen_middle_mlp, (4, 5)), (_cnn_frozen_middle, (3, 5, 5, 2))],
    ids=["mlp", "cnn"],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"trace_axes": ()},
        {"trace_axes": (), "diagonal_axes": (0,)},
        {"vmap_axes": 0},
    ],
    ids=["default", "no-trace", "diagonal", "vmap"],
)
def test_trainable_only_ntk_equals_nt(make, shape, implementation, options):
    init_fn, apply_fn, _ = make()
    x1 = jax.random.normal(jax.random.PRNGKey(0), shape)
    x2 = jax.random.normal(jax.random.PRNGKey(1), (2, *shape[1:]))
    if options.get("diagonal_axes"):
        x2 = None  # diagonal over the batch needs matching batches
    _, params = init_fn(jax.random.PRNGKey(2), shape)
    ours = nt_frozen.empirical_ntk_fn(
        apply_fn, implementation=implementation, **options
    )
    ref = nt.empirical_ntk_fn(apply_fn, implementation=implementation, **options)
    # Compiled: NT's op-by-op dispatch compiles each operation on its own.
    a, b = jax.jit(lambda *args: (ours(*args), ref(*args)))(x1, x2, params)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * float(jnp.abs(b).max()))


def test_empirical_kernel_fn_get_and_all_frozen():
    init_fn, apply_fn, _ = frozen_middle_mlp()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    _, params = init_fn(jax.random.PRNGKey(2), x.shape)
    ours = nt_frozen.empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
    ref = nt.empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
    np.testing.assert_allclose(ours.nngp, ref.nngp, rtol=1e-6)
    np.testing.assert_allclose(ours.ntk, ref.ntk, rtol=2e-5)
    assert nt_frozen.empirical_kernel_fn(apply_fn)(x, None, "nngp", params).shape == (
        4,
        4,
    )
    with pytest.raises(ValueError, match="is not a kernel name here"):
        nt_frozen.empirical_kernel_fn(apply_fn)(x, None, "cov1", params)
    all_frozen = Frozen(frozen_middle_mlp())
    _, p = all_frozen[0](jax.random.PRNGKey(0), x.shape)
    zero = nt_frozen.empirical_ntk_fn(all_frozen[1])(x, None, p)
    np.testing.assert_array_equal(zero, 0.0)
    assert zero.shape == (4, 4)


def test_monte_carlo_kernel_fn_matches_average_of_draws():
    init_fn, apply_fn, _ = frozen_middle_mlp(64)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    key = jax.random.PRNGKey(5)
    mc = nt_frozen.monte_carlo_kernel_fn(init_fn, apply_fn, key, 3)(x, None, "ntk")
    draws = [
        nt.empirical_ntk_fn(apply_fn)(
            x, None, init_fn(jax.random.fold_in(key, i), x.shape)[1]
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(mc, sum(draws) / 3, rtol=1e-5)
    gen = nt_frozen.monte_carlo_kernel_fn(init_fn, apply_fn, key, [1, 3])
    first, third = list(gen(x, None, "ntk"))
    np.testing.assert_allclose(first, draws[0], rtol=1e-5)
    np.testing.assert_allclose(third, mc, rtol=1e-6)
