"""Statistics for comparing finite-width (empirical) kernels with analytic ones.

A width-`n` network's empirical NTK `E_s` (draw `s` of the parameters)
fluctuates around the analytic NTK `K` with relative Frobenius error
`O(n^{-1/2})`, and its mean over draws carries a finite-width bias `O(1/n)`.
For `S` independent draws with mean `E` and element-wise standard error
`SE = std_s(E_s) / sqrt(S)`,

    E ||E - K||_F^2 = ||bias||_F^2 + ||SE||_F^2   (to leading order),

so the *agreement score* `||E - K||_F / sqrt(||SE||_F^2 + (c ||K||_F / n)^2)`
is O(1) for the right `K` and grows like `sqrt(n S)` for a wrong one.
"""

from __future__ import annotations

from typing import NamedTuple

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
    """`||estimate - reference||_F / ||reference||_F`, in float64."""
    estimate = np.asarray(estimate, np.float64)
    reference = np.asarray(reference, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero reference: inf/NaN
        return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


class Agreement(NamedTuple):
    """How well `S` empirical kernel draws agree with an analytic kernel."""

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
