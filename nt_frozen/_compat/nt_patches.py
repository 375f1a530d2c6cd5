"""Step 4 of loading NT: NT functions and module references replaced inside
NT's modules only (JAX and SciPy are left untouched).

Each function here is called once NT is imported (by
:func:`nt_frozen._compat.load_neural_tangents`) and reads NT's modules then,
so importing this module imports no NT. Each replacement is marked, and found
again on a second load.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import types

import jax
import numpy as np

from nt_frozen._compat.marks import is_marked, marked, module_view, nt_module

# -- the structured derivatives (`empirical_ntk_fn` implementations 3, 0) ----


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
        return [a.freeze() if isinstance(a, src_ad.ValAccum) else None for a in accums]

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


def adapt_structured_derivatives() -> None:
    """Let `empirical_ntk_fn` implementations 3 and 0 (AUTO) run on new JAX.

    NT's module (only it) gets views of `jax.interpreters.ad` and `jax.core`
    with the names it reads at run time; JAX's own modules are left untouched.
    """
    from jax._src import source_info_util
    from jax._src.interpreters import ad as src_ad
    from jax.interpreters import ad

    empirical = nt_module("neural_tangents._src.empirical")
    if not is_marked(empirical.ad):
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
        empirical.ad = module_view(ad, **names)
    if not is_marked(empirical.core):
        # After jax 0.6.2 dynamic shapes (`DShapedArray`) were removed. NT checks
        # `type(aval) is core.DShapedArray`, which must be False.
        empirical.core = module_view(
            jax.core,
            DShapedArray=getattr(
                jax.core, "DShapedArray", type("DShapedArray", (), {})
            ),
        )
    if not is_marked(empirical._get_flops):
        empirical._get_flops = marked(_flops)


# -- nt.predict and nt.batch ------------------------------------------------


def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def adapt_predict(nt: types.ModuleType) -> None:
    """Let `nt.predict.gradient_descent_mse` take a traced kernel (under `jit`).

    NT builds its Cholesky factor / eigenbasis inside `jax.core.eval_context()`
    so that its `lru_cache` holds concrete arrays. Since JAX's "stackless"
    tracing, tracing follows a context, not the arguments, so an outer tracer
    used inside that context leaks (`UnexpectedTracerError`). A traced kernel
    has nothing concrete to cache: for it, run NT's own code with a no-op
    `eval_context`. Concrete kernels keep NT's path unchanged.
    """
    predict = nt_module("neural_tangents._src.predict")
    original = predict.gradient_descent_mse
    if is_marked(original):
        return
    jax_view = module_view(
        jax,
        core=module_view(jax.core, eval_context=contextlib.nullcontext),
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

    predict.gradient_descent_mse = marked(gradient_descent_mse)
    nt.predict.gradient_descent_mse = predict.gradient_descent_mse


def adapt_scipy_eigvalsh() -> None:
    """Let `nt.predict.max_learning_rate` run on SciPy >= 1.14.

    SciPy 1.14 removed `eigvalsh(..., eigvals=(lo, hi))` for
    `subset_by_index=[lo, hi]`; NT passes `eigvals=` (`TypeError`). Give NT's
    `predict` module (only it) a view of SciPy whose `linalg.eigvalsh`
    translates the keyword.
    """
    import scipy
    import scipy.linalg

    predict = nt_module("neural_tangents._src.predict")
    if is_marked(predict.sp) or (
        "eigvals" in inspect.signature(scipy.linalg.eigvalsh).parameters
    ):
        return

    @functools.wraps(scipy.linalg.eigvalsh)
    def eigvalsh(*args, eigvals=None, **kwargs):
        if eigvals is not None:
            kwargs["subset_by_index"] = eigvals
        return scipy.linalg.eigvalsh(*args, **kwargs)

    linalg_view = module_view(scipy.linalg, eigvalsh=eigvalsh)
    predict.sp = module_view(scipy, linalg=linalg_view)


def adapt_batching() -> None:
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
    batching = nt_module("neural_tangents._src.batching")
    original = batching._flatten_kernel_dict
    if is_marked(original):
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

    batching._flatten_kernel_dict = marked(_flatten_kernel_dict)
