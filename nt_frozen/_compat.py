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
   supporting a new JAX or NT is a change in this file only.

Nothing of NT is copied, no global JAX config is changed and TensorFlow is
never imported. Each patch names the JAX (or SciPy) change it answers; the test
covering it is named in ``tests/test_compat.py``.

Import order: ``import nt_frozen`` (or ``from nt_frozen import nt, stax``)
before ``import neural_tangents``; afterwards both spellings give the same,
working modules.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import sys
import types
from typing import Any

import jax
import numpy as np

SUPPORTED_NT_VERSIONS = ("0.6.5",)
# Set on every object this module installs, so that loading twice is a no-op.
_MARK = "__nt_frozen_patch__"


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


def _marked(obj):
    setattr(obj, _MARK, True)
    return obj


def _is_marked(obj) -> bool:
    return getattr(obj, _MARK, False) is True


class _ModuleView(types.ModuleType):
    """`module` with some names replaced; every other name is read from it."""

    def __init__(self, module: types.ModuleType, replaced: dict):
        super().__init__(module.__name__, module.__doc__)
        self.__dict__.update(replaced, _module=module)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_module"], name)


def _module_view(module: types.ModuleType, **replaced) -> types.ModuleType:
    return _marked(_ModuleView(module, replaced))


def _set_missing(obj, name: str, value) -> None:
    if not hasattr(obj, name):
        setattr(obj, name, value)


def _nt_module(name: str) -> Any:
    """One of NT's modules, to read and patch: NT is untyped, so is this."""
    return importlib.import_module(name)


# -- 2. JAX names NT reads ---------------------------------------------------


def _restore_jax_core() -> None:
    import jax.core as core
    import jax.extend.core as ext_core
    from jax._src import core as src_core

    # By jax 0.6.2 (0.4.31 still has them) `Jaxpr`, `JaxprEqn`, `Literal`,
    # `Var`, `Primitive` left the public `jax.core` for `jax.extend.core`; NT
    # imports them from `jax.core`.
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        _set_missing(core, name, getattr(ext_core, name))
    # After jax 0.6.2 `Primitive.map_primitive` (pmap-style primitives) was
    # removed; no ordinary primitive is a map primitive.
    _set_missing(src_core.Primitive, "map_primitive", False)


def _restore_jax_util() -> None:
    # After jax 0.6.2 the public `jax.util` module was removed; NT imports
    # `safe_map` and `safe_zip` from it.
    try:
        importlib.import_module("jax.util")
    except ImportError:
        from jax._src import util as src_util

        module = _marked(types.ModuleType("jax.util"))
        module.safe_map = src_util.safe_map
        module.safe_zip = src_util.safe_zip
        sys.modules["jax.util"] = module
        _set_missing(jax, "util", module)


def _restore_ad() -> None:
    from jax.extend.core import Primitive
    from jax.interpreters import ad

    # After jax 0.6.2 `zeros_like_p` was removed (zeros are symbolic). NT only
    # uses it as a dict key for its structure rules; a primitive that never
    # appears in a jaxpr keeps those tables valid.
    _set_missing(ad, "zeros_like_p", Primitive("zeros_like"))


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


def _stub_experimental() -> None:
    name = "neural_tangents.experimental"
    if name not in sys.modules:
        sys.modules[name] = _marked(_ExperimentalUnavailable(name))


# -- 4. NT functions replaced in NT's modules --------------------------------


class _OutputPval:
    """The part of a partial value that NT's linearize reads."""

    def __init__(self, tangent_is_zero: bool):
        self._known = tangent_is_zero

    def is_known(self) -> bool:
        return self._known


def _flat_tree_flatten():
    """`FlatTree` construction, which moved between JAX releases.

    Looked up by name: each place exists on some JAX releases only, so a static
    import would not type-check on the others.
    """
    try:  # jax 0.12: `FlatTree` lives in `jax._src.flattree`.
        return importlib.import_module("jax._src.flattree").flatten
    except ImportError:  # jax 0.10
        return importlib.import_module("jax._src.tree_util").FlatTree.flatten


def _linearize_wrapped_fun(fun, *primals, has_aux: bool = False):
    """The old `ad.linearize(WrappedFun, *primals)` contract on new JAX.

    Returns `(primals_out, pvals, jaxpr, consts)` where `pvals[i].is_known()`
    says that output `i` has a symbolically zero tangent.
    """
    from jax.interpreters import ad

    if has_aux:
        raise NotImplementedError("has_aux=True is not used by neural-tangents.")
    # jax 0.10 returns `(out, out_zeros, jaxpr, consts)`; jax 0.12 appends
    # the structured residuals.
    out, out_zeros, jaxpr, consts = ad.linearize(
        fun.call_wrapped, _flat_tree_flatten()(tuple(primals))
    )[:4]
    # jax 0.12 merged `ClosedJaxpr` into `Jaxpr`: `constvars` are the leading
    # invars with attached values, and `linearize` returns its consts apart,
    # as plain leading invars. NT binds `jaxpr.constvars` to `consts`, so
    # attach them (the `Jaxpr(jaxpr, consts)` form shifts the invars).
    if len(jaxpr.constvars) != len(consts):
        jaxpr = type(jaxpr)(jaxpr, consts)
    return list(out.vals), [_OutputPval(z) for z in out_zeros], jaxpr, consts


def _flops(f, optimize: bool, *args, **kwargs) -> float:
    lowered = jax.jit(f).lower(*args, **kwargs)
    analysis = (
        lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
    )
    # Newer JAX: `Compiled.cost_analysis()` returns one dict instead of a
    # list of them (NT indexes `[0]`: `KeyError: 0`); accept both.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    if analysis is None:  # a backend without XLA's cost model
        raise NotImplementedError(
            "empirical_ntk_fn(implementation=0) (AUTO) compares the flops XLA "
            "estimates, which this backend does not report; pass "
            "implementation=1, 2 or 3."
        )
    return analysis["flops"]


def _fancy_transpose(rule):
    """An accumulator-style transpose `rule` with the old contract.

    After jax 0.6.2 some primitives (`slice`, `dynamic_slice`, ... inside every
    `lax.scan`, hence every `stax.repeat`) have only a transpose that adds
    into accumulators (`ad.fancy_transposes`); NT's structured derivatives
    call `ad.get_primitive_transpose(p)(ct, *invals, **params)` and read the
    returned cotangents.
    """
    from jax._src.interpreters import ad as src_ad

    def transpose(cts_in, *invals, **params):
        accums = [
            src_ad.ValAccum(x.aval.to_ct_aval())
            if isinstance(x, src_ad.UndefinedPrimal)
            else x
            for x in invals
        ]
        rule(cts_in, *accums, **params)
        return [
            a.freeze() if isinstance(a, src_ad.ValAccum) else None for a in accums
        ]

    return transpose


def _get_primitive_transpose(primitive):
    """`ad.get_primitive_transpose`, also for accumulator-only transposes."""
    from jax._src.interpreters import ad as src_ad

    if primitive in src_ad.primitive_transposes:
        return src_ad.primitive_transposes[primitive]
    fancy = getattr(src_ad, "fancy_transposes", {})
    if primitive in fancy and not primitive.call_primitive:
        return _fancy_transpose(fancy[primitive])
    return src_ad.get_primitive_transpose(primitive)  # raises NT's error


def _adapt_structured_derivatives() -> None:
    """Let `empirical_ntk_fn` implementations 3 and 0 (AUTO) run on new JAX.

    NT's module (only it) gets views of `jax.interpreters.ad` and `jax.core`
    with the names it reads at run time; JAX's own modules are left untouched.
    """
    from jax._src import source_info_util
    from jax._src.interpreters import ad as src_ad
    from jax.interpreters import ad

    empirical = _nt_module("neural_tangents._src.empirical")
    if not _is_marked(empirical.ad):
        names = dict(
            # These left the public `jax.interpreters.ad` for `jax._src`
            # (0.4.31 and 0.6.2 lack `source_info_util`, 0.10 both).
            source_info_util=source_info_util,
            reducing_transposes=getattr(src_ad, "reducing_transposes", {}),
            # NT's `jax_enable_checks` assertion calls `strip_named_shape`
            # (gone by jax 0.4.31) and `lattice_join` (gone by 0.6.2); it only
            # re-checks NT's own transpose, so skip it rather than fail.
            # JAX's own checks still run.
            config=types.SimpleNamespace(jax_enable_checks=False),
        )
        if getattr(src_ad, "fancy_transposes", None):
            names["get_primitive_transpose"] = _get_primitive_transpose
        # After jax 0.6.2 (0.10 has it) `ad.linearize(traceable, primals_ft:
        # FlatTree)` replaced `ad.linearize(WrappedFun, *primals, has_aux)`.
        if "primals_ft" in inspect.signature(ad.linearize).parameters:
            _flat_tree_flatten()  # fail here, at import, if `FlatTree` moved
            names["linearize"] = _linearize_wrapped_fun
        empirical.ad = _module_view(ad, **names)
    if not _is_marked(empirical.core):
        # After jax 0.6.2 dynamic shapes (`DShapedArray`) were removed. NT checks
        # `type(aval) is core.DShapedArray`, which must be False.
        empirical.core = _module_view(
            jax.core,
            DShapedArray=getattr(
                jax.core, "DShapedArray", type("DShapedArray", (), {})
            ),
        )
    if not _is_marked(empirical._get_flops):
        empirical._get_flops = _marked(_flops)


def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def _adapt_predict(nt: types.ModuleType) -> None:
    """Let `nt.predict.gradient_descent_mse` take a traced kernel (under `jit`).

    NT builds its Cholesky factor / eigenbasis inside `jax.core.eval_context()`
    so that its `lru_cache` holds concrete arrays. Since JAX's "stackless"
    tracing, tracing follows a context, not the arguments, so an outer tracer
    used inside that context leaks (`UnexpectedTracerError`). A traced kernel
    has nothing concrete to cache: for it, run NT's own code with a no-op
    `eval_context`. Concrete kernels keep NT's path unchanged.
    """
    predict = _nt_module("neural_tangents._src.predict")
    original = predict.gradient_descent_mse
    if _is_marked(original):
        return
    jax_view = _module_view(
        jax,
        core=_module_view(jax.core, eval_context=contextlib.nullcontext),
    )
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

    predict.gradient_descent_mse = _marked(gradient_descent_mse)
    nt.predict.gradient_descent_mse = predict.gradient_descent_mse


def _adapt_scipy_eigvalsh() -> None:
    """Let `nt.predict.max_learning_rate` run on SciPy >= 1.14.

    SciPy 1.14 removed `eigvalsh(..., eigvals=(lo, hi))` for
    `subset_by_index=[lo, hi]`; NT passes `eigvals=` (`TypeError`). Give NT's
    `predict` module (only it) a view of SciPy whose `linalg.eigvalsh`
    translates the keyword.
    """
    import scipy
    import scipy.linalg

    predict = _nt_module("neural_tangents._src.predict")
    if _is_marked(predict.sp) or (
        "eigvals" in inspect.signature(scipy.linalg.eigvalsh).parameters
    ):
        return

    @functools.wraps(scipy.linalg.eigvalsh)
    def eigvalsh(*args, eigvals=None, **kwargs):
        if eigvals is not None:
            kwargs["subset_by_index"] = eigvals
        return scipy.linalg.eigvalsh(*args, **kwargs)

    linalg_view = _module_view(scipy.linalg, eigvalsh=eigvalsh)
    predict.sp = _module_view(scipy, linalg=linalg_view)


def _adapt_batching() -> None:
    """Give `nt.batch`'s Kernel the `x1_is_x2` flag of the whole inputs.

    NT's serial batching computes the kernel block by block and reports the
    flag of the first block, `x1[:b] == x2[:b]`. Since jax 0.5 made
    `jax_threefry_partitionable` the default, draws of different sizes from one
    key share their leading rows (`normal(key, (2, d)) == normal(key, (8,
    d))[:2]`), so test sets drawn that way hit this: the batched Kernel says
    `x1_is_x2=True` where the unbatched one says False (and train-mode
    `Dropout` rescales its diagonal). `x1` equals `x2` exactly when the block
    grid is square, the shapes agree and every diagonal block says so.
    """
    batching = _nt_module("neural_tangents._src.batching")
    original = batching._flatten_kernel_dict
    if _is_marked(original):
        return

    @functools.wraps(original)
    def _flatten_kernel_dict(k, x2_is_none, is_parallel):
        blocks = k.get("x1_is_x2")
        out = original(k, x2_is_none, is_parallel)
        # Serial blocks are `(n1 // b, n2 // b)`; when `x2 is None` NT's first
        # block (x1 vs x1) is already right, and parallel rows are NT's own
        # documented compromise (`x1_is_x2` per device row).
        if blocks is not None and not x2_is_none and not is_parallel:
            blocks = jax.numpy.asarray(blocks)
            square = blocks.ndim == 2 and blocks.shape[0] == blocks.shape[1]
            same_shape = out.get("shape1") == out.get("shape2")
            out["x1_is_x2"] = (
                jax.numpy.all(jax.numpy.diagonal(blocks))
                if square and same_shape
                else np.False_
            )
        return out

    batching._flatten_kernel_dict = _marked(_flatten_kernel_dict)


def load_neural_tangents() -> types.ModuleType:
    """Check NT's version, patch (once) and return the `neural_tangents` module."""
    check_nt_version()
    _restore_jax_core()
    _restore_jax_util()
    _restore_ad()
    _stub_experimental()
    nt = importlib.import_module("neural_tangents")
    _adapt_structured_derivatives()
    _adapt_predict(nt)
    _adapt_scipy_eigvalsh()
    _adapt_batching()
    return nt


nt = load_neural_tangents()


# -- jaxpr helpers for the structured empirical path ----------------------------
def bind_equation(primitive, params: dict, operands) -> Any:
    """`primitive` applied to `operands` as `jax.core.eval_jaxpr` binds it."""
    bind_params = primitive.get_bind_params(params)
    # jax < 0.4.36 returns (subfuns, params); newer JAX the params only.
    subfuns, bind_params = (
        bind_params if isinstance(bind_params, tuple) else ((), bind_params)
    )
    return primitive.bind(*subfuns, *operands, **bind_params)


def scan_counts(params: dict) -> tuple[int, int]:
    """`(num_consts, num_carry)` of a `scan` equation's params."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    # jax 0.12 replaced the counts by `ft_in`, the FlatTree structure of
    # (consts, carry, xs).
    consts, carry, _ = params["ft_in"].unpack()
    return len(list(consts.vals)), len(list(carry.vals))


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
