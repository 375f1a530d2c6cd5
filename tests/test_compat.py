"""neural-tangents 0.6.5 on the installed JAX: imports without TensorFlow, the
NT features nt_frozen relies on run and agree with independent references, and
the compatibility layer checks NT's version first and loads only once.

Every patch in `nt_frozen/_compat/` is covered here (CI runs this file on
every supported Python and the declared-minimum JAX):
- restored `jax.core` names, `jax.util`, `ad.zeros_like_p`, the
  `experimental` stand-in: `test_imports_without_tensorflow`,
  `test_experimental_explains_itself`;
- NT's `ad`/`core` views (linearize contract, `FlatTree`, consts as invars,
  `DShapedArray`, `source_info_util`, `map_primitive`) and `_get_flops`:
  `test_all_empirical_ntk_implementations_agree`; accumulator-only transposes
  (`slice`, `dynamic_slice`, `gather`, as in every `stax.repeat`):
  `test_implementations_agree_through_slices_and_scan`; the checks-off `config`:
  `test_structured_derivatives_under_jax_enable_checks`;
- `gradient_descent_mse`: `test_gradient_descent_mse_under_jit`;
- SciPy's `eigvalsh`: `test_max_learning_rate_is_the_stability_limit`;
- batching's `x1_is_x2`: `test_nt_batch_composes_with_the_unbatched_fields`;
- version check and idempotence: `test_nt_version_is_checked_before_patching`,
  `test_a_second_load_changes_nothing`.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, nt, stax
from nt_frozen.networks import frozen_middle_mlp


@pytest.mark.parametrize(
    "imports",
    [
        "import nt_frozen; import neural_tangents as nt; "
        "from neural_tangents import stax",
        "from nt_frozen import nt, stax, Frozen",
    ],
)
def test_imports_without_tensorflow(imports):
    check = "import sys\nassert 'tensorflow' not in sys.modules\nprint(nt.__version__)"
    code = f"{imports}\n{check}"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.6.5"


def test_experimental_explains_itself():
    with pytest.raises(ImportError, match="imports TensorFlow"):
        nt.experimental.empirical_ntk_fn_tf  # noqa: B018


def _conv_net():
    return stax.serial(
        stax.Conv(8, (3, 3), b_std=0.1),
        stax.Relu(),
        Frozen(stax.Conv(8, (2, 2), W_std=1.5)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1),
    )


def test_all_empirical_ntk_implementations_agree(capsys):
    init_fn, apply_fn, _ = _conv_net()
    x1 = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    # One compiled program (op by op, NT compiles every operation on its own).
    results = jax.jit(
        lambda *args: {
            impl: nt.empirical_ntk_fn(apply_fn, implementation=impl)(*args)
            for impl in (1, 2, 3, 0)  # 0 = AUTO picks among 1-3 by compiled FLOPs
        }
    )(x1, x2, params)
    for impl in (2, 3, 0):
        np.testing.assert_allclose(results[impl], results[1], rtol=2e-5, atol=1e-6)
    assert np.abs(results[1]).max() > 0


def _sliced_apply(params, x):
    w, v = params
    h = jnp.tanh(x @ w[:, 1:])  # slice of a weight
    h = h @ jax.lax.dynamic_slice(v, (1, 0), (4, 2))
    return jnp.take(h, jnp.array([1, 0]), axis=1)  # gather


def _repeat_net():
    block = stax.serial(stax.Relu(), stax.Dense(8))
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(8), stax.repeat(block, 2), stax.Dense(1)
    )
    _, params = init_fn(jax.random.PRNGKey(4), (3, 4))
    return apply_fn, params


@pytest.mark.parametrize("net", ["repeat", "slices"])
def test_implementations_agree_through_slices_and_scan(net):
    """After jax 0.6.2 `slice`, `dynamic_slice` (`lax.scan`, so `stax.repeat`)
    and `gather` transpose only into accumulators; implementations 3 and 0
    (AUTO) still run and agree with the Jacobian contraction."""
    if net == "repeat":
        apply_fn, params = _repeat_net()
        x1 = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
        x2 = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
    else:
        apply_fn = _sliced_apply
        params = (
            jax.random.normal(jax.random.PRNGKey(0), (3, 5)),
            jax.random.normal(jax.random.PRNGKey(1), (6, 2)),
        )
        x1 = jax.random.normal(jax.random.PRNGKey(2), (3, 3))
        x2 = jax.random.normal(jax.random.PRNGKey(3), (2, 3))

    @jax.jit  # one program (op by op, NT compiles every operation on its own)
    def kernels(x1, x2, params):
        return [
            nt.empirical_ntk_fn(apply_fn, trace_axes=(), implementation=impl)(
                x1, x2, params
            )
            for impl in (1, 3, 0)
        ]

    for args in ((x1, None), (x1, x2)):
        reference, *others = kernels(*args, params)
        assert np.abs(reference).max() > 0
        for kernel in others:
            np.testing.assert_allclose(kernel, reference, rtol=2e-5, atol=1e-6)


def test_empirical_kernel_fn_and_monte_carlo_run():
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(512, b_std=0.2),
        stax.Relu(),
        Frozen(stax.Dense(512, W_std=1.4)),
        stax.Relu(),
        stax.Dense(1),
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    k = nt.empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
    assert k.nngp.shape == k.ntk.shape == (4, 4)
    mc = nt.monte_carlo_kernel_fn(
        init_fn, apply_fn, jax.random.PRNGKey(3), n_samples=4
    )(x, None, "ntk")
    analytic = kernel_fn(x, None, "ntk")
    assert np.linalg.norm(mc - analytic) / np.linalg.norm(analytic) < 0.3


def test_predict_runs_with_frozen_kernel():
    _, _, kernel_fn = stax.serial(
        stax.Dense(8, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(8, W_std=1.3)),
        stax.Relu(),
        stax.Dense(1),
    )
    x_train = jnp.linspace(-1, 1, 8).reshape(4, 2)
    y_train = jnp.sin(x_train[:, :1])
    x_test = jnp.linspace(-0.5, 0.5, 6).reshape(3, 2)
    predict_fn = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, diag_reg=1e-4
    )
    mean, cov = predict_fn(t=None, x_test=x_test, get="ntk", compute_cov=True)
    assert mean.shape == (3, 1) and cov.shape == (3, 3)
    assert np.isfinite(mean).all() and np.isfinite(cov).all()


def test_gradient_descent_mse_under_jit():
    """A traced kernel (inside `jit`) and NT's concrete path give the same outputs.

    On current JAX, NT's `eval_context` leaked the traced kernel; nt_frozen runs
    NT's code without it for traced kernels only.
    """
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(256), stax.Relu(), Frozen(stax.Dense(256, W_std=1.5)), stax.Dense(1)
    )
    x_train = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    x_test = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    y_train = jnp.sin(x_train[:, :1])
    k_train = kernel_fn(x_train, None, "ntk")
    k_test_train = kernel_fn(x_test, x_train, "ntk")
    _, params = init_fn(jax.random.PRNGKey(2), x_train.shape)
    f0_train, f0_test = apply_fn(params, x_train), apply_fn(params, x_test)

    def predict(k, t):
        fn = nt.predict.gradient_descent_mse(k, y_train, diag_reg=1e-4)
        return fn(t, f0_train, f0_test, k_test_train)

    for t in (0.5, None):
        eager = predict(k_train, t)
        traced = jax.jit(predict, static_argnums=1)(k_train, t)
        for a, b in zip(eager, traced):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # NT's own pattern still works: built once eagerly, called under jit twice.
    fn = nt.predict.gradient_descent_mse(k_train, y_train, diag_reg=1e-4)
    jitted = jax.jit(lambda t: fn(t, f0_train, f0_test, k_test_train))
    for t in (0.5, 2.0):
        np.testing.assert_allclose(jitted(t)[1], predict(k_train, t)[1], rtol=2e-5)


def test_structured_derivatives_under_jax_enable_checks():
    """NT's own checks-only assertion uses names JAX removed; it is skipped."""
    init_fn, apply_fn, _ = frozen_middle_mlp(8)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    previous = jax.config.jax_enable_checks
    jax.config.update("jax_enable_checks", True)
    try:
        structured = nt.empirical_ntk_fn(apply_fn, implementation=3)(x, None, params)
    finally:
        jax.config.update("jax_enable_checks", previous)
    jacobian = nt.empirical_ntk_fn(apply_fn, implementation=1)(x, None, params)
    np.testing.assert_allclose(structured, jacobian, rtol=2e-5, atol=1e-6)


def test_max_learning_rate_is_the_stability_limit():
    """Gradient descent on MSE moves `f` by `-(lr / n) K (f - y)`: below NT's
    `max_learning_rate` every mode contracts, just above it the top one grows.
    Checked by iterating in float64 numpy, no eigensolver involved."""
    _, _, kernel_fn = frozen_middle_mlp(8)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    ntk = kernel_fn(x, None, "ntk")
    lr = float(nt.predict.max_learning_rate(ntk))
    k = np.asarray(ntk, np.float64)
    n = k.shape[0]
    e0 = np.random.default_rng(0).normal(size=n)

    def residual(rate, steps=400):
        step, e = np.eye(n) - rate / n * k, e0
        for _ in range(steps):
            e = step @ e
        return np.linalg.norm(e) / np.linalg.norm(e0)

    assert np.isfinite(lr) and lr > 0
    assert residual(0.98 * lr) <= 1 + 1e-9
    assert residual(1.02 * lr) > 1e3


def _assert_same_kernel(a, b):
    for field in dataclasses.fields(nt.Kernel):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if x is None or y is None:
            assert x is y, field.name
        elif isinstance(x, (jax.Array, np.ndarray)) and np.ndim(x) > 0:
            np.testing.assert_allclose(x, y, rtol=1e-7, err_msg=field.name)
        else:
            assert bool(x == y), (field.name, x, y)


def test_nt_batch_composes_with_the_unbatched_fields(x64):
    """Batched kernels composed block by block equal the unbatched Kernel in
    every field, also when `x2` shares its first batch with `x1` (as draws of
    different sizes from one key do since jax 0.5). In float64: Relu's arccos
    near the diagonal turns rounding eps into sqrt(eps) between the two code
    paths (float32: 4e-5, float64: 4e-9 relative)."""
    block = stax.serial(
        stax.Dense(16, b_std=0.1), stax.Relu(), Frozen(stax.Dense(16, W_std=1.5))
    )
    readout = stax.serial(stax.Relu(), stax.Dense(1))
    _, _, composed = stax.serial(block, readout)
    x1 = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    other = jax.random.normal(jax.random.PRNGKey(1), (2, 3)) + 5.0
    cases = {
        "x2=None": (None, True),
        "x2 shares x1's first batch": (jnp.concatenate([x1[:2], other]), False),
        "x2 equals x1": (x1 + 0.0, True),
    }
    for name, (x2, same) in cases.items():
        plain = composed(x1, x2)
        assert bool(plain.x1_is_x2) is same, name
        for store_on_device in (True, False):
            batch = dict(batch_size=2, store_on_device=store_on_device)
            batched = nt.batch(readout[2], **batch)(nt.batch(block[2], **batch)(x1, x2))
            _assert_same_kernel(batched, plain)


_SNAPSHOT = """
import sys
import jax

def snapshot():
    \"\"\"Identity of every attribute the compatibility layer may touch.\"\"\"
    names = ["jax", "jax.core", "jax.interpreters.ad", "jax._src.core",
             "jax.random", "neural_tangents", "neural_tangents.predict",
             "neural_tangents._src.empirical", "neural_tangents._src.predict",
             "neural_tangents._src.batching"]
    snap = {n: {k: id(v) for k, v in vars(sys.modules[n]).items()}
            for n in names if n in sys.modules}
    snap["Primitive"] = {k: id(v) for k, v in
                         vars(sys.modules["jax._src.core"].Primitive).items()}
    snap["sys.modules"] = {k: id(v) for k, v in sys.modules.items()
                           if k.startswith(("jax", "neural_tangents"))}
    return snap

def changed(before, after):
    return {n: sorted(k for k in set(before[n]) | set(after.get(n, {}))
                      if before[n].get(k) != after.get(n, {}).get(k))
            for n in before}
"""


def _run(script: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize(
    "fake, message",
    [
        ("lambda name: '0.6.4'", "supports neural-tangents 0.6.5.*found 0.6.4"),
        (
            "lambda name: (_ for _ in ()).throw(md.PackageNotFoundError(name))",
            "needs neural-tangents \\(0.6.5\\), which is not installed",
        ),
    ],
    ids=["wrong-version", "not-installed"],
)
def test_nt_version_is_checked_before_patching(fake, message):
    out = _run(
        f"""
        import importlib.metadata as md
        real, fake = md.version, {fake}
        md.version = lambda n: fake(n) if n == "neural-tangents" else real(n)
        import jax.core, jax.interpreters.ad, jax._src.core
        before = snapshot()
        try:
            import nt_frozen
        except ImportError as error:
            print("ImportError:", error)
        after = snapshot()
        print("nt imported:", "neural_tangents" in sys.modules)
        print("changed:", {{n: d for n, d in changed(before, after).items() if d}})
        """
    )
    assert re.search(f"ImportError: nt_frozen {message}", out), out
    assert "install neural-tangents==0.6.5" in out
    assert "nt imported: False" in out and "changed: {}" in out, out


def test_a_second_load_changes_nothing():
    out = _run(
        """
        import importlib
        import nt_frozen._compat as compat
        before = snapshot()
        compat.load_neural_tangents()
        importlib.reload(compat)
        after = snapshot()
        print("changed:", {n: d for n, d in changed(before, after).items() if d})
        """
    )
    assert "changed: {}" in out, out
