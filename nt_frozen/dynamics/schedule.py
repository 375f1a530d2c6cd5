"""The gradient-descent schedule: step sizes that follow the gradient flow
of the MSE loss closely enough to compare with `nt.predict` at given times."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from nt_frozen._stax_utils import ArrayLike

# Largest fraction `eta * lambda_max / N` of one step on the stiffest mode of
# the flow (see `gd_schedule`): the discrete and continuous decay of any mode
# then differ by at most STEP_FRACTION / (2 e) < 0.4% of its initial residual.
STEP_FRACTION = 0.02
# The t = inf run stops when every mode of the residual has shrunk below
# INF_TOL of its value at the start of the run.
INF_TOL = 1e-3
# Before its large steps, the t = inf run follows the flow up to
# lambda_max * tau / N = INF_WARMUP (stiff modes down to e^-4 = 2%). Large steps
# on a large residual move a finite network away from the flow's limit
# (measured: first-layer-only MLP, width 512, 32 members, t = inf straight from
# initialization: paired mean error 0.088 with x_inf = 1, 0.058 with 0.05; after
# a warm-up to 4, 0.059 with x_inf = 1).
INF_WARMUP = 4.0


class GDSchedule(NamedTuple):
    """Gradient-descent segments that reach each requested time.

    Segment `k` runs `n_steps[k]` steps of size `step_sizes[k]` (absolute time
    per step); the network's outputs after the segments with `recorded[k]`
    are the predictions at `ts`, in order (the others are warm-up segments of
    a `t = inf` run).

    Example:
      >>> import numpy as np
      >>> from nt_frozen.dynamics import gd_schedule
      >>> s = gd_schedule([1.0, 2.0], np.eye(2), y_size=2)
      >>> float((s.n_steps * s.step_sizes).sum()), s.recorded.tolist()
      (2.0, [True, True])
    """

    ts: np.ndarray
    n_steps: np.ndarray
    step_sizes: np.ndarray
    recorded: np.ndarray


def check_times(ts: ArrayLike, name: str = "gd_schedule") -> np.ndarray:
    """`ts` as a 1-D float64 array, or a `ValueError` naming what is wrong:
    times are a scalar or 1-D, non-negative, non-decreasing (`inf` last).

    Example:
      >>> check_times([0.5, float("inf")]).tolist()
      [0.5, inf]
      >>> check_times(np.eye(2))
      Traceback (most recent call last):
      ...
      ValueError: gd_schedule: ts must be a scalar or 1-D sequence of times, ...
    """
    array = np.asarray(ts)
    if array.ndim > 1:
        raise ValueError(
            f"{name}: ts must be a scalar or 1-D sequence of times, got an array "
            f"of shape {array.shape} (is it the NTK? times come first, then "
            f"ntk_train_train)."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name}: ts must be numbers, got {array.dtype} {ts!r}.")
    times = array.astype(np.float64).reshape(-1)
    if not times.size:
        raise ValueError(f"{name}: ts is empty: ask for at least one time.")
    if np.any(np.isnan(times)) or np.any(times < 0) or np.any(times[1:] < times[:-1]):
        raise ValueError(
            f"{name}: ts must be non-negative and non-decreasing (inf only at "
            f"the end), got {times.tolist()}."
        )
    return times


def check_ntk_train_train(
    ntk_train_train: ArrayLike, n_train: int | None = None, name: str = "gd_schedule"
) -> np.ndarray:
    """The train-train NTK as a float64 `(n, n)` array, or a `ValueError`:
    square, finite, and `(n_train, n_train)` when `n_train` is given.

    Example:
      >>> check_ntk_train_train(np.eye(3), n_train=3).shape
      (3, 3)
      >>> check_ntk_train_train([0.5, 1.0])
      Traceback (most recent call last):
      ...
      ValueError: gd_schedule: ntk_train_train must be a square ... got shape (2,) ...
    """
    ntk = np.asarray(ntk_train_train)
    want = "(n_train, n_train)" if n_train is None else f"({n_train}, {n_train})"
    if ntk.ndim != 2 or ntk.shape[0] != ntk.shape[1] or ntk.shape[0] == 0:
        hint = (
            " (are they the times? times come first, then ntk_train_train)"
            if ntk.ndim <= 1
            else ""
        )
        raise ValueError(
            f"{name}: ntk_train_train must be a square {want} matrix, got shape "
            f"{ntk.shape}{hint}."
        )
    if n_train is not None and ntk.shape[0] != n_train:
        raise ValueError(
            f"{name}: ntk_train_train has shape {ntk.shape}, but there are "
            f"{n_train} training points: pass the {want} kernel of x_train "
            f"(e.g. kernel_fn(x_train, None, 'ntk'))."
        )
    if not np.issubdtype(ntk.dtype, np.number):
        raise ValueError(f"{name}: ntk_train_train must be numbers, got {ntk.dtype}.")
    ntk = ntk.astype(np.float64)
    if not np.isfinite(ntk).all():
        raise ValueError(f"{name}: ntk_train_train has NaN or infinite entries.")
    return ntk


def stiffest_mode_time(
    ntk_train_train: ArrayLike, y_size: int, learning_rate: float = 1.0
) -> float:
    """`N / (learning_rate * lambda_max)`: the time, in NT's units, over which
    the stiffest mode of the flow decays by `e`; a natural unit for `ts`.

    Example:
      >>> import numpy as np
      >>> stiffest_mode_time(np.diag([4.0, 1.0]), y_size=2)
      0.5
    """
    lam_max = float(np.linalg.eigvalsh(np.asarray(ntk_train_train, np.float64))[-1])
    return y_size / (learning_rate * lam_max)


def gd_schedule(
    ts: ArrayLike,
    ntk_train_train: ArrayLike,
    y_size: int,
    learning_rate: float = 1.0,
    step_fraction: float = STEP_FRACTION,
    inf_tol: float = INF_TOL,
    inf_step_fraction: float = 1.0,
    max_steps: int = 1_000_000,
) -> GDSchedule:
    """Steps of gradient descent that follow the flow up to each time in `ts`.

    For the linearized network one step of size `eta` multiplies the residual's
    component along an NTK eigenvector (eigenvalue `lam`) by `1 - x`, with
    `x = eta * lam / N`; the flow multiplies it by `exp(-x)`. After `n` steps
    the two differ by about `n x^2 / 2 * exp(-n x) <= x / (2 e)`, so bounding
    `x <= step_fraction` on the largest eigenvalue bounds the discretization
    error of every mode. Each segment uses the largest step within that bound
    that lands exactly on the requested time.

    `t = inf` is a long run with the larger step `eta = x_inf N / lambda_max`
    (`x_inf = inf_step_fraction <= 1`; stable for `x < 2`): every update of
    the linearized model lies in the span of the Jacobian's rows, so any
    stable step converges to the same limit as the flow. It first follows the
    flow up to `lambda_max tau / N = INF_WARMUP` (see there why), then runs
    until the slowest mode has shrunk below `inf_tol`: `(1 - x_inf lambda_min /
    lambda_max)^n <= inf_tol`.

    Args:
      ts: times in NT's units (non-decreasing; `inf` only at the end).
      ntk_train_train: an estimate of the train-train NTK (`(n, n)`, e.g. the
        analytic one); only its extreme eigenvalues are used.
      y_size: `N = y_train.size`, the loss normalization.
      learning_rate: NT's `learning_rate` (absolute time is `learning_rate * t`).
      step_fraction: bound on `eta * lambda_max / N` for finite times.
      inf_tol: residual reduction of the slowest mode that counts as `t = inf`.
      inf_step_fraction: `x_inf`, the step of the `t = inf` run.
      max_steps: refuse schedules longer than this (ill-conditioned NTK).

    Example:
      >>> import numpy as np
      >>> s = gd_schedule([1.0, 2.0, np.inf], np.diag([4.0, 1.0]), y_size=2)
      >>> s.n_steps.tolist(), s.step_sizes.round(4).tolist()
      ([100, 100, 0, 25], [0.01, 0.01, 0.0, 0.5])
      >>> s.recorded.tolist()
      [True, True, False, True]
    """
    ts = check_times(ts)
    ntk = check_ntk_train_train(ntk_train_train)
    if not (isinstance(y_size, (int, np.integer)) and y_size >= 1):
        raise ValueError(
            f"gd_schedule: y_size must be a positive integer (y_train.size), got "
            f"{y_size!r}."
        )
    if y_size % ntk.shape[0]:
        raise ValueError(
            f"gd_schedule: y_size={y_size} is not a multiple of the "
            f"{ntk.shape[0]} training points of ntk_train_train: pass "
            f"y_train.size, (n_train * outputs)."
        )
    eigs = np.linalg.eigvalsh(ntk)
    lam_max, lam_min = float(eigs[-1]), float(eigs[0])
    if not lam_max > 0:
        raise ValueError(
            "The train-train NTK is zero: no trainable parameter reaches the "
            "output, so training changes nothing."
        )
    eta_max = step_fraction * y_size / lam_max

    def flow(span):  # fine steps covering `span` of absolute time exactly
        n = max(math.ceil(span / eta_max - 1e-9), 0)
        return n, (span / n if n else 0.0)

    segments = []  # (n_steps, step_size, recorded)
    tau = 0.0  # absolute time reached so far
    for t in ts:
        if not np.isinf(t):
            segments.append((*flow(learning_rate * t - tau), True))
            tau = learning_rate * t
            continue
        if np.isinf(tau):  # already converged
            segments.append((0, 0.0, True))
            continue
        if not lam_min > 0:
            raise ValueError(
                "t = inf needs a positive definite train-train NTK (its smallest "
                f"eigenvalue is {lam_min:.3g}); use finite times."
            )
        segments.append((*flow(INF_WARMUP * y_size / lam_max - tau), False))
        # A large step multiplies a mode by 1 - x lam / lam_max, in
        # [0, 1 - x lam_min / lam_max] for x <= 1: the slowest mode bounds all.
        x = min(inf_step_fraction, 1.0)
        contraction = 1 - x * lam_min / lam_max
        n = (
            1
            if contraction <= 0
            else math.ceil(math.log(inf_tol) / math.log(contraction))
        )
        segments.append((n, x * y_size / lam_max, True))
        tau = math.inf
    n_steps, step_sizes, recorded = (np.asarray(v) for v in zip(*segments))
    if n_steps.sum() > max_steps:
        raise ValueError(
            f"The schedule needs {n_steps.sum()} steps (> max_steps={max_steps}); "
            f"the train-train NTK has condition number {lam_max / lam_min:.3g}. "
            "Use fewer or better separated training points, or finite times."
        )
    return GDSchedule(ts, n_steps.astype(np.int32), step_sizes, recorded.astype(bool))
