"""neural-tangents 0.6.5 on the installed JAX: imports without TensorFlow, and
the NT features nt_frozen relies on run and agree with each other."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, nt, stax


@pytest.mark.parametrize(
    "imports",
    [
        "import nt_frozen; import neural_tangents as nt; "
        "from neural_tangents import stax",
        "from nt_frozen import nt, stax, Frozen",
    ],
)
def test_imports_without_tensorflow(imports):
    check = "import sys\nassert 'tensorflow' not in sys.modules\nprint(nt.__version__)"
    code = f"{imports}\n{check}"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.6.5"


def test_experimental_explains_itself():
    with pytest.raises(ImportError, match="imports TensorFlow"):
        nt.experimental.empirical_ntk_fn_tf  # noqa: B018


def _conv_net():
    return stax.serial(
        stax.Conv(8, (3, 3), b_std=0.1),
        stax.Relu(),
        Frozen(stax.Conv(8, (2, 2), W_std=1.5)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1),
    )


def test_all_empirical_ntk_implementations_agree(capsys):
    init_fn, apply_fn, _ = _conv_net()
    x1 = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    results = {
        impl: nt.empirical_ntk_fn(apply_fn, implementation=impl)(x1, x2, params)
        for impl in (1, 2, 3, 0)  # 0 = AUTO picks among 1-3 by compiled FLOPs
    }
    for impl in (2, 3, 0):
        np.testing.assert_allclose(results[impl], results[1], rtol=2e-5, atol=1e-6)
    assert np.abs(results[1]).max() > 0


def test_empirical_kernel_fn_and_monte_carlo_run():
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(512, b_std=0.2),
        stax.Relu(),
        Frozen(stax.Dense(512, W_std=1.4)),
        stax.Relu(),
        stax.Dense(1),
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    k = nt.empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
    assert k.nngp.shape == k.ntk.shape == (4, 4)
    mc = nt.monte_carlo_kernel_fn(
        init_fn, apply_fn, jax.random.PRNGKey(3), n_samples=4
    )(x, None, "ntk")
    analytic = kernel_fn(x, None, "ntk")
    assert np.linalg.norm(mc - analytic) / np.linalg.norm(analytic) < 0.3


def test_predict_runs_with_frozen_kernel():
    _, _, kernel_fn = stax.serial(
        stax.Dense(8, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(8, W_std=1.3)),
        stax.Relu(),
        stax.Dense(1),
    )
    x_train = jnp.linspace(-1, 1, 8).reshape(4, 2)
    y_train = jnp.sin(x_train[:, :1])
    x_test = jnp.linspace(-0.5, 0.5, 6).reshape(3, 2)
    predict_fn = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, diag_reg=1e-4
    )
    mean, cov = predict_fn(t=None, x_test=x_test, get="ntk", compute_cov=True)
    assert mean.shape == (3, 1) and cov.shape == (3, 3)
    assert np.isfinite(mean).all() and np.isfinite(cov).all()


def test_gradient_descent_mse_under_jit():
    """A traced kernel (inside `jit`) and NT's concrete path give the same outputs.

    On current JAX, NT's `eval_context` leaked the traced kernel; nt_frozen runs
    NT's code without it for traced kernels only.
    """
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(256), stax.Relu(), Frozen(stax.Dense(256, W_std=1.5)), stax.Dense(1)
    )
    x_train = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    x_test = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    y_train = jnp.sin(x_train[:, :1])
    k_train = kernel_fn(x_train, None, "ntk")
    k_test_train = kernel_fn(x_test, x_train, "ntk")
    _, params = init_fn(jax.random.PRNGKey(2), x_train.shape)
    f0_train, f0_test = apply_fn(params, x_train), apply_fn(params, x_test)

    def predict(k, t):
        fn = nt.predict.gradient_descent_mse(k, y_train, diag_reg=1e-4)
        return fn(t, f0_train, f0_test, k_test_train)

    for t in (0.5, None):
        eager = predict(k_train, t)
        traced = jax.jit(predict, static_argnums=1)(k_train, t)
        for a, b in zip(eager, traced):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # NT's own pattern still works: built once eagerly, called under jit twice.
    fn = nt.predict.gradient_descent_mse(k_train, y_train, diag_reg=1e-4)
    jitted = jax.jit(lambda t: fn(t, f0_train, f0_test, k_test_train))
    for t in (0.5, 2.0):
        np.testing.assert_allclose(jitted(t)[1], predict(k_train, t)[1], rtol=2e-5)
