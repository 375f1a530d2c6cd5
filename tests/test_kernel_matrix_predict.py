"""`kernel_regression` on kernel_matrix outputs against `nt.predict` (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, kernel_matrix, nt, stax
from nt_frozen.kernels import kernel_regression


@pytest.fixture
def problem(x64):
    _, _, kernel_fn = stax.serial(
        stax.Dense(16), stax.Relu(), Frozen(stax.Dense(16)), stax.Relu(), stax.Dense(1)
    )
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x_train = jax.random.normal(key1, (12, 4))
    x_test = jax.random.normal(key2, (5, 4))
    y = jax.random.normal(key3, (12, 2))
    get = ("nngp", "ntk")
    train = kernel_matrix(kernel_fn, x_train, None, get, block_size=5, progress=False)
    test = kernel_matrix(kernel_fn, x_test, x_train, get, block_size=5, progress=False)
    test_test = kernel_fn(x_test, None, "nngp")
    return kernel_fn, x_train, x_test, y, train, test, test_test


@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("t", [None, 3.0, np.array([0.5, 40.0])])
def test_mean_and_covariance_match_nt_predict(problem, get, t):
    kernel_fn, x_train, x_test, y, train, test, test_test = problem
    mean, cov = kernel_regression(
        train, test, y, t, get=get, nngp_test_test=test_test, diag_reg=1e-3
    )
    predict = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y, diag_reg=1e-3
    )
    want = predict(None if t is None else jnp.asarray(t), x_test, get, compute_cov=True)
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, want.mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(cov, want.covariance, rtol=1e-6, atol=1e-8)
    _, var = kernel_regression(
        train, test, y, t, get=get, nngp_test_test=np.diagonal(test_test), diag_reg=1e-3
    )
    np.testing.assert_allclose(var, np.diagonal(cov, axis1=-2, axis2=-1))


def test_shape_mismatches_are_named(problem):
    _, _, _, y, train, test, test_test = problem
    with pytest.raises(ValueError, match="k_test_train has shape"):
        kernel_regression(train.ntk, test.ntk.T, y)
    with pytest.raises(ValueError, match="y_train"):
        kernel_regression(train.ntk, test.ntk, y[:5])
    with pytest.raises(ValueError, match="nngp_test_test has shape"):
        kernel_regression(train, test, y, nngp_test_test=test_test[:2])
    with pytest.raises(ValueError, match="has no 'nngp'"):
        kernel_regression(train.ntk, test.ntk, y, nngp_test_test=test_test)
