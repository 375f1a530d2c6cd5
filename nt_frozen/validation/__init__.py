"""The validation sweep: analytic frozen NTK vs finite-width empirical NTKs.

For each architecture and width `n` the sweep draws `S` parameter sets of the
finite network, computes each draw's empirical NTK (trainable parameters only)
and compares it with the analytic NTK of the same frozen network:

- single-draw relative Frobenius errors, whose root mean square `e(n)` must
  fall like `n^{-1/2}` (central limit theorem over the hidden units); the
  log-log slope of `e(n)` is fitted with a bootstrap standard error over draws;
- the Monte Carlo mean's agreement score at the largest width
  (:func:`nt_frozen.validation.statistics.agreement`): O(1) for the right kernel.

An architecture PASSes when the slope is within `SLOPE_SIGMAS` bootstrap
standard errors of -1/2 and the score at the largest width is at most
`MAX_SCORE`. The same draws are also scored against two wrong kernels, which
must FAIL: the unfrozen network's NTK, and the "identity" guess (a frozen layer
passes the NTK through unchanged). For a wrong kernel the error levels off at
the kernels' distance, so the slope flattens and the score grows like
`sqrt(n S)`.

Modules: :mod:`~nt_frozen.validation.controls` (wrong kernels that must
FAIL), :mod:`~nt_frozen.validation.architectures` (the networks swept),
:mod:`~nt_frozen.validation.statistics` (errors, scores, slopes, verdicts),
:mod:`~nt_frozen.validation.sweep` (the draws, width by width),
:mod:`~nt_frozen.validation.checkpoint` (each width saved, and resumed under
the same settings only: :class:`CheckpointError` otherwise),
:mod:`~nt_frozen.validation.report` (table, JSON, figure),
:mod:`~nt_frozen.validation.synthetic` (a result without a sweep),
:mod:`~nt_frozen.validation.arguments` and :mod:`~nt_frozen.validation.cli`
(`nt-frozen validate`).

Registries: `ARCHITECTURES`, the built-in networks by name
(:class:`Architecture`); `CONTROLS`, the wrong kernels every architecture is
also scored against, by name (`"unfrozen"`, `"identity_guess"`).
"""

from nt_frozen._files import write_json_atomic
from nt_frozen.validation.architectures import (
    ARCHITECTURES,
    Architecture,
    load_architecture,
)
from nt_frozen.validation.checkpoint import CheckpointError, sweep_settings
from nt_frozen.validation.controls import CONTROLS, IdentityGuess
from nt_frozen.validation.report import (
    finite_or_null,
    format_table,
    plot_sweep,
    save_sweep_figure,
)
from nt_frozen.validation.statistics import (
    MAX_SCORE,
    Agreement,
    ArchitectureResult,
    Comparison,
    agreement,
    compare,
    log_log_slope,
    relative_frobenius_error,
)
from nt_frozen.validation.sweep import (
    analytic_ntks_by_width_fn,
    analytic_ntks_fn,
    empirical_draws_fn,
    run_validation,
    sweep_architecture,
    width_kernels,
)

__all__ = [
    "CheckpointError",
    "ARCHITECTURES",
    "CONTROLS",
    "MAX_SCORE",
    "Agreement",
    "Architecture",
    "ArchitectureResult",
    "Comparison",
    "IdentityGuess",
    "agreement",
    "analytic_ntks_by_width_fn",
    "analytic_ntks_fn",
    "compare",
    "empirical_draws_fn",
    "finite_or_null",
    "format_table",
    "load_architecture",
    "log_log_slope",
    "plot_sweep",
    "relative_frobenius_error",
    "run_validation",
    "save_sweep_figure",
    "sweep_architecture",
    "sweep_settings",
    "width_kernels",
    "write_json_atomic",
]
