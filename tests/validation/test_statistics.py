"""The width-sweep verdict (`compare`): the n^-1/2 slope, and failure on NaN,
zero kernels and undefined statistics."""

from __future__ import annotations

from nt_frozen.validation import compare


def test_compare_rejects_a_wrong_rate():
    """Errors that fall like n^-1 (not n^-1/2) must not pass as the right rate."""
    import numpy as np

    rng = np.random.default_rng(1)
    k = np.eye(4) + 0.5
    widths = [64, 256, 1024, 4096]
    draws = [k + rng.normal(size=(16, 4, 4)) * 8 / n for n in widths]
    result = compare(widths, draws, [k] * 4)
    assert result.verdict == "FAIL" and "slope" in result.reasons[0]


def test_compare_fails_on_nan_and_zero_kernels():
    import numpy as np

    rng = np.random.default_rng(0)
    k = np.eye(4) + 0.5
    widths = [256, 1024, 4096]
    draws = [k + rng.normal(size=(8, 4, 4)) / np.sqrt(n) for n in widths]
    assert compare(widths, draws, [k] * 3).verdict == "PASS"  # the control
    nan_draws = [d.copy() for d in draws]
    nan_draws[1][3, 0, 0] = np.nan
    nan_kernel = [k, k, np.full_like(k, np.nan)]
    zero = [np.zeros_like(k)] * 3
    cases = {
        "empirical draws at width 1024 have NaN": compare(widths, nan_draws, [k] * 3),
        "analytic kernel at width 4096 has NaN": compare(widths, draws, nan_kernel),
        "analytic kernel at width 256 is zero": compare(widths, draws, zero),
        # finite inputs, undefined statistic: zero errors have no log-log slope
        "a statistic is NaN or infinite": compare(
            widths, [np.stack([k, k])] * 3, [k] * 3
        ),
    }
    for reason, case in cases.items():
        assert case.verdict == "FAIL" and reason in case.reasons[0], case.reasons
