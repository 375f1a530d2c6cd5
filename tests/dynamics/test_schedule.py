"""The gradient-descent step schedule: lands on the requested times with
bounded steps, and refuses what it cannot do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nt_frozen.dynamics import INF_WARMUP, gd_schedule


def test_schedule_lands_on_requested_times_with_bounded_steps():
    ntk = np.array([[3.0, 1.0], [1.0, 2.0]])
    lam_min, lam_max = np.linalg.eigvalsh(ntk)
    ts = [0.3, 0.3, 1.7, math.inf, math.inf]
    s = gd_schedule(ts, ntk, y_size=2, learning_rate=0.5, step_fraction=0.05)
    # Three finite times, the t = inf run's warm-up and large steps, a repeat.
    assert s.recorded.tolist() == [True, True, True, False, True, True]
    tau = np.cumsum(s.n_steps * s.step_sizes)
    np.testing.assert_allclose(tau[:3], 0.5 * np.array(ts[:3]))
    np.testing.assert_allclose(tau[3], INF_WARMUP * 2 / lam_max)
    assert np.all(s.step_sizes[:4] * lam_max / 2 <= 0.05 + 1e-12)
    assert s.n_steps[1] == 0 and s.n_steps[5] == 0  # repeated times: no steps
    # The large steps shrink the slowest mode below inf_tol = 1e-3, no more.
    x_min, n = s.step_sizes[4] * lam_min / 2, s.n_steps[4]
    assert (1 - x_min) ** n <= 1e-3 < (1 - x_min) ** (n - 1)


@pytest.mark.parametrize(
    "ts, ntk, match",
    [
        ([], np.eye(2), "empty"),
        ([2.0, 1.0], np.eye(2), "non-decreasing"),
        ([-1.0], np.eye(2), "non-negative"),
        ([1.0], np.zeros((2, 2)), "NTK is zero"),
        ([math.inf], np.diag([1.0, 0.0]), "positive definite"),
        ([math.inf], np.diag([1.0, 1e-9]), "max_steps"),
    ],
)
def test_schedule_refuses_what_it_cannot_do(ts, ntk, match):
    with pytest.raises(ValueError, match=match):
        gd_schedule(ts, ntk, y_size=2)


def test_swapped_times_and_kernel_are_named_not_printed_as_times():
    ntk, ts = np.array([[3.0, 1.0], [1.0, 2.0]]), [0.5, 1.0]
    with pytest.raises(ValueError, match=r"ts must be a scalar or 1-D .*\(2, 2\).*NTK"):
        gd_schedule(ntk, ts, y_size=2)
    with pytest.raises(ValueError, match=r"ntk_train_train must be a square .*\(2,\)"):
        gd_schedule(ts, ts, y_size=2)


@pytest.mark.parametrize(
    "ntk, y_size, match",
    [
        (np.ones((2, 3)), 2, r"square .* got shape \(2, 3\)"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), 2, "NaN or infinite"),
        (np.eye(2), 3, "y_size=3 is not a multiple of the 2 training points"),
        (np.eye(2), 0, "y_size must be a positive integer"),
        (np.eye(2), 2.0, "y_size must be a positive integer"),
    ],
)
def test_schedule_checks_the_kernel_and_y_size(ntk, y_size, match):
    with pytest.raises(ValueError, match=match):
        gd_schedule([1.0], ntk, y_size=y_size)
