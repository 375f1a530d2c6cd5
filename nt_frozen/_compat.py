"""Make the released neural-tangents 0.6.5 import and run on current JAX.

neural-tangents 0.6.5 (March 2024) reads JAX names that later JAX releases
moved or removed, and its ``experimental`` subpackage imports TensorFlow at
import time. This module restores only the names that are *missing* (each patch
is guarded by ``hasattr`` and says which JAX change it answers), replaces
``neural_tangents.experimental`` by a module that explains itself, and then
imports neural-tangents. Nothing of neural-tangents is copied, no global JAX
config is changed, and TensorFlow is never imported.

Import order: ``import nt_frozen`` (or ``from nt_frozen import nt, stax``)
before ``import neural_tangents``; afterwards both spellings give the same,
working modules.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types

import jax

NT_VERSION = "0.6.5"


def _set_missing(obj, name: str, value) -> None:
    if not hasattr(obj, name):
        setattr(obj, name, value)


def _restore_jax_core() -> None:
    import jax.core as core
    import jax.extend.core as ext_core
    from jax._src import core as src_core

    # jax 0.4.3x-0.6: `Jaxpr`, `JaxprEqn`, `Literal`, `Var`, `Primitive` left
    # the public `jax.core` for `jax.extend.core`.
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        _set_missing(core, name, getattr(ext_core, name))
    # jax 0.7: `jax.core.get_aval` was removed; `jax.typeof` is its successor.
    _set_missing(core, "get_aval", jax.typeof if hasattr(jax, "typeof") else None)
    # jax 0.7: dynamic shapes (`DShapedArray`) were removed. neural-tangents
    # only checks `type(a) is core.DShapedArray`, which must be False.
    _set_missing(core, "DShapedArray", type("DShapedArray", (), {}))
    # jax 0.5: `lattice_join` was removed; neural-tangents calls it only under
    # `jax_enable_checks`, where the joined aval is the aval itself.
    _set_missing(core, "lattice_join", lambda a, b: a)
    # jax 0.7: `Primitive.map_primitive` (pmap-style primitives) was removed;
    # no ordinary primitive is a map primitive.
    _set_missing(src_core.Primitive, "map_primitive", False)


def _restore_jax_util() -> None:
    # jax 0.6: the public `jax.util` module was removed; neural-tangents
    # imports `safe_map` / `safe_zip` from it.
    try:
        importlib.import_module("jax.util")
    except ImportError:
        from jax._src import util as src_util

        module = types.ModuleType("jax.util")
        module.safe_map = src_util.safe_map
        module.safe_zip = src_util.safe_zip
        sys.modules["jax.util"] = module
        jax.util = module


def _restore_ad() -> None:
    from jax._src import source_info_util
    from jax._src.interpreters import ad as src_ad
    from jax.extend.core import Primitive
    from jax.interpreters import ad

    # jax 0.5-0.7: names neural-tangents reads through `jax.interpreters.ad`
    # stayed only in `jax._src`.
    _set_missing(ad, "source_info_util", source_info_util)
    _set_missing(ad, "config", jax.config)
    _set_missing(ad, "reducing_transposes", getattr(src_ad, "reducing_transposes", {}))
    # jax 0.5: `zeros_like_p` was removed (zeros are symbolic). neural-tangents
    # only uses it as a dict key for its structure rules; a primitive that never
    # appears in a jaxpr keeps those tables valid.
    _set_missing(ad, "zeros_like_p", Primitive("zeros_like"))


def _restore_random() -> None:
    # jax 0.4.24: `jax.random.KeyArray` was removed in favour of `jax.Array`.
    _set_missing(jax.random, "KeyArray", jax.Array)


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


def _stub_experimental() -> None:
    name = "neural_tangents.experimental"
    if name not in sys.modules:
        sys.modules[name] = _ExperimentalUnavailable(name)


class _OutputPval:
    """The part of a partial value that neural-tangents' linearize reads."""

    def __init__(self, tangent_is_zero: bool):
        self._known = tangent_is_zero

    def is_known(self) -> bool:
        return self._known


def _linearize_wrapped_fun(fun, *primals, has_aux: bool = False):
    """The pre-0.7 `ad.linearize(WrappedFun, *primals)` contract on new JAX.

    Returns `(primals_out, pvals, jaxpr, consts)` where `pvals[i].is_known()`
    says that output `i` has a symbolically zero tangent.
    """
    from jax._src.tree_util import FlatTree
    from jax.interpreters import ad

    if has_aux:
        raise NotImplementedError("has_aux=True is not used by neural-tangents.")
    out, out_zeros, jaxpr, consts = ad.linearize(
        fun.call_wrapped, FlatTree.flatten(tuple(primals))
    )
    return list(out.vals), [_OutputPval(z) for z in out_zeros], jaxpr, consts


def _flops(f, optimize: bool, *args, **kwargs) -> float:
    lowered = jax.jit(f).lower(*args, **kwargs)
    analysis = (
        lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
    )
    # jax 0.4.3x: `cost_analysis()` returns one dict instead of a list of them.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return analysis["flops"]


def _adapt_structured_derivatives() -> None:
    """Let `empirical_ntk_fn` implementations 3 and 0 (AUTO) run on new JAX."""
    import inspect

    from jax.interpreters import ad

    empirical = importlib.import_module("neural_tangents._src.empirical")
    # jax 0.7+: `ad.linearize(traceable, primals_ft: FlatTree)` replaced
    # `ad.linearize(WrappedFun, *primals, has_aux)`. Give neural-tangents' module
    # (only it) a view of `ad` with the old contract, leaving JAX untouched.
    if "primals_ft" in inspect.signature(ad.linearize).parameters:
        ad_view = types.ModuleType(ad.__name__)
        ad_view.__dict__.update(vars(ad))
        ad_view.linearize = _linearize_wrapped_fun
        empirical.ad = ad_view
    # AUTO compares the compiled FLOPs of implementations 1-3; its cost query
    # predates the dict-valued `cost_analysis()`.
    empirical._get_flops = _flops


def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def _adapt_predict(nt: types.ModuleType) -> None:
    """Let `nt.predict.gradient_descent_mse` take a traced kernel (under `jit`).

    NT builds its Cholesky factor / eigenbasis inside `jax.core.eval_context()`
    so that its `lru_cache` holds concrete arrays. On current JAX tracing
    follows a context, not the arguments, so an outer tracer used inside that
    context leaks (`UnexpectedTracerError`). A traced kernel has nothing
    concrete to cache: for it, run NT's own code with a no-op `eval_context`.
    Concrete kernels keep NT's path unchanged.
    """
    predict = importlib.import_module("neural_tangents._src.predict")
    original = predict.gradient_descent_mse
    core_view = types.ModuleType(jax.core.__name__)
    core_view.__dict__.update(vars(jax.core))
    core_view.eval_context = contextlib.nullcontext
    jax_view = types.ModuleType(jax.__name__)
    jax_view.__dict__.update(vars(jax))
    jax_view.core = core_view
    for_traced = types.FunctionType(
        original.__code__,
        {**vars(predict), "jax": jax_view},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    for_traced.__kwdefaults__ = original.__kwdefaults__

    @functools.wraps(original)
    def gradient_descent_mse(k_train_train, y_train, *args, **kwargs):
        fn = for_traced if _is_traced((k_train_train, y_train)) else original
        return fn(k_train_train, y_train, *args, **kwargs)

    predict.gradient_descent_mse = gradient_descent_mse
    nt.predict.gradient_descent_mse = gradient_descent_mse


def load_neural_tangents() -> types.ModuleType:
    """Restore missing JAX names, then import and return `neural_tangents`."""
    _restore_jax_core()
    _restore_jax_util()
    _restore_ad()
    _restore_random()
    _stub_experimental()
    nt = importlib.import_module("neural_tangents")
    _adapt_structured_derivatives()
    _adapt_predict(nt)
    if nt.__version__ != NT_VERSION:
        raise ImportError(
            f"nt_frozen supports neural-tangents {NT_VERSION}, found "
            f"{nt.__version__}; install neural-tangents=={NT_VERSION}."
        )
    return nt
