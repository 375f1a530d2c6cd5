"""Shared pytest fixtures (helpers live in `nt_frozen.testing`), and the
settings of the test processes."""

from __future__ import annotations

import os

# Set before JAX starts its backends (this file is loaded before any test).
# The tests check values, and most of their time goes to compiling many small
# programs, mostly in LLVM's optimization passes: compile at level 1, as the
# sweep's CLI does (level 0 breaks the bit-equality of two programs of the same
# kernel on jax 0.4-0.6), without LLVM's expensive passes. A level the user
# set wins. Test processes run side by side (pytest-xdist): none may take most of
# an accelerator's memory up front.
_FAST_COMPILE = (
    "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64, restoring the global setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
