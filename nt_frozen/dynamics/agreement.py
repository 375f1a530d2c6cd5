"""How well trained finite ensembles agree with the infinite-width
prediction, and the one-call comparison."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from nt_frozen._stax_utils import ArrayLike
from nt_frozen.checks import check_targets
from nt_frozen.dynamics.prediction import (
    AnalyticPrediction,
    analytic_prediction,
    linearized_members,
)
from nt_frozen.dynamics.schedule import check_times
from nt_frozen.dynamics.training import (
    EnsemblePredictions,
    check_key_and_members,
    train_ensemble,
)


class DynamicsAgreement(NamedTuple):
    """Ensemble vs analytic prediction; arrays have one entry per time.

    Errors are Frobenius norms over test points and outputs. Mean errors are
    relative to the analytic prediction's root second moment `sqrt(||mean||^2
    + sum(variance))` (nonzero even at `t = 0`, where the mean vanishes);
    variance errors relative to `||variance||`.

    - `mean_error`, `mean_se`: ensemble mean vs analytic mean, and the Monte
      Carlo standard error of the ensemble mean, `||std / sqrt(M)||`.
    - `variance_error`, `variance_se`: ensemble variance (ddof=1) vs analytic,
      and `sqrt(2 / (M - 1))`, the relative standard error of the sample
      variance of a Gaussian.
    - `paired_mean_error`, `paired_mean_se`: the same mean error estimated
      from `member - linearized member` (:func:`linearized_members`), whose
      initialization noise cancels: only finite-width effects remain.
    - `residual_rms`: root mean square over members of `member - linearized
      member`, the finite-width deviation of a single network, `O(width^-1/2)`.

    Example (the numbers of one time; :func:`compare_dynamics` computes them):
      >>> import numpy as np
      >>> one = lambda v: np.array([v])
      >>> a = DynamicsAgreement(ts=one(1.0), n_members=48, mean_error=one(0.02),
      ...     mean_se=one(0.01), variance_error=one(0.1), variance_se=0.21,
      ...     paired_mean_error=one(0.004), paired_mean_se=one(0.002),
      ...     residual_rms=one(0.02))
      >>> a.agrees(width=1024).tolist(), a.agrees(width=1024, k=0.1).tolist()
      ([True], [False])
    """

    ts: np.ndarray
    n_members: int
    mean_error: np.ndarray
    mean_se: np.ndarray
    variance_error: np.ndarray
    variance_se: float
    paired_mean_error: np.ndarray
    paired_mean_se: np.ndarray
    residual_rms: np.ndarray

    def tolerances(
        self, width: int, k: float = 4.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tolerances `k * (standard error + width^-1/2)` for `(mean_error,
        paired_mean_error, variance_error)`.

        `width^-1/2` allows for finite width: one network deviates from its
        infinite-width linearization by `O(width^-1/2)` (relative), and the
        ensemble's mean and variance by at most that.
        """
        finite_width = 1 / np.sqrt(width)
        return (
            k * (self.mean_se + finite_width),
            k * (self.paired_mean_se + finite_width),
            k * (self.variance_se + finite_width),
        )

    def agrees(self, width: int, k: float = 4.0) -> np.ndarray:
        """Per time: all three errors within :meth:`tolerances`."""
        mean_tol, paired_tol, variance_tol = self.tolerances(width, k)
        return (
            (self.mean_error <= mean_tol)
            & (self.paired_mean_error <= paired_tol)
            & (self.variance_error <= variance_tol)
        )


def dynamics_agreement(
    ensemble: EnsemblePredictions, prediction: AnalyticPrediction
) -> DynamicsAgreement:
    """Summarize how well a trained `ensemble` matches the analytic `prediction`.

    `ensemble` and `prediction` as :func:`compare_dynamics` returns them
    (its example shows the call; tests/dynamics/test_agreement.py the
    agreement of real ensembles, at width 1024). An ensemble needs at least
    two members:

    Example:
      >>> import numpy as np
      >>> one_member = EnsemblePredictions(np.array([1.0]), np.zeros((1, 1, 2, 1)),
      ...     None, np.zeros((1, 2, 1)), np.zeros((1, 4, 1)), None)
      >>> dynamics_agreement(one_member, None)
      Traceback (most recent call last):
      ...
      ValueError: dynamics_agreement needs at least 2 members.
    """
    test = np.asarray(ensemble.test, np.float64)
    n_members = test.shape[0]
    if n_members < 2:
        raise ValueError("dynamics_agreement needs at least 2 members.")
    mean_an = np.asarray(prediction.mean, np.float64)
    var_an = np.broadcast_to(
        np.asarray(prediction.variance, np.float64)[..., None], mean_an.shape
    )
    residual = test - np.asarray(linearized_members(ensemble, prediction), np.float64)

    def norm(a):  # Frobenius norm over test points and outputs, per time
        return np.sqrt(np.sum(a**2, axis=(-2, -1)))

    def se_of_mean(draws):
        return np.sqrt(draws.var(0, ddof=1).sum(axis=(-2, -1)) / n_members)

    scale = np.sqrt(norm(mean_an) ** 2 + var_an.sum(axis=(-2, -1)))
    return DynamicsAgreement(
        ts=prediction.ts,
        n_members=n_members,
        mean_error=norm(test.mean(0) - mean_an) / scale,
        mean_se=se_of_mean(test) / scale,
        variance_error=norm(test.var(0, ddof=1) - var_an) / norm(var_an),
        variance_se=float(np.sqrt(2 / (n_members - 1))),
        paired_mean_error=norm(residual.mean(0)) / scale,
        paired_mean_se=se_of_mean(residual) / scale,
        residual_rms=np.sqrt(np.mean(norm(residual) ** 2, axis=0)) / scale,
    )


def compare_dynamics(
    init_fn: Callable,
    apply_fn: Callable,
    kernel_fn: Callable,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    ts: Sequence[float],
    key: jax.Array,
    n_members: int,
    learning_rate: float = 1.0,
    **train_kwargs,
) -> tuple[EnsemblePredictions, AnalyticPrediction, DynamicsAgreement]:
    """:func:`analytic_prediction`, :func:`train_ensemble` (steps chosen from
    the analytic NTK) and :func:`dynamics_agreement` for one network.

    `train_kwargs` go to :func:`train_ensemble` (`step_fraction`, `inf_tol`,
    `inf_step_fraction`, `member_batch_size`, `return_train`, and `progress`:
    a bar over the gradient steps, on by default, shown from 2 s on).

    Example (tiny, to show the call; see tests/dynamics/ for real sizes):
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     Frozen(stax.Dense(16)), stax.Relu(), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
      >>> ens, p, agreement = compare_dynamics(
      ...     init_fn, apply_fn, kernel_fn, x, jnp.cos(x[:, :1]), x[:2], [1.0, 3.0],
      ...     jax.random.PRNGKey(1), n_members=4, progress=False)
      >>> ens.test.shape, p.mean.shape, agreement.mean_error.shape
      ((4, 2, 2, 1), (2, 2, 1), (2,))
      >>> linearized_members(ens, p).shape
      (4, 2, 2, 1)
    """
    # Before the analytic kernels: a target that does not fit the network
    # (e.g. broadcast over outputs) fails now, not after the expensive work.
    check_targets(init_fn, apply_fn, x_train, y_train, x_test, "compare_dynamics")
    check_times(ts, "compare_dynamics")
    check_key_and_members(key, n_members, "compare_dynamics")
    prediction = analytic_prediction(
        kernel_fn, x_train, y_train, x_test, ts, learning_rate
    )
    ensemble = train_ensemble(
        init_fn,
        apply_fn,
        x_train,
        y_train,
        x_test,
        ts,
        prediction.ntk_train_train,
        key,
        n_members,
        learning_rate=learning_rate,
        **train_kwargs,
    )
    return ensemble, prediction, dynamics_agreement(ensemble, prediction)
