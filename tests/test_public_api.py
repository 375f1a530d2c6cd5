"""Every public export is documented with a runnable example.

Functions and classes exported by `nt_frozen`, `nt_frozen.dynamics`,
`nt_frozen.validation` and `nt_frozen.testing` need a docstring with a `>>>`
example (run by `--doctest-modules`); constants and modules, which carry no
docstring of their own, must be described in their package's docstring.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import nt_frozen
import nt_frozen.dynamics
import nt_frozen.testing
import nt_frozen.validation

PACKAGES = (nt_frozen, nt_frozen.dynamics, nt_frozen.validation, nt_frozen.testing)
EXPORTS = [(package, name) for package in PACKAGES for name in package.__all__]


def test_every_package_lists_its_exports():
    for package in PACKAGES:
        assert package.__all__, package.__name__
        missing = [n for n in package.__all__ if not hasattr(package, n)]
        assert not missing, (package.__name__, missing)


@pytest.mark.parametrize(
    "package, name", EXPORTS, ids=[f"{p.__name__}.{n}" for p, n in EXPORTS]
)
def test_export_is_documented_with_an_example(package, name):
    obj = getattr(package, name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
        doc = inspect.getdoc(obj) or ""
        assert doc.strip(), f"{package.__name__}.{name} has no docstring"
        assert ">>>" in doc, f"{package.__name__}.{name}: docstring has no example"
    else:  # constants and modules: described where they are exported
        assert name in (package.__doc__ or ""), (
            f"{package.__name__}.{name} is not described in the package docstring"
        )


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("nt_frozen.validate", "nt_frozen.validation", "run_validation"),
        ("nt_frozen.convergence", "nt_frozen.validation.statistics", "agreement"),
        ("nt_frozen.plots", "nt_frozen.validation.report", "save_sweep_figure"),
        ("nt_frozen.cli", "nt_frozen.validation.cli", "main"),
    ],
)
def test_renamed_modules_still_import_with_a_deprecation_warning(old, new, name):
    """Run in a fresh interpreter: the warning is raised at the first import."""
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        f"assert getattr(old, {name!r}) is getattr(new, {name!r})\n"
        "messages = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
        f"assert any({new!r} in m for m in messages), messages\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
