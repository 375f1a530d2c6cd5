"""Training dynamics with frozen layers: finite-width ensembles vs `nt.predict`.

Under gradient descent on MSE a wide network stays close to its linearization,
so the mean and covariance of its test predictions over random initializations
follow from the NNGP and the (frozen) NTK through
`nt.predict.gradient_descent_mse_ensemble`. This module trains ensembles of
finite networks with frozen layers, asks `nt.predict` for the same times, and
summarizes how well the two agree.

Time convention, as in `nt.predict.gradient_descent_mse[_ensemble]`: the loss
is `L = ||f(X) - Y||^2 / (2 N)` with `N = y_train.size`, and time `t` with
learning rate `lr` is the absolute time `tau = lr * t` of the gradient flow
`d theta / d tau = -grad L`. In function space (linearized) that is

    df(X)/dtau = -Theta (f(X) - Y) / N,
    f_tau(X) - Y = exp(-Theta tau / N) (f_0(X) - Y),

with `Theta` the train-train NTK. One gradient-descent step of size `eta` on
`L` advances `tau` by `eta`, so `t` counts steps at learning rate `lr` in the
continuous limit.

Modules: :mod:`~nt_frozen.dynamics.schedule` (the step schedule),
:mod:`~nt_frozen.dynamics.training` (finite ensembles),
:mod:`~nt_frozen.dynamics.prediction` (`nt.predict` with the analytic kernels)
and :mod:`~nt_frozen.dynamics.agreement` (their comparison).

Constants (defaults of :func:`gd_schedule` and :func:`train_ensemble`):
`STEP_FRACTION` (0.02), the largest `eta * lambda_max / N` of one step;
`INF_TOL` (1e-3), the residual fraction at which the `t = inf` run stops;
`INF_WARMUP` (4), the `lambda_max tau / N` reached in small steps
before the `t = inf` run's large ones.
"""

from nt_frozen.dynamics.agreement import (
    DynamicsAgreement,
    compare_dynamics,
    dynamics_agreement,
)
from nt_frozen.dynamics.prediction import (
    AnalyticPrediction,
    analytic_prediction,
    linearized_members,
)
from nt_frozen.dynamics.schedule import (
    INF_TOL,
    INF_WARMUP,
    STEP_FRACTION,
    GDSchedule,
    gd_schedule,
    stiffest_mode_time,
)
from nt_frozen.dynamics.training import EnsemblePredictions, train_ensemble

__all__ = [
    "INF_TOL",
    "INF_WARMUP",
    "STEP_FRACTION",
    "AnalyticPrediction",
    "DynamicsAgreement",
    "EnsemblePredictions",
    "GDSchedule",
    "analytic_prediction",
    "compare_dynamics",
    "dynamics_agreement",
    "gd_schedule",
    "linearized_members",
    "stiffest_mode_time",
    "train_ensemble",
]
