"""The analytic prediction against float64 closed forms: at `t = inf` with only
the readout trainable, the mean is the kernel regression `K_tX K_XX^-1 Y`; and
each linearized member is `f_0(x) - K_xX K_XX^-1 (f_0(X) - Y)`."""

from __future__ import annotations

import math

import jax
import numpy as np

from nt_frozen.dynamics import analytic_prediction, linearized_members, train_ensemble
from nt_frozen.testing import (
    FREEZING_PATTERNS,
    rel_err,
    sphere_regression,
    three_layer_mlp,
)

X_TRAIN, Y_TRAIN_3, X_TEST = sphere_regression()
Y_TRAIN = Y_TRAIN_3[:, :1]


def _ntk_blocks(kernel_fn):
    x_all = np.concatenate([X_TRAIN, X_TEST])
    k = np.asarray(kernel_fn(x_all, None, "ntk"), np.float64)
    n = len(X_TRAIN)
    return k[:n, :n], k[n:, :n]


def test_converged_mean_is_kernel_regression_and_members_are_linearized():
    init_fn, apply_fn, kernel_fn = three_layer_mlp(
        64, FREEZING_PATTERNS["frozen_middle"]
    )
    prediction = analytic_prediction(kernel_fn, X_TRAIN, Y_TRAIN, X_TEST, [math.inf])
    k_xx, k_tx = _ntk_blocks(kernel_fn)
    y = np.asarray(Y_TRAIN, np.float64)
    want_mean = k_tx @ np.linalg.solve(k_xx, y)
    assert rel_err(prediction.mean[0], want_mean) < 1e-3
    # the prediction is not the initial (zero) mean: the check can fail
    assert rel_err(np.zeros_like(want_mean), want_mean) == 1.0

    ensemble = train_ensemble(
        init_fn,
        apply_fn,
        X_TRAIN,
        Y_TRAIN,
        X_TEST,
        [math.inf],
        prediction.ntk_train_train,
        jax.random.PRNGKey(1),
        2,
    )
    linearized = np.asarray(linearized_members(ensemble, prediction), np.float64)
    for m in range(2):
        f0_train = np.asarray(ensemble.train_0[m], np.float64)
        f0_test = np.asarray(ensemble.test_0[m], np.float64)
        want = f0_test - k_tx @ np.linalg.solve(k_xx, f0_train - y)
        assert rel_err(linearized[m, 0], want) < 1e-3
        assert rel_err(linearized[m, 0], want_mean) > 1e-2  # f_0 matters
