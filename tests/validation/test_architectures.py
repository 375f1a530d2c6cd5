"""The built-in sweep architectures: rated ones pass and their own controls
(unrated, swapped rates) fail."""

from __future__ import annotations

import pytest

from nt_frozen.validation import ARCHITECTURES, run_validation


@pytest.mark.parametrize(
    "name", ["mlp-rates", pytest.param("residual-rates", marks=pytest.mark.slow)]
)
def test_validate_sweeps_rated_architectures_and_rejects_their_controls(name):
    for result in run_validation([ARCHITECTURES[name]], widths=[128, 512], samples=6):
        assert result.frozen.verdict == "PASS", (result.name, result.frozen.reasons)
        assert set(result.controls) == {"unrated", "swapped_rates"}
        for name, control in result.controls.items():
            assert control.verdict == "FAIL", (result.name, name)
        assert result.ok
