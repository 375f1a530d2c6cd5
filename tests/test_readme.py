"""README.md's Python code runs as written: every ```python block, in order,
in one namespace (as a reader pasting them into one session would), and the
pip recipe CI runs is the README's."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(first line number, code)` of every ```python block."""
    return [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S)
    ]


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n")]


def test_readme_python_blocks_run_in_order():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "README.md lost its Python examples"
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        # Padded so that a traceback names README.md's own line numbers.
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    assert "empirical" in namespace and "analytic" in namespace


def _ci_readme():
    spec = importlib.util.spec_from_file_location(
        "ci_readme", ROOT / ".ci" / "readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_reads_and_writes_between_markers():
    ci = _ci_readme()
    text = "a\n<!-- r:start -->\n```bash\npip x\n```\n<!-- r:end -->\nb\n"
    assert ci.block(text, "r") == "pip x\n"
    assert ci.replace(text, "r", "| t |\n") == (
        "a\n<!-- r:start -->\n| t |\n<!-- r:end -->\nb\n"
    )
    with pytest.raises(SystemExit, match="exactly one"):
        ci.block(text, "missing")


def test_readme_has_the_blocks_ci_uses():
    """`.ci/run` runs the pip recipe as README.md writes it and regenerates
    the tested-points table there."""
    ci = _ci_readme()
    text = README.read_text()
    recipe = ci.block(text, "pip-recipe")
    assert "pip install --no-deps neural-tangents==0.6.5" in recipe
    assert "tqdm" in recipe and "matplotlib" in recipe  # nt-frozen validate's
    # The recipe installs pyproject's dependencies (NT without its own).
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)
    declared = set(re.findall(r'^\s*"([^"]+)",', deps.group(1), re.M))
    installed = set(re.findall(r'"([^"]+)"', recipe))
    assert declared - {"neural-tangents==0.6.5"} <= installed, declared - installed
    i, j = ci._span(text, "ci-matrix")
    assert "| point | Python | JAX | tests | wall time |" in text[i:j]
