"""Predictions of an infinite ensemble from stored kernels, without recomputing them.

Gradient descent on the MSE loss `|f(x_train) - y|^2 / (2 |y|)` from outputs drawn
from the NNGP `K` moves the outputs with the trained kernel `Θ` (the NTK, or the
NNGP when only the readout trains). With `A(t) = Θ^{-1} (I - exp(-η t Θ / |y|))`
(NT's `nt.predict` convention, `A(∞) = Θ^{-1}`):

    mean(t) = Θ_*x A y
    cov(t)  = K_** - Θ_*x A K_x* - K_*x A Θ_x* + Θ_*x A K_xx A Θ_x*

All in float64 on the host (NumPy/SciPy `eigh`): kernels of a data set live in
host memory or on disk, and float64 needs no global JAX setting.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _field(kernel: Any, name: str, where: str, plain: bool = True) -> np.ndarray:
    """`kernel.name` (a namedtuple, or a dict), or `kernel` itself if `plain`."""
    if isinstance(kernel, dict):
        value = kernel.get(name)
    elif hasattr(kernel, "_fields"):
        value = getattr(kernel, name, None)
    else:
        value = kernel if plain else None
    if value is None:
        raise ValueError(
            f"kernel_regression: {where} has no {name!r}; compute it with "
            f"kernel_matrix(..., get=('nngp', 'ntk'))."
        )
    return np.asarray(value, dtype=np.float64)


def _solver(theta: np.ndarray, diag_reg: float, t, learning_rate: float, size: int):
    """`rhs -> A(t) rhs` for each time in `t` (None: infinity)."""
    n = len(theta)
    theta = theta + diag_reg * np.trace(theta) / n * np.eye(n)
    evals, evecs = np.linalg.eigh(theta)
    evals = np.maximum(evals, 0.0)  # PSD up to rounding, as NT thresholds
    with np.errstate(divide="ignore", invalid="ignore"):
        if t is None:
            factor = np.where(evals > 0, 1.0 / evals, 0.0)
        else:
            scaled = np.asarray(t, np.float64)[..., None] * learning_rate / size
            factor = np.where(
                evals > 0, -np.expm1(-evals * scaled) / evals, scaled * (evals == 0)
            )

    def apply(rhs: np.ndarray) -> np.ndarray:
        # rhs: (n, k) -> (..., n, k)
        return np.einsum("ij,...j,jk->...ik", evecs, factor, evecs.T @ rhs)

    return apply


def kernel_regression(
    k_train_train,
    k_test_train,
    y_train,
    t=None,
    *,
    get: str = "ntk",
    nngp_test_test=None,
    diag_reg: float = 0.0,
    learning_rate: float = 1.0,
):
    """Mean (and covariance) of an infinite ensemble trained by gradient descent.

    Args:
      k_train_train: the `(N, N)` kernel on the training inputs: an array (the
        trained kernel) or what `kernel_matrix(..., get=('nngp', 'ntk'))`
        returns (memory maps of a store included).
      k_test_train: the `(M, N)` kernel between test and training inputs, same
        kind.
      y_train: targets `(N,)` or `(N, K)`.
      t: training time(s) (scalar or array; NT's `nt.predict` units), or None
        for `t = ∞`.
      get: the trained kernel: "ntk" (all layers train) or "nngp" (only the
        readout trains: the Bayesian posterior at `t = ∞`).
      nngp_test_test: the NNGP on the test inputs, `(M, M)` or its diagonal
        `(M,)`; given, also returns the covariance (or variance) of the test
        outputs, which needs the NNGP train-train and test-train kernels.
      diag_reg: ridge added as `diag_reg * trace(Θ) / N` (NT's default scaling).
      learning_rate: NT's learning rate (scales `t`).

    Returns:
      The mean `(..., M, K)` (t's shape first), and with `nngp_test_test` the
      covariance `(..., M, M)` or variance `(..., M)`, in float64.

    Example:
      >>> import numpy as np
      >>> k = np.array([[2.0, 1.0], [1.0, 2.0]])
      >>> kernel_regression(k, np.array([[1.0, 0.0]]), np.array([1.0, -1.0]))
      array([1.])
    """
    theta = _field(k_train_train, get, "k_train_train")
    theta_star = _field(k_test_train, get, "k_test_train")
    y = np.asarray(y_train, np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    n = len(theta)
    if theta.shape != (n, n) or y2.ndim != 2 or len(y2) != n:
        raise ValueError(
            f"kernel_regression: k_train_train has shape {theta.shape} and y_train "
            f"{y.shape}; pass an (N, N) kernel and (N,) or (N, K) targets."
        )
    if theta_star.ndim != 2 or theta_star.shape[1] != n:
        raise ValueError(
            f"kernel_regression: k_test_train has shape {theta_star.shape}; pass "
            f"(M, {n}) (test rows, training columns), e.g. kernel_matrix(kernel_fn, "
            f"x_test, x_train)."
        )
    solve = _solver(theta, diag_reg, t, learning_rate, y.size)
    mean = theta_star @ solve(y2)
    if y.ndim == 1:
        mean = mean[..., 0]
    if nngp_test_test is None:
        return mean
    k_xx = _field(k_train_train, "nngp", "k_train_train", get == "nngp")
    if get == "nngp":  # the ridge is part of the trained (and prior) kernel, as in NT
        k_xx = k_xx + diag_reg * np.trace(k_xx) / n * np.eye(n)
    k_sx = _field(k_test_train, "nngp", "k_test_train", get == "nngp")
    k_ss = np.asarray(nngp_test_test, np.float64)
    m = len(theta_star)
    if k_ss.shape not in ((m,), (m, m)):
        raise ValueError(
            f"kernel_regression: nngp_test_test has shape {k_ss.shape}; pass "
            f"({m}, {m}) or its diagonal ({m},)."
        )
    a_ks = solve(k_sx.T)  # A K_x*: (..., N, M)
    a_ts = solve(theta_star.T)  # A Θ_x*
    cross = theta_star @ a_ks  # Θ_*x A K_x*
    cov = -cross - np.swapaxes(cross, -1, -2)
    cov = cov + np.swapaxes(a_ts, -1, -2) @ k_xx @ a_ts
    if k_ss.ndim == 1:
        return mean, k_ss + np.diagonal(cov, axis1=-2, axis2=-1)
    return mean, k_ss + cov
