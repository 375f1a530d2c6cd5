"""The sweep's report: atomic JSON, strict-JSON values and the table."""

from __future__ import annotations

import json
import math

import pytest

from nt_frozen._files import write_json_atomic
from nt_frozen.testing import synthetic_sweep_result
from nt_frozen.validation import (
    finite_or_null,
    format_table,
)


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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_json_gets_the_mode_a_plain_open_would_give(tmp_path, umask):
    """Not mkstemp's private 0600: 0666 less the umask, as for the PNG."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "out.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w"):  # the reference: a plain open
            pass
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert mode == 0o666 & ~umask


def test_table_says_what_its_numbers_are_and_counts_channels():
    import dataclasses

    from nt_frozen.validation.statistics import (
        MAX_SCORE,
        MIN_SLOPE_TOLERANCE,
        SLOPE_SIGMAS,
    )

    result = synthetic_sweep_result()
    text = " ".join(format_table([result]).split())  # the legend wraps
    assert "relative Frobenius errors ||K_emp - K||_F / ||K||_F" in text
    assert f"score <= {MAX_SCORE:g} at the largest width" in text
    assert (
        f"max({SLOPE_SIGMAS:g} SE, {MIN_SLOPE_TOLERANCE:g}) of the expected -0.50"
        in text
    )
    assert "score 0.7 at width 4096" in text

    cnn = dataclasses.replace(result, width_label="channels")
    lines = format_table([cnn]).splitlines()
    header = next(line for line in lines if "single draw: median" in line)
    assert header.split()[0] == "channels"
    assert " width" not in "\n".join(lines[lines.index(header) :])
    assert any("at channels 4096" in line for line in lines)
