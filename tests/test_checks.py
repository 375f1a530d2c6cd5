"""Input checks against the network (`nt_frozen.checks`) where parameters,
`get` names, sample counts and targets enter the public API: each wrong input
fails at once with a message that names it; right inputs pass, also under
`jit` and `vmap`; results are compared with independent NT computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import (
    Frozen,
    FrozenParams,
    LearningRate,
    check_params,
    empirical_kernel_fn,
    empirical_ntk_decomposition,
    empirical_ntk_fn,
    merge,
    monte_carlo_kernel_fn,
    nt,
    ntk_decomposition,
    split,
    stax,
)
from nt_frozen.dynamics import compare_dynamics, train_ensemble
from nt_frozen.testing import rel_err

X = jax.random.normal(jax.random.PRNGKey(0), (4, 3))


def layers(width=16, frozen_middle=True):
    middle = stax.Dense(width, W_std=1.4, b_std=0.1)
    return [
        stax.Dense(width, b_std=0.1),
        stax.Relu(),
        Frozen(middle) if frozen_middle else middle,
        stax.Relu(),
        stax.Dense(1, b_std=0.1),
    ]


def params_of(network_layers, key=1):
    return stax.serial(*network_layers)[0](jax.random.PRNGKey(key), X.shape)[1]


# check_params ------------------------------------------------------------------


def test_check_params_passes_for_the_network_also_traced():
    init_fn, apply_fn, _ = stax.serial(*layers())
    params = params_of(layers())
    check_params(init_fn, params, X.shape)
    check_params(init_fn, jax.eval_shape(lambda: params), X.shape)

    @jax.jit
    def checked_apply(p):
        check_params(init_fn, p, X.shape)  # tracers: shapes are static
        return apply_fn(p, X)

    np.testing.assert_array_equal(checked_apply(params), jax.jit(apply_fn)(params, X))


@pytest.mark.parametrize(
    "other, match",
    [
        (  # a shallower network: serial's apply_fn would silently skip layers
            [stax.Dense(16, b_std=0.1), stax.Relu(), stax.Dense(1, b_std=0.1)],
            r"params is a list of 3 entries, the network has a list of 5",
        ),
        (layers(width=32), r"params\[0\]\[0\] has shape \(3, 32\), the network makes"),
        (
            layers(frozen_middle=False),
            r"params\[2\] is not marked frozen, but the network freezes it",
        ),
        (
            [Frozen(stax.Dense(16, b_std=0.1)), *layers()[1:]],
            r"params\[0\] is marked frozen \(FrozenParams\), but the network trains",
        ),
    ],
    ids=["shallower", "wider", "middle-not-frozen", "first-frozen"],
)
def test_check_params_names_the_first_mismatch(other, match):
    init_fn = stax.serial(*layers())[0]
    with pytest.raises(ValueError, match=match):
        check_params(init_fn, params_of(other), X.shape)


def _rated_layers(rate):
    return [*layers()[:4], LearningRate(stax.Dense(1, b_std=0.1), rate)]


@pytest.mark.parametrize(
    "other, match",
    [
        (layers(), r"params\[4\] carries no learning-rate marker, but the network "),
        (_rated_layers(3.0), r"params\[4\] is marked with rate 3, the network trains"),
    ],
    ids=["unrated", "other-rate"],
)
def test_check_params_names_missing_or_other_rate_markers(other, match):
    init_fn = stax.serial(*_rated_layers(2.0))[0]
    with pytest.raises(ValueError, match=match) as info:
        check_params(init_fn, params_of(other), X.shape)
    assert "freeze_like(params, init_fn(key, x.shape)[1])" in str(info.value)
    check_params(init_fn, params_of(_rated_layers(2.0)), X.shape)
    with pytest.raises(ValueError, match=r"params\[4\] is marked with rate 2"):
        check_params(stax.serial(*layers())[0], params_of(_rated_layers(2.0)), X.shape)


def test_empirical_functions_reject_parameters_that_do_not_run():
    """With `apply_fn` alone, parameters that do not fit (frozen where the
    network trains: NT's `cannot unpack non-iterable FrozenParams`; another
    input size: a dot_general error) fail with a message that says so and
    points at `check_params`. (Parameters that do run, e.g. of a shallower or
    uniformly wider network, only `check_params` can reject.)"""
    _, apply_fn, _ = stax.serial(*layers())
    first_frozen = params_of([Frozen(stax.Dense(16, b_std=0.1)), *layers()[1:]])
    other_inputs = stax.serial(*layers())[0](jax.random.PRNGKey(0), (4, 5))[1]
    for p in (first_frozen, other_inputs):
        for call in (
            lambda p=p: empirical_ntk_fn(apply_fn)(X, None, p),
            lambda p=p: empirical_kernel_fn(apply_fn)(X, X[:2], "nngp", p),
            lambda p=p: empirical_ntk_decomposition(apply_fn)(X, None, p),
        ):
            with pytest.raises(ValueError, match="not those of this network"):
                call()


def test_empirical_decomposition_from_layers_checks_params():
    shallower = [stax.Dense(16, b_std=0.1), stax.Relu(), stax.Dense(1, b_std=0.1)]
    d = empirical_ntk_decomposition(layers())
    with pytest.raises(ValueError, match="list of 3 entries, the network has a list"):
        d(X, None, params_of(shallower))
    with pytest.raises(ValueError, match=r"params\[2\] is not marked frozen"):
        d(X, None, params_of(layers(frozen_middle=False)))


def test_decompositions_label_the_same_groups_alike():
    groups = [[4, 0], 2]
    analytic = ntk_decomposition(layers(), groups)
    empirical = empirical_ntk_decomposition(layers(), groups)
    empirical(X, None, params_of(layers()))
    assert analytic.labels == empirical.labels == ("4:Dense+0:Dense", "2:Frozen(Dense)")


# merge ---------------------------------------------------------------------------


def test_merge_rejects_halves_of_different_widths():
    trainable, _ = split(params_of(layers(width=32)))
    _, frozen = split(params_of(layers()))
    with pytest.raises(ValueError, match=r"trainable\[0\]\[0\] has shape \(3, 32\)"):
        merge(trainable, frozen)


def test_merge_per_member_of_stacked_halves():
    """Halves of an ensemble's stacked parameters, merged inside `vmap`."""
    init_fn, apply_fn, _ = stax.serial(*layers())
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    stacked = jax.vmap(lambda k: init_fn(k, X.shape)[1])(keys)
    trainable, frozen = split(stacked)
    out = jax.vmap(lambda t, f: apply_fn(merge(t, f), X))(trainable, frozen)
    expected = jnp.stack([apply_fn(init_fn(k, X.shape)[1], X) for k in keys])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# get and n_samples -----------------------------------------------------------------


def test_monte_carlo_default_get_averages_both_kernels():
    init_fn, apply_fn, _ = stax.serial(*layers())
    key = jax.random.PRNGKey(5)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, key, 3)(X)
    both = monte_carlo_kernel_fn(init_fn, apply_fn, key, 3)(X, None, ("nngp", "ntk"))
    draws = [
        nt.empirical_kernel_fn(apply_fn)(
            X, None, ("nngp", "ntk"), init_fn(jax.random.fold_in(key, i), X.shape)[1]
        )
        for i in range(3)
    ]
    for name in ("nngp", "ntk"):
        expected = sum(getattr(d, name) for d in draws) / 3
        np.testing.assert_allclose(getattr(mc, name), expected, rtol=1e-5)
        np.testing.assert_allclose(getattr(both, name), expected, rtol=1e-5)
    generated = list(monte_carlo_kernel_fn(init_fn, apply_fn, key, [1, 3])(X))
    np.testing.assert_allclose(generated[1].ntk, mc.ntk, rtol=1e-6)


@pytest.mark.parametrize(
    "n_samples, error, match",
    [
        (0, ValueError, "must be positive"),
        (-2, ValueError, "must be positive"),
        ([2, 0], ValueError, "must be positive"),
        ([], ValueError, "n_samples is empty"),
        (2.5, TypeError, "positive int"),
        (True, TypeError, "positive int"),
    ],
)
def test_monte_carlo_rejects_sample_counts_at_once(n_samples, error, match):
    init_fn, apply_fn, _ = stax.serial(*layers())
    with pytest.raises(error, match=match):
        monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), n_samples)


def test_a_get_typo_lists_the_valid_names():
    init_fn, apply_fn, _ = stax.serial(*layers())
    params = params_of(layers())
    valid_empirical = "use one or several of 'nngp', 'ntk'"
    calls = [
        lambda: empirical_kernel_fn(apply_fn)(X, None, "ntkk", params),
        lambda: empirical_kernel_fn(apply_fn)(X, None, ("nngp", "ntkk"), params),
        lambda: monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2)(
            X, None, "ntkk"
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=valid_empirical):
            call()
    with pytest.raises(ValueError, match="get='ntkk' is not a kernel name.*'cov1'"):
        ntk_decomposition(layers()).kernel_fn(X, None, "ntkk")


# Frozen of a list ----------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate",
    [[stax.Dense(4), stax.Relu()], (stax.Dense(4),), [stax.Dense(4)] * 3],
    ids=["two", "one", "three"],
)
def test_frozen_of_several_layers_says_use_serial(candidate):
    with pytest.raises(TypeError, match=r"Frozen\(stax.serial\(...\)\)"):
        Frozen(candidate)


# targets ---------------------------------------------------------------------------


def _never_called(*args, **kwargs):
    raise AssertionError("the analytic kernel was computed before the targets check")


@pytest.mark.parametrize(
    "y, match",
    [
        (jnp.ones((4, 2)), r"outputs on x_train have shape \(4, 1\), y_train has"),
        (jnp.ones((3, 1)), r"one row per row of x_train, got \(3, 1\)"),
        (jnp.ones(4), r"got \(4,\)"),
    ],
    ids=["columns", "rows", "1-d"],
)
def test_targets_are_checked_before_any_expensive_work(y, match):
    init_fn, apply_fn, _ = stax.serial(*layers())
    with pytest.raises(ValueError, match="compare_dynamics: .*" + match):
        compare_dynamics(
            init_fn, apply_fn, _never_called, X, y, X[:2], [1.0],
            jax.random.PRNGKey(0), 2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="train_ensemble: .*" + match):
        train_ensemble(
            init_fn, apply_fn, X, y, X[:2], [1.0], np.eye(4), jax.random.PRNGKey(0),
            2,
        )  # fmt: skip


def test_test_inputs_must_have_the_training_inputs_shape():
    init_fn, apply_fn, _ = stax.serial(*layers())
    with pytest.raises(ValueError, match=r"x_test must have the shape"):
        compare_dynamics(
            init_fn, apply_fn, _never_called, X, jnp.ones((4, 1)), X[:2, :2], [1.0],
            jax.random.PRNGKey(0), 2,
        )  # fmt: skip


# nt_frozen.stax: get checked first, one params entry per layer ---------------------


def _raising_nngp(*args):
    raise AssertionError("the kernel was computed before `get` was checked")


@pytest.mark.parametrize(
    "make",
    [
        lambda e: stax.serial(stax.Dense(4), e),
        lambda e: stax.parallel(stax.Dense(4), e),
        lambda e: Frozen(stax.serial(stax.Dense(4), e)),
        lambda e: LearningRate(stax.serial(stax.Dense(4), e), 2.0),
        lambda e: stax.repeat(stax.serial(stax.Dense(3), e), 2),
    ],
    ids=["serial", "parallel", "Frozen", "LearningRate", "repeat"],
)
def test_analytic_get_typo_names_the_valid_names_before_any_work(make):
    """NT looked `get` up after computing the kernel: a bare KeyError('ntkk')."""
    never = make(stax.Elementwise(jnp.tanh, _raising_nngp))
    x = X if "parallel" not in str(never[2].__name__) else [X, X]
    for get in ("ntkk", ("nngp", "ntkk"), 3):
        with pytest.raises(ValueError, match=r"get=.* not a kernel name") as info:
            never[2](x, None, get)
        assert "'nngp', 'ntk', 'cov1'" in str(info.value)
    with pytest.raises(ValueError, match="ntkk"):
        never[2](x, None, get="ntkk")
    # Valid names give NT's own kernels (neural_tangents.stax, unguarded).
    net = make(stax.Erf())
    raw = nt.stax.serial(nt.stax.Dense(4), nt.stax.Erf())
    if "parallel" in net[2].__name__ or "repeat" in net[2].__name__:
        return
    k = net[2](X, None, ("nngp", "ntk"))
    np.testing.assert_array_equal(k.nngp, raw[2](X, None, "nngp"))
    assert k.ntk.shape == (4, 4)


@pytest.mark.parametrize("implementation", [None, 1])
def test_shallower_params_through_serial_raise_everywhere(x64, implementation):
    """NT's serial zips layers with params: the parameters of
    serial(Dense, Relu) ran through serial(Dense, Relu, Dense) as the first two
    layers' output, and empirical_ntk_fn returned that network's NTK. Through
    nt_frozen.stax they raise; this network's own params still give NT
    implementation 1's kernel."""
    x = X.astype(jnp.float64)  # float64 like the parameters
    net = [stax.Dense(8, b_std=0.1), stax.Relu(), stax.Dense(8, b_std=0.1)]
    init_fn, apply_fn, _ = stax.serial(*net, stax.Relu(), LearningRate(net[2], 1.0))
    shallow = params_of(net)
    deeper = params_of([*net, stax.Relu(), net[2], stax.Relu()])
    ntk_fn = empirical_ntk_fn(apply_fn, implementation=implementation)
    for params, got in ((shallow, "3 entries"), (deeper, "6 entries")):
        for call in (
            lambda p: apply_fn(p, x),
            lambda p: ntk_fn(x, None, p),
            lambda p: empirical_kernel_fn(apply_fn)(x, None, "nngp", p),
        ):
            with pytest.raises(ValueError, match=f"params has {got}, but the ne"):
                call(params)
    params = params_of([*net, stax.Relu(), net[2]])
    raw = nt.stax.serial(
        nt.stax.Dense(8, b_std=0.1), nt.stax.Relu(), nt.stax.Dense(8, b_std=0.1)
    )
    reference = nt.empirical_ntk_fn(
        nt.stax.serial(raw, nt.stax.Relu(), nt.stax.Dense(8, b_std=0.1))[1],
        implementation=1,
    )
    nested = (tuple(params[:3]), params[3], params[4])
    ours = jax.jit(ntk_fn)(x, None, params)
    assert rel_err(ours, jax.jit(reference)(x, None, nested)) < 1e-12
    # The limit: NT's own serial (neural_tangents.stax) still truncates.
    assert raw[1](shallow[:2], x).shape == (4, 8)


def test_shallower_params_of_an_inner_serial_raise_under_frozen():
    inner = [stax.Dense(8), stax.Relu(), stax.Dense(2)]
    init_fn, apply_fn, _ = stax.serial(Frozen(stax.serial(*inner)), stax.Dense(1))
    params = params_of([Frozen(stax.serial(*inner)), stax.Dense(1)])
    shallow_inner = (FrozenParams(params[0].params[:2]), params[1])
    with pytest.raises(ValueError, match="serial apply_fn: params has 2 entries"):
        apply_fn(shallow_inner, X)
