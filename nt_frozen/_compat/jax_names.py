"""Steps 2 and 3 of loading NT: the JAX names NT reads, and a stand-in for
`neural_tangents.experimental` (which imports TensorFlow).

Each name is restored only where JAX lacks it. Nothing here imports NT.
"""

from __future__ import annotations

import importlib
import sys
import types

import jax

from nt_frozen._compat.marks import marked, set_missing


def restore_jax_core() -> None:
    import jax.core as core
    import jax.extend.core as ext_core
    from jax._src import core as src_core

    # By jax 0.6.2 (0.4.31 still has them) `Jaxpr`, `JaxprEqn`, `Literal`,
    # `Var`, `Primitive` left the public `jax.core` for `jax.extend.core`; NT
    # imports them from `jax.core`.
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        set_missing(core, name, getattr(ext_core, name))
    # After jax 0.6.2 `Primitive.map_primitive` (pmap-style primitives) was
    # removed; no ordinary primitive is a map primitive.
    set_missing(src_core.Primitive, "map_primitive", False)


def restore_jax_util() -> None:
    # After jax 0.6.2 the public `jax.util` module was removed; NT imports
    # `safe_map` and `safe_zip` from it.
    try:
        importlib.import_module("jax.util")
    except ImportError:
        from jax._src import util as src_util

        module = marked(types.ModuleType("jax.util"))
        module.safe_map = src_util.safe_map
        module.safe_zip = src_util.safe_zip
        sys.modules["jax.util"] = module
        set_missing(jax, "util", module)


def restore_ad() -> None:
    from jax.extend.core import Primitive
    from jax.interpreters import ad

    # After jax 0.6.2 `zeros_like_p` was removed (zeros are symbolic). NT only
    # uses it as a dict key for its structure rules; a primitive that never
    # appears in a jaxpr keeps those tables valid.
    set_missing(ad, "zeros_like_p", Primitive("zeros_like"))


# -- 3. neural_tangents.experimental -----------------------------------------


class _ExperimentalUnavailable(types.ModuleType):
    """Stands in for `neural_tangents.experimental`, which imports TensorFlow."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"neural_tangents.experimental.{name} is not available: that "
            "subpackage exports NTKs to TensorFlow and imports TensorFlow at "
            "import time, so nt_frozen does not load it. Use the JAX functions "
            "nt.empirical_ntk_fn / nt_frozen.empirical_ntk_fn instead."
        )


def stub_experimental() -> None:
    name = "neural_tangents.experimental"
    if name not in sys.modules:
        sys.modules[name] = marked(_ExperimentalUnavailable(name))
