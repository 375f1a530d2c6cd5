"""Execute the research notebooks top to bottom, in place.

    python notebooks/execute.py           # full run: refreshes the committed outputs
    python notebooks/execute.py --small   # CI's small mode (NT_FROZEN_NOTEBOOK_SMALL=1)
    python notebooks/execute.py quickstart.ipynb --no-write

The kernel is always this interpreter (`sys.executable`) running ipykernel, so
the notebooks see the same environment as the caller (e.g. the project's
virtual environment), whatever kernelspecs are or are not installed.
`tests/test_notebooks.py` uses :func:`run_notebook` with `small=True`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NOTEBOOKS = Path(__file__).resolve().parent
SMALL_ENV = "NT_FROZEN_NOTEBOOK_SMALL"


class ThisPythonKernelSpecs(KernelSpecManager):
    """Every kernel name resolves to ipykernel on this very interpreter.

    A clean virtual environment may have no kernelspec at all, or a user-wide
    `python3` kernelspec may point at another Python; neither matters here.
    """

    def get_kernel_spec(self, kernel_name):
        return self.kernel_spec_class(
            argv=[sys.executable, "-m", "ipykernel_launcher"]
            + ["-f", "{connection_file}"],
            display_name=f"Python 3 ({sys.prefix})",
            language="python",
        )


class ThisPythonKernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _this_python_specs(self):
        return ThisPythonKernelSpecs(parent=self)


def run_notebook(path: Path, small: bool, timeout: int = 600) -> nbformat.NotebookNode:
    """Execute the notebook at `path` and return it; the file is not changed.

    A cell that raises raises `nbclient.exceptions.CellExecutionError`. The
    kernel runs in the notebook's directory with `NT_FROZEN_NOTEBOOK_SMALL`
    set to "1" when `small`, removed otherwise.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != SMALL_ENV}
    if small:
        env[SMALL_ENV] = "1"
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    client.execute(env=env)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="notebooks to run (default: every notebooks/*.ipynb)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"small mode, as in CI ({SMALL_ENV}=1)",
    )
    parser.add_argument(
        "--timeout", type=int, default=1800, help="seconds per cell (default 1800)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="execute only; keep the files as is"
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        notebook = run_notebook(path, args.small, args.timeout)
        if not args.no_write:
            nbformat.write(notebook, path)
        print(f"{path}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
