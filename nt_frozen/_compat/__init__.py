"""The foundation: neural-tangents 0.6.5 on current JAX and SciPy.

neural-tangents (NT) 0.6.5 (March 2024, its last release) reads JAX names that
later JAX releases moved or removed, relies on JAX and SciPy behaviour that
changed, and its ``experimental`` subpackage imports TensorFlow at import time.
Importing this module, once per process, does exactly this:

1. Reads NT's version from the package metadata, without importing NT, and
   raises ``ImportError`` naming the supported version unless it is
   ``SUPPORTED_NT_VERSIONS``; nothing is patched in that case.
2. Restores the JAX names NT imports at import time or reads from JAX
   objects, only where they are missing (each guarded by ``hasattr``):
   ``jax.core.{Jaxpr, JaxprEqn, Literal, Var, Primitive}``, the module
   ``jax.util`` (``safe_map``, ``safe_zip``), ``jax.interpreters.ad.zeros_like_p``
   and ``Primitive.map_primitive``.
3. Puts a stand-in for ``neural_tangents.experimental`` in ``sys.modules``
   whose attributes raise an ``ImportError`` that says what to use instead.
4. Imports NT and replaces, inside NT's modules only (JAX and SciPy are left
   untouched), these NT functions and module references:

   - ``neural_tangents._src.empirical.ad`` and ``.core``: views of
     ``jax.interpreters.ad`` and ``jax.core`` with the names NT's structured
     derivatives (``empirical_ntk_fn`` implementation 3) read at run time
     (``source_info_util``, ``reducing_transposes``, ``DShapedArray``, a
     ``config`` that skips NT's own ``jax_enable_checks`` assertion), where
     JAX has the ``FlatTree`` contract a ``linearize`` with the old one, and
     where some primitives transpose only into accumulators (``slice``,
     ``dynamic_slice``, ``gather``: every ``lax.scan``, so ``stax.repeat``) a
     ``get_primitive_transpose`` that gives those rules the old contract;
   - ``neural_tangents._src.empirical._get_flops``: accepts the dict that
     ``Compiled.cost_analysis()`` returns now (``implementation=0``, AUTO);
   - ``neural_tangents._src.predict.gradient_descent_mse`` (also
     ``nt.predict.gradient_descent_mse``): runs on a traced kernel;
   - ``neural_tangents._src.predict.sp``: a view of SciPy whose
     ``linalg.eigvalsh`` still accepts ``eigvals=`` (``max_learning_rate``);
   - ``neural_tangents._src.batching._flatten_kernel_dict``: the batched
     ``x1_is_x2`` flag is that of the whole inputs (``nt.batch``).

   Each replacement is marked, so a second load (``load_neural_tangents()``
   again, or a reload of this module) finds it and wraps nothing twice.
5. Re-exports every private JAX or NT name the rest of nt_frozen uses, so that
   supporting a new JAX or NT is a change in this package only.

Nothing of NT is copied, no global JAX config is changed and TensorFlow is
never imported. Each patch names the JAX (or SciPy) change it answers; the test
covering it is named in ``tests/test_compat.py``.

Modules: ``marks`` (the marks and module views), ``jax_names`` (steps 2
and 3), ``nt_patches`` (step 4), ``jax_shims`` (the JAX internals nt_frozen
itself reads: jaxpr equations, whether the backends started). None of them
imports NT; this module loads it, and imports NT's private names after that.

Import order: ``import nt_frozen`` (or ``from nt_frozen import nt, stax``)
before ``import neural_tangents``; afterwards both spellings give the same,
working modules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import types

from nt_frozen._compat.jax_names import (
    restore_ad,
    restore_jax_core,
    restore_jax_util,
    stub_experimental,
)
from nt_frozen._compat.jax_shims import (
    backends_are_initialized,
    bind_equation,
    scan_counts,
    tracing_config,
)
from nt_frozen._compat.nt_patches import (
    adapt_batching,
    adapt_predict,
    adapt_scipy_eigvalsh,
    adapt_structured_derivatives,
)

SUPPORTED_NT_VERSIONS = ("0.6.5",)


def check_nt_version() -> str:
    """Return NT's installed version, read from metadata without importing NT."""
    supported = ", ".join(SUPPORTED_NT_VERSIONS)
    try:
        version = importlib.metadata.version("neural-tangents")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"nt_frozen needs neural-tangents ({supported}), which is not "
            f"installed; install neural-tangents=={SUPPORTED_NT_VERSIONS[-1]}."
        ) from None
    if version not in SUPPORTED_NT_VERSIONS:
        raise ImportError(
            f"nt_frozen supports neural-tangents {supported} (its patches for "
            f"current JAX are written against that code), found {version}; "
            f"install neural-tangents=={SUPPORTED_NT_VERSIONS[-1]}."
        )
    return version


def load_neural_tangents() -> types.ModuleType:
    """Check NT's version, patch (once) and return the `neural_tangents` module."""
    check_nt_version()
    restore_jax_core()
    restore_jax_util()
    restore_ad()
    stub_experimental()
    nt = importlib.import_module("neural_tangents")
    adapt_structured_derivatives()
    adapt_predict(nt)
    adapt_scipy_eigvalsh()
    adapt_batching()
    return nt


nt = load_neural_tangents()
stax = nt.stax

# -- 5. private names used elsewhere in nt_frozen ------------------------------
# NT's layer decorators (`@layer`, `@requires`, `get_req`) are the idiom our
# layers follow; the empirical-kernel helpers contract Jacobians as NT does.
from neural_tangents._src.empirical import (  # noqa: E402
    DEFAULT_NTK_IMPLEMENTATION,
    _dot_general,
    _ntk_shape,
)
from neural_tangents._src.stax.requirements import get_req, layer, requires  # noqa: E402
from neural_tangents._src.utils import utils as nt_utils  # noqa: E402

__all__ = [
    "DEFAULT_NTK_IMPLEMENTATION",
    "SUPPORTED_NT_VERSIONS",
    "_dot_general",
    "_ntk_shape",
    "backends_are_initialized",
    "tracing_config",
    "bind_equation",
    "check_nt_version",
    "get_req",
    "layer",
    "load_neural_tangents",
    "nt",
    "nt_utils",
    "requires",
    "scan_counts",
    "stax",
]
