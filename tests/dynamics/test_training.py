"""Ensemble training: NT's time convention for an exactly linear model, and no
recompilation for new times or keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import empirical_ntk_fn, nt
from nt_frozen.dynamics import train_ensemble
from nt_frozen.testing import FREEZING_PATTERNS, sphere_regression, three_layer_mlp

CASES = FREEZING_PATTERNS
X_TRAIN, Y_TRAIN_3, X_TEST = sphere_regression()
Y_TRAIN = Y_TRAIN_3[:, :1]
N_TRAIN = len(X_TRAIN)
_mlp = three_layer_mlp


@pytest.mark.compat_matrix
def test_time_convention_is_nt_s_for_an_exactly_linear_model():
    """Only the readout trains, so each network is exactly linear in its
    trainable parameters with its empirical NTK: its trajectory must be NT's
    `gradient_descent_mse` with that kernel, at the same `t` and
    `learning_rate`, up to the discretization error (< step_fraction of the
    change). Three outputs, so that N = y_train.size = 30 differs from the 10
    training points: a loss summed instead of averaged, normalized by the
    number of points instead of y_train.size, or a learning rate not applied to
    `t`, would be off by a factor 30, 3 or 2."""
    outputs = Y_TRAIN_3.shape[1]
    init_fn, apply_fn, _ = _mlp(64, CASES["readout_only"], outputs=outputs)
    lr, step_fraction = 0.5, 0.01
    key = jax.random.PRNGKey(3)
    _, params = init_fn(jax.random.split(key, 2)[0], X_TRAIN.shape)
    # Outputs are independent given the features: the kernel is ntk (x) I.
    ntk = jax.jit(empirical_ntk_fn(apply_fn))(
        jnp.concatenate([X_TRAIN, X_TEST]), None, params
    )
    k_dd, k_td = ntk[:N_TRAIN, :N_TRAIN], ntk[N_TRAIN:, :N_TRAIN]
    lam_max = float(np.linalg.eigvalsh(k_dd)[-1])
    ts = [t * Y_TRAIN_3.size / (lam_max * lr) for t in (0.5, 3.0)] + [math.inf]
    ens = train_ensemble(
        init_fn,
        apply_fn,
        X_TRAIN,
        Y_TRAIN_3,
        X_TEST,
        ts,
        key,
        2,
        k_dd,
        learning_rate=lr,
        step_fraction=step_fraction,
        return_train=True,
    )
    member, f0_train, f0_test = ens.test[0], ens.train_0[0], ens.test_0[0]
    assert member.shape[-1] == outputs
    predict_fn = nt.predict.gradient_descent_mse(k_dd, Y_TRAIN_3, learning_rate=lr)

    def nt_at(t):
        return predict_fn(t, f0_train, f0_test, k_td)[1]

    expected = jnp.stack([nt_at(ts[0]), nt_at(ts[1]), nt_at(None)])
    change = np.linalg.norm(expected - f0_test, axis=(1, 2))
    error = np.linalg.norm(member - expected, axis=(1, 2))
    np.testing.assert_array_less(error, step_fraction * change)
    # The same check fails for a misread time scale: the learning rate (2, 1/2)
    # or N = the number of points instead of y_train.size (3, 1/3).
    for wrong in (2.0, 0.5, outputs, 1 / outputs):
        misread = nt_at(wrong * ts[1])
        assert np.linalg.norm(member[1] - misread) > 10 * step_fraction * change[1]
    # Converged: the training set is interpolated (member 0, whose kernel set
    # the schedule's slowest mode; member 1's kernel is another draw).
    np.testing.assert_allclose(ens.train[0, -1], Y_TRAIN_3, atol=5e-3)


def test_training_compiles_nothing_new_for_new_times_and_keys():
    init_fn, apply_fn, kernel_fn = _mlp(32, CASES["frozen_middle"])
    ntk = np.eye(N_TRAIN)
    compiles, recording = [], [False]

    def on_event(event, duration, **kwargs):
        if recording[0] and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for ts, seed in (([0.5, 1.0], 0), ([2.0, 7.0], 1)):
            recording[0] = seed == 1  # the second call: new times and key
            train_ensemble(
                init_fn,
                apply_fn,
                X_TRAIN,
                Y_TRAIN,
                X_TEST,
                ts,
                jax.random.PRNGKey(seed),
                3,
                ntk,
            )
    finally:
        recording[0] = False
    assert compiles == []
