"""Every public export is documented with a runnable example.

Functions and classes exported by `nt_frozen`, `nt_frozen.dynamics`,
`nt_frozen.validation` and `nt_frozen.testing` need a docstring with a `>>>`
example (run by `--doctest-modules`); constants and modules, which carry no
docstring of their own, must be described in their package's docstring.
"""

from __future__ import annotations

import inspect

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


# What `help(nt_frozen)` must point a new user at, one line each.
ENTRY_POINTS = (
    "Frozen", "LearningRate", "empirical_ntk_fn", "empirical_kernel_fn",
    "monte_carlo_kernel_fn", "ntk_decomposition", "empirical_ntk_decomposition",
    "split", "merge", "labels", "freeze_like", "check_params", "learning_rates",
    "scale_by_learning_rates", "compare_dynamics", "train_ensemble",
)  # fmt: skip


def test_package_docstring_lists_the_entry_points():
    """`help(nt_frozen)` names each main entry point at a line's start, with a
    one-line description, and each is exported; and names the CLI."""
    doc = inspect.getdoc(nt_frozen) or ""
    described = {
        name.strip()
        for line in doc.splitlines()
        if ":" in line and not line.lstrip().startswith(">>>")
        for name in line.split(":", 1)[0].replace(",", "/").split("/")
    }
    missing = [n for n in ENTRY_POINTS if n not in described]
    assert not missing, f"help(nt_frozen) does not list {missing}"
    assert set(ENTRY_POINTS) <= set(nt_frozen.__all__)
    assert "nt-frozen validate" in doc


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
