"""A sweep result from synthetic draws: reports, plots and their tests
without running a sweep."""

from __future__ import annotations

import numpy as np

from nt_frozen.validation.statistics import ArchitectureResult, compare


def synthetic_sweep_result(
    name: str = "toy", offset: float = 0.0
) -> ArchitectureResult:
    """A sweep result from synthetic draws, for reports without a sweep.

    Draws `K + noise / sqrt(n)` at widths 256, 1024, 4096 (8 each, seed 0)
    around `K = I + 0.5` (3 x 3), scored against `K - offset`: PASS for
    `offset=0`, FAIL for an offset well above the noise (e.g. 0.3).

    Returns:
      A :class:`~nt_frozen.validation.ArchitectureResult` without controls.

    Example:
      >>> synthetic_sweep_result().frozen.verdict
      'PASS'
      >>> synthetic_sweep_result("wrong", offset=0.3).frozen.verdict
      'FAIL'
    """
    rng, k, widths = np.random.default_rng(0), np.eye(3) + 0.5, [256, 1024, 4096]
    draws = [k + rng.normal(size=(8, 3, 3)) / np.sqrt(n) for n in widths]
    comparison = compare(widths, draws, [k - offset] * 3)
    return ArchitectureResult(name, "synthetic draws", comparison, {}, 0.0)
