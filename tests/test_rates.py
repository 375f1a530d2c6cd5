"""Per-layer learning rates: `LearningRate(layer, rate)`, its parameters, its
empirical kernels and its training dynamics, each against an independent
reference.

- Analytic: `L(ntk_in) + rate * P` by a second code path (two passes and a
  subtraction, float64) for every layer of `nt_frozen.testing.LAYER_CASES`; the sum rule
  `Theta = sum_l eta_l Theta_l` against `ntk_decomposition` of the unrated
  network; float32 without cancellation against float64.
- Empirical: `sum_b rate_b J_b J_b^T` against NT's own `empirical_ntk_fn` on
  networks in which one layer trains, for implementations 1, 2 and 3; the
  Monte Carlo mean of width-n draws against the analytic kernel (agreement
  score), where the rates swapped must fail.
- Training: gradient descent moves a leaf by `rate * lr * grad` (exact, on a
  network linear in its trainable parameters); finite ensembles against
  `nt.predict` with the rated kernel, with the dynamics tests' tolerances, and
  the swapped rates rejected.
"""

from __future__ import annotations

import fractions
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nt_frozen import (
    Frozen,
    FrozenParams,
    LearningRate,
    RatedParams,
    apply_learning_rates,
    empirical_kernel_fn,
    empirical_ntk_decomposition,
    empirical_ntk_fn,
    freeze_like,
    learning_rates,
    merge,
    nt,
    ntk_decomposition,
    scale_by_learning_rates,
    split,
    stax,
    trainable_mask,
)
from nt_frozen.dynamics import (
    analytic_prediction,
    compare_dynamics,
    dynamics_agreement,
    stiffest_mode_time,
    train_ensemble,
)
from nt_frozen.testing import (
    LAYER_CASES,
    assert_same_fields_but_ntk,
    gd_times,
    is_kernel,
    layer_inputs,
    linear_part_by_subtraction,
    rel_err,
    sphere_regression,
)
from nt_frozen.validation.statistics import MAX_SCORE, agreement

# The regression task and tolerance factor of the dynamics tests.
X_TRAIN, Y_TRAIN, X_TEST = sphere_regression()
Y_TRAIN = Y_TRAIN[:, :1]
STEP_FRACTION, K = 0.05, 4.0


def _times(kernel_fn):
    return gd_times(kernel_fn, X_TRAIN, Y_TRAIN.size)


def _own_term(kernel_fn, k, **kwargs):
    zero = jax.tree_util.tree_map(
        lambda kk: kk.replace(ntk=jnp.zeros_like(kk.ntk)), k, is_leaf=is_kernel
    )
    return jax.tree_util.tree_map(
        lambda kk: kk.ntk, kernel_fn(zero, **kwargs), is_leaf=is_kernel
    )


def _ntks(k):
    return jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda kk: kk.ntk, k, is_leaf=is_kernel)
    )


def _ntk(kernel_fn, x1, x2=None):
    """The analytic NTK, jitted (many times faster than NT's eager kernels)."""
    return jax.jit(lambda a, b: kernel_fn(a, b, "ntk"))(x1, x2)


# --- The analytic layer -------------------------------------------------------


# Layers checked in the default run (one rate); every case and both rates in
# the slow run.
DEFAULT_CASES = {
    "Dense-ntk",
    "Dense-standard",
    "Conv",
    "LayerNorm",
    "GlobalSelfAttention",
    "FanInSum",
    "FanInProd",
    "serial",
    "parallel",
    "repeat",
    "residual",
    "nested",
    "Relu",
    "Erf",
}


def _rated_cases():
    for rate in (0.1, 10.0):
        for name, *case in LAYER_CASES:
            fast = rate == 0.1 and name in DEFAULT_CASES
            marks = () if fast else pytest.mark.slow
            yield pytest.param(*case, rate, id=f"{name}-{rate:g}", marks=marks)


@pytest.mark.parametrize("pre, lyr, shape, has_params, kwargs, rate", _rated_cases())
def test_rated_kernel_is_linear_part_plus_rate_times_own_term(
    x64, pre, lyr, shape, has_params, kwargs, rate
):
    x1, x2, kwargs = layer_inputs(shape, kwargs)

    @jax.jit
    def kernels(x1, x2):
        # Full covariances satisfy every layer's input requirement.
        k_in = pre[2](x1, x2, diagonal_batch=False, diagonal_spatial=False, **kwargs)
        return (
            lyr[2](k_in, **kwargs),
            LearningRate(lyr, rate)[2](k_in, **kwargs),
            linear_part_by_subtraction(lyr[2], k_in, **kwargs),
            _own_term(lyr[2], k_in, **kwargs),
        )

    plain, rated, linear, own = kernels(x1, x2)
    assert_same_fields_but_ntk(rated, plain)
    expected = jax.tree_util.tree_map(lambda a, b: a + rate * b, linear, own)
    for g, e in zip(_ntks(rated), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(
            g, e, rtol=1e-10, atol=1e-12 * float(jnp.abs(e).max())
        )
    # Power: a layer with parameters really scales its own term.
    differs = any(
        not np.allclose(g, p, rtol=1e-6) for g, p in zip(_ntks(rated), _ntks(plain))
    )
    assert differs == has_params


def test_rate_zero_is_frozen_and_rate_one_is_the_layer():
    dense = stax.Dense(4, W_std=1.3, b_std=0.2)
    assert LearningRate(dense, 1) is dense
    assert LearningRate(dense, 1.0) is dense
    frozen = LearningRate(dense, 0)
    assert frozen[2].__name__ == "Frozen(Dense)"
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    net = functools.partial(stax.serial, stax.Dense(8, b_std=0.1), stax.Erf())
    np.testing.assert_array_equal(
        _ntk(net(frozen)[2], x), _ntk(net(Frozen(dense))[2], x)
    )
    _, params = net(frozen)[0](jax.random.PRNGKey(1), x.shape)
    assert isinstance(params[-1], FrozenParams)
    assert LearningRate(dense, 0.1)[2].__name__ == "LearningRate(Dense, 0.1)"


def test_nested_rates_multiply(x64):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    d1 = stax.Dense(8, W_std=1.4, b_std=0.3)
    d2 = stax.Dense(1, W_std=1.2, b_std=0.1)
    pre = stax.serial(stax.Dense(8, b_std=0.2), stax.Relu())
    nested = stax.serial(
        pre,
        LearningRate(stax.serial(LearningRate(d1, 0.5), stax.Erf(), d2), 4.0),
    )
    flat = stax.serial(pre, LearningRate(d1, 2.0), stax.Erf(), LearningRate(d2, 4.0))
    np.testing.assert_allclose(_ntk(nested[2], x), _ntk(flat[2], x), rtol=1e-12)
    inner_frozen = stax.serial(pre, LearningRate(Frozen(d1), 3.0))
    np.testing.assert_array_equal(
        _ntk(inner_frozen[2], x), _ntk(stax.serial(pre, Frozen(d1))[2], x)
    )
    _, params = nested[0](jax.random.PRNGKey(1), x.shape)
    rates = jax.tree_util.tree_leaves(learning_rates(params))
    assert rates == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize(
    "rate, error, match",
    [
        (-0.5, ValueError, "finite and >= 0"),
        (math.nan, ValueError, "finite and >= 0"),
        (math.inf, ValueError, "finite and >= 0"),
        ([0.1, 0.2], TypeError, "real number"),
        (np.array([0.1, 0.2]), ValueError, "scalar"),
        ("0.1", TypeError, "real number"),
        (True, TypeError, "real number"),
        (None, TypeError, "real number"),
        (1j, TypeError, "real number"),
    ],
)
def test_bad_rates_are_rejected_naming_the_layer(rate, error, match):
    with pytest.raises(error, match=match) as info:
        LearningRate(stax.Dense(3), rate)
    assert "LearningRate(Dense" in str(info.value)


def test_traced_rate_and_bad_layer_are_rejected():
    with pytest.raises(TypeError, match="concrete number"):
        jax.jit(lambda r: LearningRate(stax.Dense(3), r)[0])(0.5)
    with pytest.raises(TypeError, match="LearningRate expects a layer triple"):
        LearningRate(stax.Dense, 0.5)
    with pytest.raises(ValueError, match="> 0"):
        RatedParams({"w": 1.0}, 0.0)


def test_float32_small_rate_has_no_cancellation():
    """Rate 1e-4 on a Dense with b_std = 1e3: its own term (~1e6) dwarfs the
    propagated NTK (~1). Float32 must match float64 to float32 rounding (measured
    2e-7); the two-pass form `ntk(k) - (1 - rate) ntk(k with ntk = 0)` is off
    by 2e-4, 2% of the propagated part."""
    big = stax.Dense(1, W_std=1.0, b_std=1e3)
    pre = stax.serial(stax.Dense(16, W_std=1.3, b_std=0.2), stax.Relu())

    def rated_ntk():
        # The same values in float32 and float64 (a PRNG would draw others).
        x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)))

        @jax.jit
        def both(x):
            k_in = pre[2](x, None)
            subtraction = big[2](k_in).ntk - (1 - 1e-4) * _own_term(big[2], k_in)
            return LearningRate(big, 1e-4)[2](k_in).ntk, subtraction

        return both(x)

    got, subtraction = rated_ntk()
    assert got.dtype == jnp.float32
    jax.config.update("jax_enable_x64", True)
    try:
        reference = rated_ntk()[0]
    finally:
        jax.config.update("jax_enable_x64", False)
    assert reference.dtype == np.float64
    assert rel_err(got, reference) < 1e-6
    assert rel_err(subtraction, reference) > 1e-5  # what the test guards against


# --- Sum rule against the layer-wise decomposition ------------------------------


def mlp(n, rates=(0.1, 0.0, 1.0, 10.0)):
    weights = ((1.5, 0.1), (1.4, 0.3), (1.3, 0.2), (1.2, 0.1))
    layers = []
    for i, ((w_std, b_std), rate) in enumerate(zip(weights, rates)):
        out = 1 if i == len(weights) - 1 else n
        layers.append(LearningRate(stax.Dense(out, W_std=w_std, b_std=b_std), rate))
        if i < len(weights) - 1:
            layers.append(stax.Relu())
    return layers


def cnn(n, rates=(10.0, 0.1, 1.0)):
    block = stax.serial(
        stax.Conv(n, (3, 3), padding="SAME", W_std=2.0, b_std=0.1),
        stax.AvgPool((2, 2)),
    )
    return [
        LearningRate(
            stax.Conv(n, (3, 3), padding="SAME", W_std=1.3, b_std=1.0), rates[0]
        ),
        stax.Relu(),
        LearningRate(block, rates[1]),
        stax.Relu(),
        stax.Flatten(),
        LearningRate(stax.Dense(1, W_std=1.2), rates[2]),
    ]


def residual(n, rates=(10.0, 0.1, 0.0)):
    branch = stax.serial(stax.Relu(), stax.Dense(n, W_std=2.0, b_std=0.3))
    block = stax.serial(
        stax.FanOut(2),
        stax.parallel(LearningRate(branch, rates[1]), stax.Identity()),
        stax.FanInSum(),
    )
    return [
        LearningRate(stax.Dense(n, W_std=1.2, b_std=0.2), rates[0]),
        block,
        stax.Relu(),
        LearningRate(stax.Dense(1, W_std=1.1, b_std=0.1), rates[2]),
    ]


def repeated(n, rates=(0.1, 3.0, 1.0)):
    """A rated `stax.repeat` block: its shared leaves (inside a `scan`) take
    the structured path's NT fallback."""
    block = stax.repeat(stax.serial(stax.Relu(), stax.Dense(n, b_std=0.1)), 2)
    return [
        LearningRate(stax.Dense(n, W_std=1.2, b_std=0.2), rates[0]),
        LearningRate(block, rates[1]),
        stax.Relu(),
        LearningRate(stax.Dense(1, b_std=0.1), rates[2]),
    ]


# name: (layers(n, rates), default rates, input shape, layer index of each rate)
ARCHS = {
    "mlp": (mlp, (0.1, 0.0, 1.0, 10.0), (8, 16), (0, 2, 4, 6)),
    "cnn": (cnn, (10.0, 0.1, 1.0), (4, 4, 4, 2), (0, 2, 5)),
    "residual": (residual, (10.0, 0.1, 0.0), (8, 16), (0, 1, 3)),
    "repeat": (repeated, (0.1, 3.0, 1.0), (8, 16), (0, 1, 3)),
}


@pytest.mark.parametrize(
    "arch", ["mlp", "residual", pytest.param("cnn", marks=pytest.mark.slow)]
)
def test_sum_rule_rated_is_rate_weighted_decomposition(x64, arch):
    make, rates, shape, where = ARCHS[arch]
    x1 = jax.random.normal(jax.random.PRNGKey(0), shape)
    x2 = jax.random.normal(jax.random.PRNGKey(1), (3, *shape[1:]))
    rated = _ntk(stax.serial(*make(16, rates))[2], x1, x2)
    unrated = make(16, (1.0,) * len(rates))
    parts = jax.jit(ntk_decomposition(unrated, list(where)))(x1, x2)
    expected = sum(rate * part for rate, part in zip(rates, parts))
    assert rel_err(rated, expected) < 1e-12
    swapped = sum(rate * part for rate, part in zip(rates[::-1], parts))
    assert rel_err(swapped, expected) > 0.1  # the rates matter
    # The decomposition of the rated network has rate-weighted rows.
    rated_parts = jax.jit(ntk_decomposition(make(16, rates), list(where)))(x1, x2)
    for rate, row, part in zip(rates, rated_parts, parts):
        np.testing.assert_allclose(row, rate * part, rtol=1e-12, atol=1e-14)


# --- Empirical kernels ----------------------------------------------------------


def _only_layer_trains(layers, index):
    """The unrated network in which only `layers[index]` trains (NT's own
    stop-gradient network: an independent empirical reference)."""
    return [lyr if i == index else Frozen(lyr) for i, lyr in enumerate(layers)]


@pytest.mark.parametrize(
    "arch, implementation",
    [("mlp", 2), ("mlp", None), ("residual", 1), ("residual", 2), ("residual", 3)]
    + [("residual", None), ("cnn", None), ("repeat", None)],
)
def test_empirical_ntk_is_rate_weighted_sum_of_layer_ntks(x64, arch, implementation):
    make, rates, shape, where = ARCHS[arch]
    x1 = jax.random.normal(jax.random.PRNGKey(0), shape)
    x2 = jax.random.normal(jax.random.PRNGKey(1), (3, *shape[1:]))
    init_fn, apply_fn, _ = stax.serial(*make(32, rates))
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    ntk_fn = empirical_ntk_fn(apply_fn, implementation=implementation)
    got = jax.jit(ntk_fn)(x1, x2, params)

    unrated = make(32, (1.0,) * len(rates))
    values = jax.tree_util.tree_leaves(params)
    weighted = []  # rate_l x NT's NTK of the network in which only l trains
    for rate, index in zip(rates, where):
        init_l, apply_l, _ = stax.serial(*_only_layer_trains(unrated, index))
        layout = init_l(jax.random.PRNGKey(2), x1.shape)[1]
        params_l = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(layout), values
        )
        # NT's implementation 1 is the reference for our default (None) path.
        ntk_l = nt.empirical_ntk_fn(apply_l, implementation=implementation or 1)
        weighted.append(rate * jax.jit(ntk_l)(x1, x2, params_l))
    assert rel_err(got, sum(weighted)) < 1e-12
    # The rated empirical decomposition's rows are the same terms.
    rows = jax.jit(empirical_ntk_decomposition(apply_fn, list(where)))(x1, x2, params)
    for row, term in zip(rows, weighted):
        np.testing.assert_allclose(row, term, rtol=1e-12, atol=1e-12)


def _draws(layers, x, n_draws):
    init_fn, apply_fn, _ = stax.serial(*layers)
    ntk_fn = empirical_ntk_fn(apply_fn, implementation=2)

    @jax.jit
    def draws(key):
        def one(k):
            return ntk_fn(x, None, init_fn(k, x.shape)[1])

        return jax.lax.map(one, jax.random.split(key, n_draws))

    return draws(jax.random.PRNGKey(2024))


# name: (width, draws); CNN channels are cheaper kept low, with more draws.
MONTE_CARLO = {"mlp": (512, 8), "cnn": (128, 16), "residual": (512, 8)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", MONTE_CARLO)
def test_analytic_matches_monte_carlo_and_swapped_rates_fail(arch):
    make, rates, shape, _ = ARCHS[arch]
    width, n_draws = MONTE_CARLO[arch]
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    draws = _draws(make(width, rates), x, n_draws)
    analytic = _ntk(stax.serial(*make(width, rates))[2], x)
    score = agreement(draws, analytic, width).score
    assert score <= MAX_SCORE, score
    for wrong in (rates[::-1], (1.0,) * len(rates)):  # swapped, and unrated
        control = _ntk(stax.serial(*make(width, wrong))[2], x)
        assert agreement(draws, control, width).score > MAX_SCORE, wrong


# --- Parameters and optimizers ------------------------------------------------------


def _net(rates=(0.5, 3.0)):
    return stax.serial(
        LearningRate(stax.Dense(8, b_std=0.1), rates[0]),
        stax.Relu(),
        Frozen(stax.Dense(8, b_std=0.2)),
        stax.Relu(),
        LearningRate(stax.Dense(1, b_std=0.1), rates[1]),
    )


def test_rated_parameters_are_trainable_and_apply_is_unchanged():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    init_fn, apply_fn, _ = _net()
    plain_init, plain_apply, _ = _net((1.0, 1.0))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    _, plain = plain_init(jax.random.PRNGKey(1), x.shape)
    assert isinstance(params[0], RatedParams) and params[0].rate == 0.5
    assert (
        jax.tree_util.tree_leaves(trainable_mask(params))
        == [True] * 2 + [False] * 2 + [True] * 2
    )
    trainable, frozen = split(params)
    assert jax.tree_util.tree_structure(merge(trainable, frozen)) == (
        jax.tree_util.tree_structure(params)
    )
    # Same values, outputs and (true) gradients as the unrated network.
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(plain)
    ):
        np.testing.assert_array_equal(a, b)
    out = jax.jit(apply_fn)(params, x)
    np.testing.assert_array_equal(out, jax.jit(plain_apply)(plain, x))

    def loss(apply, p):
        return jnp.sum(apply(p, x) ** 2)

    g = jax.jit(jax.grad(functools.partial(loss, apply_fn)))(params)
    g_plain = jax.jit(jax.grad(functools.partial(loss, plain_apply)))(plain)
    g, g_plain = jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_plain)
    for i in (0, 1, 4, 5):  # rated leaves: the true gradient, bit for bit
        np.testing.assert_array_equal(g[i], g_plain[i])
    for i in (2, 3):  # the frozen Dense
        np.testing.assert_array_equal(g[i], 0.0)


def test_optax_step_moves_each_leaf_at_its_rate():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    init_fn, apply_fn, _ = _net()
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    tx = optax.chain(optax.sgd(0.1), scale_by_learning_rates())
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, x) ** 2))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # Rates by construction: first Dense 0.5, frozen 0, readout 3.
    expected_rates = [0.5, 0.5, 0.0, 0.0, 3.0, 3.0]
    for p, g, n, r in zip(
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(grads),
        jax.tree_util.tree_leaves(new),
        expected_rates,
    ):
        np.testing.assert_allclose(n, p - 0.1 * r * g, rtol=1e-6, atol=1e-7)
    # Composes with stateful optimizers too.
    adam = optax.chain(optax.adam(1e-2), scale_by_learning_rates())
    state = adam.init(params)
    updates, _ = adam.update(grads, state, params)
    # Adam's first step is +-lr on every entry with a gradient: the readout
    # moves 6x as far as the first Dense.
    first = [np.abs(u).max() for u in jax.tree_util.tree_leaves(updates)]
    np.testing.assert_allclose(first[4] / first[0], 6.0, rtol=1e-3)


# --- Training dynamics ---------------------------------------------------------------


def test_gradient_descent_is_rated_for_a_linear_model():
    """Frozen features and two readouts at rates 3 and 0.2: each network is
    linear in its trainable parameters with its rated empirical NTK, so its
    trajectory must be `nt.predict.gradient_descent_mse` with that kernel (to
    the discretization error, < step_fraction of the change); unrated steps
    would follow a different kernel."""
    init_fn, apply_fn, _ = stax.serial(
        Frozen(stax.Dense(64, b_std=0.1)),
        stax.Relu(),
        stax.FanOut(2),
        stax.parallel(
            LearningRate(stax.Dense(1, b_std=0.1), 3.0),
            LearningRate(stax.Dense(1, W_std=2.0), 0.2),
        ),
        stax.FanInSum(),
    )
    key, step_fraction, n_train = jax.random.PRNGKey(3), 0.01, X_TRAIN.shape[0]
    _, params = init_fn(jax.random.split(key, 2)[0], X_TRAIN.shape)
    ntk = empirical_ntk_fn(apply_fn)(jnp.concatenate([X_TRAIN, X_TEST]), None, params)
    k_dd, k_td = ntk[:n_train, :n_train], ntk[n_train:, :n_train]
    unit = stiffest_mode_time(k_dd, Y_TRAIN.size)
    ts = [0.5 * unit, 3.0 * unit]
    data = (X_TRAIN, Y_TRAIN, X_TEST)
    ens = train_ensemble(init_fn, apply_fn, *data, ts, k_dd, key, 2, step_fraction=0.01)
    member, f0_train, f0_test = ens.test[0], ens.train_0[0], ens.test_0[0]

    def nt_at(k_dd, k_td, t):
        fn = nt.predict.gradient_descent_mse(k_dd, Y_TRAIN)
        return fn(t, f0_train, f0_test, k_td)[1]

    expected = jnp.stack([nt_at(k_dd, k_td, t) for t in ts])
    change = np.linalg.norm(expected - f0_test, axis=(1, 2))
    error = np.linalg.norm(member - expected, axis=(1, 2))
    np.testing.assert_array_less(error, step_fraction * change)
    # Unrated steps: the unrated empirical NTK, same values.
    plain = nt.empirical_ntk_fn(apply_fn)(
        jnp.concatenate([X_TRAIN, X_TEST]), None, params
    )
    wrong = nt_at(plain[:n_train, :n_train], plain[n_train:, :n_train], ts[0])
    assert np.linalg.norm(member[0] - wrong) > 10 * step_fraction * change[0]


DYN_WIDTH, DYN_MEMBERS = 512, 32
DYN_RATES = (0.1, 1.0, 10.0)


def _dyn_mlp(width, rates):
    dense = [
        stax.Dense(width, b_std=0.1),
        stax.Dense(width, W_std=0.5, b_std=0.1),
        stax.Dense(1, b_std=0.1),
    ]
    d = [LearningRate(lyr, r) for lyr, r in zip(dense, rates)]
    return stax.serial(d[0], stax.Relu(), d[1], stax.Relu(), d[2])


@functools.cache
def _rated_run():
    """Train the rated ensemble once; the dynamics tests' data, times and steps."""
    net, data = _dyn_mlp(DYN_WIDTH, DYN_RATES), (X_TRAIN, Y_TRAIN, X_TEST)
    key, step_fraction = jax.random.PRNGKey(1), STEP_FRACTION
    ts = _times(net[2])
    return compare_dynamics(
        *net, *data, ts, key, DYN_MEMBERS, step_fraction=step_fraction
    )


@pytest.mark.slow
def test_rated_ensemble_matches_nt_predict_and_swapped_rates_fail():
    """Ensemble mean, paired mean and variance within the dynamics tests'
    tolerances `K (SE + width^-1/2)` of `nt.predict` on the rated kernel.

    Control: at this ensemble size those tolerances are too loose to reject
    the swapped or unrated kernels (their means differ by 0.25-0.5 of the
    scale; measured within 0.7 of the tolerances). The member-wise statistic
    has the power: each member minus its own linearization under a kernel
    (`residual_rms`) is the finite-width deviation, O(width^-1/2), for the
    right kernel (measured 0.09-0.15 at width 512) and carries an O(1)
    dynamics error for a wrong one (0.24-0.82, at least 1.8x the right
    kernel's at each time and 5x at its worst): a wrong kernel must give at
    least twice the right one's deviation at some time."""
    ensemble, prediction, right = _rated_run()
    mean_tol, paired_tol, var_tol = right.tolerances(DYN_WIDTH, K)
    np.testing.assert_array_less(right.mean_error, mean_tol)
    np.testing.assert_array_less(right.paired_mean_error, paired_tol)
    np.testing.assert_array_less(right.variance_error, var_tol)
    for wrong in (DYN_RATES[::-1], (1.0, 1.0, 1.0)):
        kernel_fn = _dyn_mlp(DYN_WIDTH, wrong)[2]
        control = analytic_prediction(
            kernel_fn, X_TRAIN, Y_TRAIN, X_TEST, prediction.ts
        )
        ratio = dynamics_agreement(ensemble, control).residual_rms / right.residual_rms
        assert ratio.max() > 2.0, (wrong, ratio)


# --- Rates of any real dtype, their range, their markers ------------------------


@pytest.mark.parametrize(
    "rate",
    [
        jnp.bfloat16(0.5),
        np.asarray(0.5, jnp.bfloat16),
        jnp.float16(0.5),
        np.float32(0.5),
        jnp.asarray(0.5),  # a 0-d array
        np.asarray(0.5, np.float64),
        np.int8(2),
        jnp.uint8(2),
        fractions.Fraction(1, 2),
    ],
    ids=lambda r: f"{type(r).__name__}-{getattr(r, 'dtype', '')}",
)
def test_real_scalars_of_any_dtype_are_rates(x64, rate):
    """Any real scalar is a rate, with the value of the Python float it holds:
    the kernel equals the closed form `plain.ntk + (rate - 1) * plain.nngp` of
    a rated readout (its own term is the output NNGP)."""
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    readout = stax.Dense(1, W_std=1.5, b_std=0.5)
    pre = (stax.Dense(16), stax.Relu())
    layer = LearningRate(readout, rate)
    assert layer[2].__name__ == f"LearningRate(Dense, {float(rate):g})"
    rated = stax.serial(*pre, layer)
    plain = jax.jit(stax.serial(*pre, readout)[2])(x, None)
    expected = plain.ntk + (float(rate) - 1.0) * plain.nngp
    # Two programs: XLA may fuse them differently, and ReLU's arccos turns
    # float64 rounding near the diagonal into ~1e-10; a wrong rate is off by O(1).
    assert rel_err(_ntk(rated[2], x), expected) < 1e-8


@pytest.mark.parametrize(
    "rate, error, match",
    [
        (np.complex64(0.5), TypeError, "real number, got dtype complex64"),
        (jnp.asarray(0.5 + 0.5j), TypeError, "real number, got dtype complex"),
        (np.bool_(True), TypeError, "real number"),
        (jnp.bfloat16(-0.5), ValueError, "finite and >= 0, got -0.5"),
        (np.float32("nan"), ValueError, "finite and >= 0, got nan"),
        (jnp.asarray([0.5]), ValueError, "scalar, got an array of shape"),
        (np.asarray(0.5, object), TypeError, "real number, got dtype object"),
    ],
)
def test_scalars_that_are_not_rates_are_rejected(rate, error, match):
    with pytest.raises(error, match=match) as info:
        LearningRate(stax.Dense(3), rate)
    assert "LearningRate(Dense" in str(info.value)


def _rated_readout(rate):
    return stax.serial(
        stax.Dense(8, b_std=0.1), stax.Relu(), LearningRate(stax.Dense(1), rate)
    )


@pytest.mark.parametrize("rate, what", [(1e39, "inf or NaN"), (1e-50, "to zero")])
def test_rate_beyond_the_dtype_range_raises_before_any_kernel(rate, what):
    """In float32, 1e39 overflows every rated term (the kernel was inf / NaN)
    and 1e-50 underflows it (the layer silently frozen): analytic, empirical
    (both paths) and gradient-descent updates raise, naming the layer or leaf,
    the rate, the dtype and the fix."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    init_fn, apply_fn, kernel_fn = _rated_readout(rate)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    label = f"LearningRate(Dense, {rate:g})"
    fix = "divide every rate by one factor"
    with pytest.raises(ValueError, match=re.escape(label)) as info:
        kernel_fn(x, None, "ntk")
    for text in (f"{rate:g}", "float32", what, fix):
        assert text in str(info.value)
    calls = {
        "empirical_ntk_fn": lambda: empirical_ntk_fn(apply_fn)(x, None, params),
        "empirical_ntk_fn ": lambda: empirical_ntk_fn(apply_fn, implementation=1)(
            x, None, params
        ),
        "apply_learning_rates": lambda: apply_learning_rates(params),
    }
    for where, call in calls.items():
        with pytest.raises(ValueError, match=re.escape(where.strip())) as info:
            call()
        for text in ("params[2].params[0]", f"{rate:g}", "float32", fix):
            assert text in str(info.value)
    # get="nngp" does not use the rate.
    np.testing.assert_array_equal(
        kernel_fn(x, None, "nngp"), _rated_readout(1.0)[2](x, None, "nngp")
    )


def test_large_rate_is_exact_in_float64(x64):
    """The same rate fits float64: the kernel is finite and the closed form."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    rated = _rated_readout(1e39)[2](x, None)
    plain = _rated_readout(1.0)[2](x, None)
    assert rated.ntk.dtype == jnp.float64
    assert rel_err(rated.ntk, plain.ntk + (1e39 - 1.0) * plain.nngp) < 1e-12


def _jacrev_ntk(apply_fn, params, x, rates):
    """sum_leaf rate_leaf J_leaf J_leaf^T by jax.jacrev over the leaves of
    `params` (plain NT apply_fn, no markers): the independent reference."""
    leaves, treedef = jax.tree_util.tree_flatten(params)

    @jax.jit  # one program (op by op, every operation is compiled on its own)
    def ntk(leaves):
        jac = jax.jacrev(
            lambda ls: apply_fn(jax.tree_util.tree_unflatten(treedef, ls), x)[:, 0]
        )(leaves)
        return sum(
            rate * j.reshape(len(x), -1) @ j.reshape(len(x), -1).T
            for rate, j in zip(rates, jac)
        )

    return ntk(leaves)


@pytest.mark.parametrize("implementation", [None, 1, 2])
def test_params_without_rate_markers_raise_and_marked_ones_are_right(
    x64, implementation
):
    """A checkpoint of the unrated network gave the rated network's empirical
    NTK without the rate (here 2 J_3 J_3^T counted once): now it raises, and
    the same values re-marked with `freeze_like` give the jacrev reference."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    layers = (stax.Dense(8, b_std=0.1), stax.Relu(), stax.Dense(1, b_std=0.2))
    init_fn, apply_fn, _ = stax.serial(*layers[:2], LearningRate(layers[2], 2.0))
    plain_init, plain_apply, _ = stax.serial(*layers)
    _, checkpoint = plain_init(jax.random.PRNGKey(1), x.shape)
    ntk_fn = empirical_ntk_fn(apply_fn, implementation=implementation)
    for call in (
        lambda p: ntk_fn(x, None, p),
        lambda p: empirical_kernel_fn(apply_fn, implementation=implementation)(
            x, None, "ntk", p
        ),
        lambda p: apply_fn(p, x),
    ):
        with pytest.raises(ValueError, match="no learning-rate marker") as info:
            call(checkpoint)
        assert "LearningRate(Dense, 2)" in str(info.value)
        assert "freeze_like" in str(info.value)
    # Another rate's marker is caught too.
    other = stax.serial(*layers[:2], LearningRate(layers[2], 3.0))[0]
    _, other_params = other(jax.random.PRNGKey(1), x.shape)
    with pytest.raises(ValueError, match="marked with rate 3"):
        ntk_fn(x, None, other_params)

    like = init_fn(jax.random.PRNGKey(2), x.shape)[1]
    marked = freeze_like(checkpoint, like)
    reference = _jacrev_ntk(plain_apply, checkpoint, x, [1, 1, 2, 2])
    assert rel_err(jax.jit(ntk_fn)(x, None, marked), reference) < 1e-12
    unrated = _jacrev_ntk(plain_apply, checkpoint, x, [1, 1, 1, 1])
    assert rel_err(unrated, reference) > 0.05  # what the markers change


def test_learning_rates_are_plain_floats_without_markers():
    dense = functools.partial(stax.Dense, b_std=0.1)
    init_fn, _, _ = stax.serial(
        LearningRate(dense(3), np.float32(0.5)),
        stax.Relu(),
        LearningRate(stax.serial(dense(3), Frozen(dense(3)), dense(1)), 4.0),
        dense(1),
    )
    _, params = init_fn(jax.random.PRNGKey(0), (1, 4))
    rates = learning_rates(params)
    assert rates == [(0.5, 0.5), (), [(4.0, 4.0), (0.0, 0.0), (4.0, 4.0)], (1.0, 1.0)]
    leaves = jax.tree_util.tree_leaves(
        rates, is_leaf=lambda n: isinstance(n, (RatedParams, FrozenParams))
    )
    assert all(type(rate) is float for rate in leaves)
    # Leaf order is that of the parameters (what the empirical path zips).
    assert len(leaves) == len(jax.tree_util.tree_leaves(params))
