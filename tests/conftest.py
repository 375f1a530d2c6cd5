"""Shared pytest fixtures (helpers live in `nt_frozen.testing`)."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64, restoring the global setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# The default empirical path's tests (the structured path and everything
# built on it) run whole wherever `compat_matrix` runs: `.ci/run` selects
# `-m compat_matrix` on every Python of the matrix and the declared-minimum JAX.
DEFAULT_PATH_FILES = frozenset(
    {
        "test_structured.py",
        "test_structured_inputs.py",
        "test_empirical.py",
        "test_decomposition.py",
        "test_rates.py",
    }
)


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in DEFAULT_PATH_FILES:
            item.add_marker(pytest.mark.compat_matrix)
