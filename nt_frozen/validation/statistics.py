"""Statistics for comparing finite-width (empirical) kernels with analytic ones.

A width-`n` network's empirical NTK `E_s` (draw `s` of the parameters)
fluctuates around the analytic NTK `K` with relative Frobenius error
`O(n^{-1/2})`, and its mean over draws carries a finite-width bias `O(1/n)`.
For `S` independent draws with mean `E` and element-wise standard error
`SE = std_s(E_s) / sqrt(S)`,

    E ||E - K||_F^2 = ||bias||_F^2 + ||SE||_F^2   (to leading order),

so the *agreement score* `||E - K||_F / sqrt(||SE||_F^2 + (c ||K||_F / n)^2)`
is O(1) for the right `K` and grows like `sqrt(n S)` for a wrong one.

The sweep's verdict (:func:`compare`): the root mean square `e(n)` of the
single-draw errors must fall like `n^{-1/2}`, its log-log slope fitted with a
bootstrap standard error over draws, and the score at the largest width must
be at most `MAX_SCORE`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

# Allowance for the O(1/n) finite-width bias of the mean, relative to ||K||_F.
BIAS_CONSTANT = 2.0
# Score above which the analytic kernel is rejected. The SE is estimated from
# the same S draws, so for a single effective degree of freedom the score of
# the right kernel is a Student t with S - 1 degrees of freedom: it exceeds 4
# with probability about 5e-3 at S = 8 (1e-3 at S = 16; 6e-5 for a normal).
# More effective degrees of freedom (kernel entries) make the tail lighter.
MAX_SCORE = 4.0


def relative_frobenius_error(estimate, reference) -> float:
    """`||estimate - reference||_F / ||reference||_F`, in float64.

    Example:
      >>> relative_frobenius_error([[3.0, 4.0]], [[0.0, 4.0]])
      0.75
    """
    estimate = np.asarray(estimate, np.float64)
    reference = np.asarray(reference, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero reference: inf/NaN
        return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


class Agreement(NamedTuple):
    """How well `S` empirical kernel draws agree with an analytic kernel.

    Example:
      >>> import numpy as np
      >>> k = np.eye(2) + 0.5
      >>> draws = k + np.random.default_rng(0).normal(size=(64, 2, 2)) / 32
      >>> agreement(draws, k, width=1024).agrees
      True
    """

    single_draw_errors: np.ndarray  # relative Frobenius error of each draw
    mean_error: float  # relative Frobenius error of the Monte Carlo mean
    standard_error: float  # ||SE||_F / ||K||_F: the Monte Carlo noise level
    score: float  # see the module docstring; <= MAX_SCORE means agreement

    @property
    def agrees(self) -> bool:
        return self.score <= MAX_SCORE


def agreement(draws, analytic, width: int) -> Agreement:
    """Compare empirical kernel `draws` (shape `(S, ...)`) with `analytic`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> k = np.eye(3) + 0.5
      >>> draws = k + rng.normal(scale=0.05, size=(16, 3, 3))
      >>> agreement(draws, k, width=1024).agrees
      True
      >>> agreement(draws, 2.25 * k, width=1024).agrees
      False
    """
    draws = np.asarray(draws, np.float64)
    analytic = np.asarray(analytic, np.float64)
    if draws.shape[1:] != analytic.shape:
        raise ValueError(
            f"draws must have shape (S, *analytic.shape) = (S, {analytic.shape}), "
            f"got {draws.shape}."
        )
    n_draws = draws.shape[0]
    if n_draws < 2:
        raise ValueError("agreement needs at least 2 draws to estimate the noise.")
    norm = np.linalg.norm(analytic)
    mean = draws.mean(0)
    se = np.linalg.norm(draws.std(0, ddof=1)) / np.sqrt(n_draws)
    bias = BIAS_CONSTANT * norm / width
    return Agreement(
        single_draw_errors=np.array(
            [relative_frobenius_error(d, analytic) for d in draws]
        ),
        mean_error=relative_frobenius_error(mean, analytic),
        standard_error=float(se / norm),
        score=float(np.linalg.norm(mean - analytic) / np.hypot(se, bias)),
    )


# A slope further than this many bootstrap standard errors from -1/2 fails.
SLOPE_SIGMAS = 3.0
# Floor on the slope tolerance: with few widths and draws the bootstrap can
# understate the spread, and the O(1/n) bias bends e(n) slightly below -1/2.
MIN_SLOPE_TOLERANCE = 0.1
BOOTSTRAP_RESAMPLES = 400


@dataclasses.dataclass
class Comparison:
    """The sweep's draws scored against one analytic kernel.

    Example:
      >>> import numpy as np
      >>> rng, k, widths = np.random.default_rng(0), np.eye(3) + 0.5, [256, 1024, 4096]
      >>> draws = [k + rng.normal(size=(8, 3, 3)) / np.sqrt(n) for n in widths]
      >>> result = compare(widths, draws, [k] * 3)
      >>> result.verdict, round(result.slope, 1)
      ('PASS', -0.5)
    """

    widths: list[int]
    single_draw_errors: list[list[float]]  # per width, per draw
    mean_errors: list[float]
    standard_errors: list[float]
    scores: list[float]
    slope: float
    slope_se: float
    verdict: str  # "PASS" or "FAIL"
    reasons: list[str]

    @property
    def rms_errors(self) -> list[float]:
        return [float(np.sqrt(np.mean(np.square(e)))) for e in self.single_draw_errors]

    def to_json(self) -> dict[str, Any]:
        per_width = []
        for i, width in enumerate(self.widths):
            errors = np.asarray(self.single_draw_errors[i])
            per_width.append(
                {
                    "width": width,
                    "single_draw_errors": errors.tolist(),
                    "single_draw_median": float(np.median(errors)),
                    "single_draw_q25": float(np.quantile(errors, 0.25)),
                    "single_draw_q75": float(np.quantile(errors, 0.75)),
                    "single_draw_rms": self.rms_errors[i],
                    "mean_error": self.mean_errors[i],
                    "standard_error": self.standard_errors[i],
                    "score": self.scores[i],
                }
            )
        return {
            "per_width": per_width,
            "slope": self.slope,
            "slope_se": self.slope_se,
            "verdict": self.verdict,
            "reasons": self.reasons,
        }


@dataclasses.dataclass
class ArchitectureResult:
    """One architecture's sweep: the frozen kernel's comparison, each
    control's (or why it was not scored), and the time it took.

    Example:
      >>> import numpy as np
      >>> from nt_frozen.validation import ArchitectureResult, compare
      >>> rng, k, widths = np.random.default_rng(0), np.eye(3) + 0.5, [256, 1024, 4096]
      >>> draws = [k + rng.normal(size=(8, 3, 3)) / np.sqrt(n) for n in widths]
      >>> result = ArchitectureResult(
      ...     "toy", "synthetic", compare(widths, draws, [k] * 3), {}, 0.0)
      >>> result.ok  # PASS, and no control was scored
      True
    """

    name: str
    description: str
    frozen: Comparison
    controls: dict[str, Comparison | str]  # a string: why it was not scored
    seconds: float
    # What the widths count: "width" (hidden units) or "channels" (a CNN).
    width_label: str = "width"

    @property
    def ok(self) -> bool:
        """The frozen kernel passes and every scored control fails."""
        controls_fail = all(
            c.verdict == "FAIL"
            for c in self.controls.values()
            if isinstance(c, Comparison)
        )
        return self.frozen.verdict == "PASS" and controls_fail

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "width_label": self.width_label,
            "frozen": self.frozen.to_json(),
            "controls": {
                k: v.to_json() if isinstance(v, Comparison) else {"skipped": v}
                for k, v in self.controls.items()
            },
            "ok": self.ok,
            "seconds": self.seconds,
        }


def log_log_slope(widths: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of `log(errors)` against `log(widths)` (NaN if an
    error is zero: no slope is defined, and `compare` FAILs on it).

    Example:
      >>> round(log_log_slope([100, 400, 1600], [0.1, 0.05, 0.025]), 6)
      -0.5
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(errors)
    if not np.isfinite(logs).all():
        return float("nan")
    return float(np.polyfit(np.log(widths), logs, 1)[0])


def _bootstrap_slope_se(widths, errors_per_width, rng) -> float:
    """Standard error of the RMS-error slope, resampling draws at each width
    (every resample at once: one least-squares slope per row)."""

    def resampled_rms(e: np.ndarray) -> np.ndarray:  # (resamples,)
        picks = rng.integers(0, len(e), (BOOTSTRAP_RESAMPLES, len(e)))
        return np.sqrt(np.mean(np.square(e[picks]), axis=-1))

    rms = np.stack([resampled_rms(np.asarray(e)) for e in errors_per_width], -1)
    log_w = np.log(np.asarray(widths, np.float64))
    centred = log_w - log_w.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rms = np.log(rms)
        slopes = (log_rms - log_rms.mean(-1, keepdims=True)) @ centred
    # A zero error has no slope, as in `log_log_slope`: the SE is then NaN.
    slopes = np.where(
        np.isfinite(log_rms).all(-1), slopes / (centred @ centred), np.nan
    )
    # The bootstrap's plug-in variance is low by (S-1)/S for S draws.
    n_draws = min(len(e) for e in errors_per_width)
    return float(np.std(slopes, ddof=1) * np.sqrt(n_draws / (n_draws - 1)))


def compare(
    widths: Sequence[int],
    draws: Sequence[np.ndarray],
    analytic: Sequence[np.ndarray],
    seed: int = 0,
) -> Comparison:
    """Score empirical `draws[i]` (shape `(S, ...)`) against `analytic[i]`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> k = np.eye(4) + 0.5
      >>> widths = [256, 1024, 4096]
      >>> draws = [k + rng.normal(size=(8, 4, 4)) / np.sqrt(n) for n in widths]
      >>> compare(widths, draws, [k] * 3).verdict
      'PASS'
      >>> compare(widths, draws, [1.1 * k] * 3).verdict
      'FAIL'
    """
    if len(widths) < 2:
        raise ValueError("the sweep needs at least 2 widths to fit a slope.")
    undefined = _undefined_reason(widths, draws, analytic)
    if undefined is not None:  # no statistic is defined: FAIL, and say why
        nan = float("nan")
        return Comparison(
            widths=list(widths),
            single_draw_errors=[[nan] * len(ds) for ds in draws],
            mean_errors=[nan] * len(widths),
            standard_errors=[nan] * len(widths),
            scores=[nan] * len(widths),
            slope=nan,
            slope_se=nan,
            verdict="FAIL",
            reasons=[undefined],
        )
    errors = [
        np.array([relative_frobenius_error(d, a) for d in ds])
        for ds, a in zip(draws, analytic)
    ]
    stats = [agreement(ds, a, n) for ds, a, n in zip(draws, analytic, widths)]
    rms = [np.sqrt(np.mean(np.square(e))) for e in errors]
    slope = log_log_slope(widths, rms)
    slope_se = _bootstrap_slope_se(widths, errors, np.random.default_rng(seed))
    tolerance = max(SLOPE_SIGMAS * slope_se, MIN_SLOPE_TOLERANCE)
    reasons = []
    if abs(slope + 0.5) > tolerance:
        reasons.append(
            f"slope {slope:+.2f} is not -1/2 within {tolerance:.2f} "
            f"(max({SLOPE_SIGMAS:g} bootstrap SE, {MIN_SLOPE_TOLERANCE:g}))"
        )
    if not np.isfinite([slope, slope_se, *rms, *(st.score for st in stats)]).all():
        reasons.append("a statistic is NaN or infinite, so nothing was checked")
    if stats[-1].score > MAX_SCORE:
        reasons.append(
            f"score {stats[-1].score:.1f} > {MAX_SCORE:g} at width {widths[-1]}: "
            f"the mean of the draws is off by more than its noise and bias allow"
        )
    return Comparison(
        widths=list(widths),
        single_draw_errors=[e.tolist() for e in errors],
        mean_errors=[s.mean_error for s in stats],
        standard_errors=[s.standard_error for s in stats],
        scores=[s.score for s in stats],
        slope=slope,
        slope_se=slope_se,
        verdict="FAIL" if reasons else "PASS",
        reasons=reasons,
    )


def _undefined_reason(widths, draws, analytic) -> str | None:
    """Why relative errors against `analytic` are undefined, if they are."""
    for width, ds, a in zip(widths, draws, analytic):
        if not np.isfinite(a).all():
            return f"the analytic kernel at width {width} has NaN or inf entries"
        if not np.any(a):
            return (
                f"the analytic kernel at width {width} is zero, so relative "
                f"errors are undefined (is every layer frozen? Then the NTK is 0 "
                f"at any width, and there is nothing to validate)"
            )
        if not np.isfinite(ds).all():
            return f"the empirical draws at width {width} have NaN or inf entries"
    return None
