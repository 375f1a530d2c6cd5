"""Helpers for tests of partially trained networks: independent references
and every stax layer as a test case. No library module imports this package.

The shared reference networks live in :mod:`nt_frozen.networks`, the
dynamics' regression task in :mod:`nt_frozen.dynamics.tasks`, the synthetic
sweep result in :mod:`nt_frozen.validation.synthetic`; their names are
importable from here as well.

Constants:
  FREEZING_PATTERNS: see :mod:`nt_frozen.networks`.
  LAYER_CASES: every layer and combinator of `stax`, each after a trainable
    block (so that its incoming NTK is non-zero), as tuples `(id, block
    before, layer, input shape, has own parameters, kernel_fn kwargs)`; inputs
    from :func:`layer_inputs`. Built on first access (52 layers and NT's
    quadrature), not at import.

Example:
  >>> from nt_frozen.testing import inputs, rel_err
  >>> x1, x2 = inputs((3,), n1=2, n2=2)
  >>> rel_err(x1, x1)
  0.0
"""

from __future__ import annotations

import importlib
from typing import Any

from nt_frozen.dynamics.tasks import gd_times, sphere_regression
from nt_frozen.networks import (
    FREEZING_PATTERNS,
    freeze_all_but,
    frozen_middle_mlp,
    three_layer_mlp,
)
from nt_frozen.testing.references import (
    assert_same_fields_but_ntk,
    fast_jit,
    inputs,
    is_kernel,
    linear_part_by_subtraction,
    rel_err,
    relu_arccos,
)
from nt_frozen.validation.synthetic import synthetic_sweep_result

__all__ = [
    "FREEZING_PATTERNS",
    "LAYER_CASES",
    "assert_same_fields_but_ntk",
    "fast_jit",
    "freeze_all_but",
    "frozen_middle_mlp",
    "gd_times",
    "inputs",
    "is_kernel",
    "layer_inputs",
    "linear_part_by_subtraction",
    "rel_err",
    "relu_arccos",
    "sphere_regression",
    "synthetic_sweep_result",
    "three_layer_mlp",
]

_LAZY = {"LAYER_CASES", "layer_inputs"}


def __getattr__(name: str) -> Any:
    # The layer cases build 52 layers: only for the tests that use them.
    if name in _LAZY:
        return getattr(importlib.import_module("nt_frozen.testing.layer_cases"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
