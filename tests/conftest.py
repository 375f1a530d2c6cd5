"""Shared pytest fixtures (helpers live in `nt_frozen.testing`), and the
settings of the test processes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

# Set before JAX starts its backends (this file is loaded before any test, in
# pytest's main process first, whose environment the test workers inherit).
# The tests check values, and most of their time goes to compiling thousands of
# small programs, so they compile fast, without LLVM's expensive passes: with
# XLA's older CPU emitters at optimization level 1 where the installed XLA still
# has them (jaxlib 0.6-0.10), else at level 0 (level 1 on jaxlib 0.4-0.6). Each
# of the two halves the compile time of a typical test program; level 0 with
# the older emitters, or on jaxlib 0.4-0.6, breaks the bit-equality of two
# programs of the same kernel. The values are checked to the same tolerances. A
# level the user set wins. Test processes run side by side (pytest-xdist): none
# may take most of an accelerator's memory up front.
_OLDER_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _fast_compile_flags() -> str:
    fast = "--xla_llvm_disable_expensive_passes=true"
    if _xla_accepts(_OLDER_EMITTERS):
        return f"{fast} {_OLDER_EMITTERS} --xla_backend_optimization_level=1"
    jaxlib = tuple(int(p) for p in version("jaxlib").split(".")[:2])
    return f"{fast} --xla_backend_optimization_level={0 if jaxlib >= (0, 7) else 1}"


def _xla_accepts(flag: str) -> bool:
    """Whether the installed XLA knows `flag` (it aborts on unknown flags)."""
    probe = "import jax; jax.devices()"
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return run.returncode == 0


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    flags = f"{os.environ.get('XLA_FLAGS', '')} {_fast_compile_flags()}"
    os.environ["XLA_FLAGS"] = flags.strip()
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
