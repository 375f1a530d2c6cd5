"""The sweep's report: atomic JSON, strict-JSON values and the table."""

from __future__ import annotations

import json
import math

import pytest

from nt_frozen.testing import synthetic_sweep_result
from nt_frozen.validation import (
    finite_or_null,
    format_table,
)
from nt_frozen.validation.report import write_json_atomic


def test_json_that_cannot_be_written_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "out.json", {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    with pytest.raises(TypeError):  # not serializable
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no leftover


def test_finite_or_null_makes_strict_json():
    value = {"slope": math.nan, "errors": [0.1, -math.inf, (1.0, math.inf)]}
    cleaned = finite_or_null(value)
    assert cleaned == {"slope": None, "errors": [0.1, None, [1.0, None]]}
    json.dumps(cleaned, allow_nan=False)  # raises on NaN or infinity


def test_table_has_one_row_per_verdict():
    results = [
        synthetic_sweep_result("good"),
        synthetic_sweep_result("bad", offset=0.3),
    ]
    rows = [line.split()[:2] for line in format_table(results).splitlines()]
    assert ["PASS", "good"] in rows and ["FAIL", "bad"] in rows
