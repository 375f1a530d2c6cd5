"""Every notebook in notebooks/ runs top to bottom in its small mode.

The notebooks run in a fresh ipykernel on this interpreter (see
`notebooks/execute.py`: no installed kernelspec is needed or used) with
`NT_FROZEN_NOTEBOOK_SMALL=1`. A cell that raises fails the test; the executed
outputs are discarded, the committed files are never rewritten.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import nbformat  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "nt_frozen_notebooks_execute", NOTEBOOK_DIR / "execute.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "width_convergence.ipynb",
    }


def test_kernel_is_this_interpreter(tmp_path, monkeypatch):
    """The kernel is this venv's Python, even when a `python3` kernelspec
    elsewhere names another interpreter, and it sees the small-mode variable."""
    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/nonexistent/python", "-m", "ipykernel_launcher"],
                "display_name": "decoy",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    probe = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import os, sys\n"
                "print(sys.executable)\n"
                "print(sys.prefix)\n"
                "print(os.environ.get('NT_FROZEN_NOTEBOOK_SMALL'))"
            )
        ]
    )
    path = tmp_path / "probe.ipynb"
    nbformat.write(probe, path)
    executed = runner.run_notebook(path, small=True, timeout=60)
    outputs = executed.cells[0].outputs
    lines = "".join(o.get("text", "") for o in outputs).split()
    assert Path(lines[0]).resolve() == Path(sys.executable).resolve()
    assert Path(lines[1]).resolve() == Path(sys.prefix).resolve()  # same venv
    assert lines[2] == "1"


def test_a_raising_cell_fails(tmp_path):
    broken = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    )
    path = tmp_path / "broken.ipynb"
    nbformat.write(broken, path)
    with pytest.raises(CellExecutionError, match="boom"):
        runner.run_notebook(path, small=True, timeout=60)


# Each notebook takes 10 s to minutes even in small mode (a kernel start,
# sweeps, training): they run with the slow tier (-m slow); the runner itself
# is tested above in the default run.
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path):
    before = path.read_bytes()
    executed = runner.run_notebook(path, small=True, timeout=CELL_TIMEOUT_S)
    assert path.read_bytes() == before  # outputs are not written back
    errors = [
        output
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
