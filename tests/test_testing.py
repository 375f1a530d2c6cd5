"""The shared references of `nt_frozen.testing` against independent ones:
Monte Carlo for the arc-cosine kernels, closed forms for the linear part of a
Dense layer and for the regression task, plain evaluation for `fast_jit`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen import stax
from nt_frozen.testing import (
    FREEZING_PATTERNS,
    fast_jit,
    freeze_all_but,
    inputs,
    linear_part_by_subtraction,
    rel_err,
    relu_arccos,
    sphere_regression,
    three_layer_mlp,
)


def test_relu_arccos_matches_monte_carlo():
    gram = np.array([[2.0, 0.7, -0.4], [0.7, 1.0, 0.2], [-0.4, 0.2, 0.5]])
    u = np.random.default_rng(0).multivariate_normal(np.zeros(3), gram, 400_000)
    relu, step = np.maximum(u, 0.0), (u > 0).astype(np.float64)
    nngp, dot = relu_arccos(gram)
    np.testing.assert_allclose(nngp, relu.T @ relu / len(u), atol=5e-3)
    np.testing.assert_allclose(dot, step.T @ step / len(u), atol=5e-3)


def test_linear_part_of_a_dense_layer_is_w_std_squared_times_the_input_ntk(x64):
    x1, x2 = inputs((3,))
    k = stax.serial(stax.Dense(4, b_std=0.5), stax.Erf())[2](x1, x2)
    ntk = linear_part_by_subtraction(stax.Dense(4, W_std=1.7, b_std=0.3)[2], k)
    np.testing.assert_allclose(ntk, 1.7**2 * k.ntk, rtol=1e-12)
    assert rel_err(k.ntk, ntk) > 0.5


def test_rel_err_is_the_relative_frobenius_norm():
    assert rel_err([[3.0, 0.0]], [[0.0, 4.0]]) == 5.0 / 4.0


def test_fast_jit_equals_plain_evaluation():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    fn = lambda a: jnp.tanh(a) @ a.T  # noqa: E731
    np.testing.assert_allclose(fast_jit(fn, x), fn(x), rtol=1e-6)


def test_everything_frozen_has_zero_ntk():
    layers = [stax.Dense(8), stax.Relu(), stax.Dense(1)]
    x1, x2 = inputs((3,))
    ntk = stax.serial(*freeze_all_but(layers, keep=()))[2](x1, x2, "ntk")
    assert float(jnp.abs(ntk).max()) == 0.0


def test_sphere_regression_is_the_documented_task():
    x_train, y_train, x_test = sphere_regression()
    np.testing.assert_allclose(np.linalg.norm(x_test, axis=1), np.sqrt(8), rtol=1e-6)
    v0 = np.linspace(-1, 1, 8)
    np.testing.assert_allclose(y_train[:, 0], np.sin(x_train @ v0 / 2), rtol=1e-5)


def test_three_layer_mlp_freezes_the_named_layers():
    x1, x2 = inputs((8,))
    _, _, readout_only = three_layer_mlp(16, FREEZING_PATTERNS["readout_only"])
    k = readout_only(x1, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(k.ntk, k.nngp, rtol=1e-5)  # readout only: the NNGP
    _, _, full = three_layer_mlp(16)
    assert rel_err(full(x1, x2, "ntk"), k.nngp) > 0.05
