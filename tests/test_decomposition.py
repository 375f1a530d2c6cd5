"""Layer-wise NTK decomposition (issue 5), against independent references.

References never call the decomposition: the full NTK of `stax.serial`, the
NTK of the network with every layer outside a group wrapped in `Frozen` (the
jvp path of `nt_frozen.frozen`, one network per group), and NT's and our
trainable-only empirical NTKs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import (
    Frozen,
    empirical_ntk_decomposition,
    empirical_ntk_fn,
    freeze_like,
    nt,
    ntk_decomposition,
    stax,
)
from nt_frozen.testing import fast_jit, freeze_all_but, inputs, rel_err


def deep_mlp(parameterization="ntk", depth=3):
    layers = []
    for i in range(depth):
        layers += [
            stax.Dense(
                8, W_std=1.1 + 0.1 * i, b_std=0.3, parameterization=parameterization
            ),
            stax.Relu() if i % 2 == 0 else stax.Erf(),
        ]
    return [
        *layers,
        stax.Dense(1, W_std=0.9, b_std=0.2, parameterization=parameterization),
    ]


def cnn():
    return [
        stax.Conv(4, (2, 2), padding="SAME", W_std=1.3, b_std=0.2),
        stax.Relu(),
        stax.Conv(4, (2, 2), padding="SAME", W_std=1.5, b_std=0.4),
        stax.AvgPool((2, 2)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    ]


def residual():
    # FanOut at the top level: between layers the Kernel is a list of two.
    return [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.FanOut(2),
        stax.parallel(
            stax.serial(stax.Relu(), stax.Dense(8, W_std=1.5, b_std=0.4)),
            stax.Identity(),
        ),
        stax.FanInSum(),
        stax.Relu(),
        stax.Dense(1, b_std=0.1),
    ]


def repeated():
    # `repeat` is one layer: its parameters (all repetitions) form one row.
    return [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.repeat(stax.serial(stax.Erf(), stax.Dense(8, W_std=1.6, b_std=0.3)), 2),
        stax.Relu(),
        stax.Dense(1, W_std=0.9, b_std=0.1),
    ]


def attention():
    return [
        stax.Dense(4, W_std=1.3, b_std=0.2),
        stax.GlobalSelfAttention(4, 4, 4, n_heads=2, W_out_std=1.4, b_std=0.1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    ]


FAMILIES = {
    "mlp": (deep_mlp, (3,), (0, 2, 4, 6)),
    "mlp-standard": (lambda: deep_mlp("standard"), (3,), (0, 2, 4, 6)),
    "cnn": (cnn, (4, 4, 2), (0, 2, 6)),
    "residual": (residual, (3,), (0, 2, 5)),
    "repeat": (repeated, (3,), (0, 1, 3)),
    "attention": (attention, (3, 2), (0, 1, 4)),
}


SECONDS = ("x2", "x2=None")


@functools.cache
def analytic(family: str, dtype: str):
    """The decomposition and its references, for x2 != x1 and x2 = None.

    All in one jitted function, to bound test time (one compilation is far
    cheaper than NT's op-by-op dispatch); the references are still separate
    computations: the plain `stax.serial` NTK and, per layer with parameters,
    the NTK of the network with every other layer wrapped in `Frozen`.
    """
    assert jnp.zeros(()).dtype == jnp.dtype(dtype)
    make, shape, param_layers = FAMILIES[family]
    x1, x2 = inputs(shape, n1=3, n2=2)
    decomposition = ntk_decomposition(make(), input_shape=x1.shape)
    # The first layer with parameters in no group: frozen in every row.
    tail = ntk_decomposition(make(), [[i] for i in param_layers[1:]])

    def everything(x1, x2):
        results = {
            name: dict(
                parts=decomposition(x1, second),
                full=stax.serial(*make())[2](x1, second, "ntk"),
            )
            for name, second in zip(SECONDS, (x2, None))
        }
        if dtype == "float64":  # one network per group: only where it counts
            results["x2"]["frozen"] = [
                stax.serial(*freeze_all_but(make(), {i}))[2](x1, x2, "ntk")
                for i in param_layers
            ]
            results["x2"]["tail"] = tail(x1, x2)
        return results

    return decomposition, fast_jit(everything, x1, x2)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    if request.param == "float64":
        request.getfixturevalue("x64")
    return request.param


@pytest.mark.parametrize("second", SECONDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sum_rule(family, second, dtype):
    decomposition, results = analytic(family, dtype)
    parts, full = results[second]["parts"], results[second]["full"]
    param_layers = FAMILIES[family][2]
    assert [g.indices for g in decomposition.groups] == [(i,) for i in param_layers]
    assert parts.shape == (len(param_layers), *full.shape)
    assert parts.dtype == full.dtype == np.dtype(dtype)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(parts.sum(0), full, rtol=rtol, atol=rtol * 1e-3)
    # power: every layer with parameters contributes, none makes the whole NTK
    for part in parts:
        assert np.linalg.norm(part) > 1e-3 * np.linalg.norm(full)
        assert rel_err(part, full) > 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_each_contribution_is_ntk_of_frozen_network(family, x64):
    decomposition, results = analytic(family, "float64")
    parts, frozen = results["x2"]["parts"], results["x2"]["frozen"]
    assert len(frozen) == len(parts)
    for part, expected, group in zip(parts, frozen, decomposition.groups):
        np.testing.assert_allclose(part, expected, rtol=1e-12, err_msg=group.label)


@pytest.mark.parametrize("family", FAMILIES)
def test_ungrouped_leading_layer_is_in_no_row(family, x64):
    """The first layer with parameters is in no group: its own term must not
    reach the first group's row (every row is the NTK of the network with
    that layer frozen too)."""
    _, results = analytic(family, "float64")
    tail, frozen = results["x2"]["tail"], results["x2"]["frozen"]
    assert len(tail) == len(frozen) - 1
    for row, expected in zip(tail, frozen[1:]):
        np.testing.assert_allclose(row, expected, rtol=1e-12)


def issue_layers():
    return [
        stax.Dense(64, W_std=1.3, b_std=0.1),
        stax.Relu(),
        stax.Dense(64, W_std=1.4, b_std=0.2),
        stax.Relu(),
        stax.Dense(1, W_std=0.9, b_std=0.3),
    ]


def test_readout_and_body_rows_with_a_leading_layer_in_no_group(x64):
    """The reported case: `{"readout": -1}` gave the full NTK, and the body
    row of `{"body": [2], "readout": -1}` was off by 0.92 (relative)."""
    x1, x2 = inputs((3,), n1=5, n2=4)
    readout_only = ntk_decomposition(issue_layers(), {"readout": -1})
    body_readout = ntk_decomposition(issue_layers(), {"body": [2], "readout": -1})

    def ntk_training(keep):
        return stax.serial(*freeze_all_but(issue_layers(), keep))[2](x1, x2, "ntk")

    (readout, parts), (want_readout, want_body, full) = fast_jit(
        lambda: (
            (readout_only(x1, x2), body_readout(x1, x2)),
            (ntk_training({4}), ntk_training({2}), ntk_training({0, 2, 4})),
        )
    )
    assert rel_err(want_readout, full) > 0.1  # the references can tell
    np.testing.assert_allclose(readout[0], want_readout, rtol=1e-12)
    np.testing.assert_allclose(parts[0], want_body, rtol=1e-12)
    np.testing.assert_allclose(parts[1], want_readout, rtol=1e-12)


def test_user_groups_named_unnamed_and_partial(x64):
    layers = deep_mlp()  # Dense at 0, 2, 4, readout at 6
    x1, x2 = inputs((3,), n1=3, n2=2)
    named = ntk_decomposition(layers, {"readout": -1, "body": [0, 1, 2, 4]})
    # unnamed; a non-contiguous group that starts after another one; layer 4
    # in no group
    unnamed = ntk_decomposition(layers, [[6, 2], 0])

    def ntk_training(keep):
        return stax.serial(*freeze_all_but(layers, keep))[2](x1, x2, "ntk")

    keeps = ({6}, {0, 2, 4}, {2, 6}, {0}, {0, 2, 6})
    (named_parts, unnamed_parts), want = fast_jit(
        lambda: (
            (named(x1, x2), unnamed(x1, x2)),
            [ntk_training(keep) for keep in keeps],
        )
    )
    readout, body, second_and_last, first, covered = want
    assert named.labels == ("readout", "body")
    assert named.groups[0].indices == (6,)  # negative index normalized
    assert unnamed.labels == ("6:Dense+2:Dense", "0:Dense")
    np.testing.assert_allclose(named_parts[0], readout, rtol=1e-12)
    np.testing.assert_allclose(named_parts[1], body, rtol=1e-12)
    np.testing.assert_allclose(unnamed_parts[0], second_and_last, rtol=1e-12)
    np.testing.assert_allclose(unnamed_parts[1], first, rtol=1e-12)
    # layer 4 is in no group, so frozen in every row: the rows sum to the NTK
    # of the network with layer 4 frozen, not to the full NTK
    np.testing.assert_allclose(unnamed_parts.sum(0), covered, rtol=1e-12)
    assert rel_err(covered, named_parts.sum(0)) > 0.01


def test_parameter_free_and_frozen_layers_contribute_zero(x64):
    layers = [
        stax.Dense(8, b_std=0.3),
        stax.Relu(),
        Frozen(stax.Dense(8, W_std=1.4, b_std=0.2)),
        stax.Erf(),
        stax.Dense(1, b_std=0.1),
    ]
    x1, x2 = inputs((3,), n1=3, n2=2)
    default = ntk_decomposition(layers)  # groups found at each call
    explicit = ntk_decomposition(layers, [0, 1, 2, [3], 4])
    default_parts, explicit_parts, full = fast_jit(
        lambda: (
            default(x1, x2),
            explicit(x1, x2),
            stax.serial(*layers)[2](x1, x2, "ntk"),
        )
    )
    labels = tuple(g.label for g in default.resolve(x1.shape))
    assert labels == ("0:Dense", "4:Dense")  # no Relu, Erf, Frozen
    assert ntk_decomposition(layers, input_shape=x1.shape).labels == labels
    np.testing.assert_allclose(default_parts.sum(0), full, rtol=1e-12)
    assert explicit.labels[1] == "1:ABRelu"  # NT names Relu so
    for row in (1, 2, 3):
        np.testing.assert_array_equal(explicit_parts[row], 0.0)
    # two groupings, two jitted code paths: equal up to float64 rounding
    np.testing.assert_allclose(explicit_parts[[0, 4]], default_parts, rtol=1e-12)


def test_kernel_fn_fields_and_kwargs(x64):
    x1, x2 = inputs((4, 4, 2), n1=3, n2=2)
    decomposition = ntk_decomposition(cnn())
    reference = stax.serial(*cnn())[2]
    mlp = ntk_decomposition(deep_mlp())
    flat = x1[:, 0, 0]
    get = ("nngp", "ntk", "cov1")
    (k, ref, nngp), (parts, full) = fast_jit(
        lambda: (
            (
                decomposition.kernel_fn(x1, x2, get),
                reference(x1, x2, get),
                decomposition.kernel_fn(x1, x2, "nngp"),
            ),
            # NT keyword arguments reach every layer
            (
                mlp(flat, diagonal_batch=False),
                stax.serial(*deep_mlp())[2](flat, None, "ntk", diagonal_batch=False),
            ),
        )
    )
    np.testing.assert_array_equal(k.nngp, ref.nngp)
    np.testing.assert_array_equal(nngp, ref.nngp)
    np.testing.assert_array_equal(k.cov1, ref.cov1)
    assert k.ntk.shape == (3, *ref.ntk.shape)
    np.testing.assert_allclose(k.ntk.sum(0), ref.ntk, rtol=1e-12)
    np.testing.assert_allclose(parts.sum(0), full, rtol=1e-12)


def test_kernel_input_treats_upstream_as_frozen(x64):
    front = stax.serial(stax.Dense(8, b_std=0.2), stax.Relu())
    back = [stax.Dense(8, W_std=1.3, b_std=0.3), stax.Erf(), stax.Dense(1)]
    x1, x2 = inputs((3,), n1=3, n2=2)
    decomposition = ntk_decomposition(back)

    def everything():
        k_in = front[2](x1, x2)
        return (
            k_in.ntk,
            decomposition.kernel_fn(k_in, get="ntk"),
            stax.serial(Frozen(front), *back)[2](x1, x2, "ntk"),
            stax.serial(Frozen(front), *freeze_all_but(back, {2}))[2](x1, x2, "ntk"),
        )

    ntk_in, parts, full, readout = fast_jit(everything)
    assert np.abs(ntk_in).min() > 0  # the upstream NTK is not zero
    np.testing.assert_allclose(parts.sum(0), full, rtol=1e-12)
    np.testing.assert_allclose(parts[1], readout, rtol=1e-12)


@pytest.mark.parametrize("second", SECONDS)
def test_jit(second, x64):
    """`jax.jit` of the decomposition's kernel_fn with a static `get` and of
    the decomposition with a static keyword, with groups of several layers.

    The full NTK is jitted the same way: with x2 = None, NT's Relu takes
    arccos(~1) on the diagonal, where XLA's optimizations alone move NT's own
    NTK by ~4e-10 relative in float64."""
    _, references = analytic("residual", "float64")
    x1, x2 = inputs((3,), n1=3, n2=2)
    x2 = x2 if second == "x2" else None
    full = jax.jit(stax.serial(*residual())[2], static_argnames="get")(x1, x2, "ntk")
    decomposition = ntk_decomposition(residual(), {"in": 0, "out": [2, 5]})
    k = jax.jit(decomposition.kernel_fn, static_argnames="get")(x1, x2, ("nngp", "ntk"))
    parts = jax.jit(decomposition, static_argnames="diagonal_batch")(
        x1, x2, diagonal_batch=True
    )
    assert decomposition.labels == ("in", "out")
    assert k.nngp.shape == k.ntk.shape[1:] == (3, 2 if second == "x2" else 3)
    np.testing.assert_allclose(k.ntk.sum(0), full, rtol=1e-12)
    np.testing.assert_allclose(parts, k.ntk, rtol=1e-12)
    if second == "x2":
        only = references["x2"]["frozen"]  # one network per layer 0, 2, 5
        np.testing.assert_allclose(k.ntk[0], only[0], rtol=1e-12)
        np.testing.assert_allclose(k.ntk[1], only[1] + only[2], rtol=1e-12)


# Empirical ---------------------------------------------------------------------


# Small widths (8, 4 channels) and, for the CNN, x2 != x1 only: Jacobians
# compile slowly on CPU.
EMPIRICAL = {
    "mlp": (lambda: deep_mlp(depth=2), (3,), (0, 2, 4), SECONDS),
    "cnn": (*FAMILIES["cnn"], ("x2",)),
    "residual": (*FAMILIES["residual"], SECONDS),
    "repeat": (*FAMILIES["repeat"], ("x2",)),
    "attention": (*FAMILIES["attention"], ("x2",)),
}


@functools.cache
def empirical(family: str):
    """Empirical decomposition and references (float64), as for `analytic`."""
    assert jnp.zeros(()).dtype == jnp.float64
    make, shape, param_layers, seconds = EMPIRICAL[family]
    init_fn, apply_fn, _ = stax.serial(*make())
    x1, x2 = inputs(shape, n1=3, n2=2)
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    decomposition = empirical_ntk_decomposition(make(), input_shape=x1.shape)
    tail = empirical_ntk_decomposition(make(), param_layers[1:])
    # the same values, with every layer but one frozen
    only = {}
    for i in param_layers:
        init_i, apply_i, _ = stax.serial(*freeze_all_but(make(), {i}))
        like = jax.eval_shape(lambda i=init_i: i(jax.random.PRNGKey(0), x1.shape)[1])
        only[i] = apply_i, freeze_like(params, like)

    def everything(x1, x2, params, only_params):
        results = {
            name: dict(
                parts=decomposition(x1, second, params),
                nt=nt.empirical_ntk_fn(apply_fn, implementation=1)(x1, second, params),
            )
            for name, second in zip(SECONDS, (x2, None))
            if name in seconds
        }
        results["x2"]["ours"] = empirical_ntk_fn(apply_fn)(x1, x2, params)
        results["x2"]["tail"] = tail(x1, x2, params)
        results["x2"]["only"] = [
            empirical_ntk_fn(only[i][0])(x1, x2, only_params[i]) for i in param_layers
        ]
        return results

    only_params = {i: p for i, (_, p) in only.items()}
    return decomposition, fast_jit(everything, x1, x2, params, only_params)


@pytest.mark.parametrize(
    "family, second",
    [(family, second) for family in EMPIRICAL for second in EMPIRICAL[family][3]],
)
def test_empirical_decomposition(family, second, x64):
    decomposition, results = empirical(family)
    param_layers = EMPIRICAL[family][2]
    parts = results[second]["parts"]
    # made from the layers, it labels its rows as the analytic decomposition
    analytic_labels = ntk_decomposition(EMPIRICAL[family][0]()).resolve(
        inputs(EMPIRICAL[family][1], n1=3, n2=2, same=True)[0].shape
    )
    assert decomposition.labels == tuple(g.label for g in analytic_labels)
    assert [g.indices for g in decomposition.groups] == [(i,) for i in param_layers]
    assert parts.shape == (len(param_layers), *results[second]["nt"].shape)
    np.testing.assert_allclose(parts.sum(0), results[second]["nt"], rtol=1e-12)
    for part in parts:
        assert rel_err(part, results[second]["nt"]) > 0.001
    if second == "x2":
        np.testing.assert_allclose(parts.sum(0), results["x2"]["ours"], rtol=1e-12)
        for part, expected, i in zip(parts, results["x2"]["only"], param_layers):
            np.testing.assert_allclose(part, expected, rtol=1e-12, err_msg=str(i))
        # the first layer with parameters in no group: in no row
        for part, expected in zip(results["x2"]["tail"], results["x2"]["only"][1:]):
            np.testing.assert_allclose(part, expected, rtol=1e-12)


def test_empirical_frozen_layers_groups_and_options(x64):
    layers = [
        stax.Dense(8, b_std=0.3),
        stax.Relu(),
        Frozen(stax.Dense(8, W_std=1.4, b_std=0.2)),
        stax.Erf(),
        stax.Dense(2, b_std=0.1),
    ]
    init_fn, apply_fn, _ = stax.serial(*layers)
    x1, x2 = inputs((3,), n1=3, n2=2)
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    default = empirical_ntk_decomposition(apply_fn)
    explicit = empirical_ntk_decomposition(apply_fn, {"free": [1, 2], "all": [0, 4]})
    options = dict(trace_axes=(), diagonal_axes=(0,))
    with_options = empirical_ntk_decomposition(apply_fn, **options)
    got, want = fast_jit(
        lambda: (
            (
                default(x1, x2, params),
                explicit(x1, x2, params),
                with_options(x1, None, params),
            ),
            (
                empirical_ntk_fn(apply_fn)(x1, x2, params),
                nt.empirical_ntk_fn(apply_fn, implementation=1, **options)(
                    x1, None, params
                ),
            ),
        )
    )
    (default_parts, explicit_parts, option_parts), (full, full_options) = got, want
    # from an apply_fn, the groups come from the params
    assert tuple(g.label for g in default.resolve(params)) == ("0", "4")
    assert tuple(g.label for g in explicit.resolve(params)) == ("free", "all")
    np.testing.assert_allclose(default_parts.sum(0), full, rtol=1e-12)
    np.testing.assert_array_equal(explicit_parts[0], 0.0)
    np.testing.assert_allclose(explicit_parts[1], full, rtol=1e-12)
    # NT's trace/diagonal options; NT differentiates the frozen leaves too,
    # whose Jacobian is zero
    assert option_parts.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(option_parts.sum(0), full_options, rtol=1e-12)


def several_outputs():
    # A list of two outputs: one NTK (and one stack of rows) per output.
    return [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.Relu(),
        stax.FanOut(2),
        stax.parallel(stax.Dense(1, b_std=0.1), stax.Dense(3, W_std=1.4, b_std=0.3)),
    ]


def dropout():
    # `apply_fn_kwargs`: the `rng` of `Dropout`, split by NT for x1 and x2.
    return [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.Dropout(0.7),
        stax.Erf(),
        stax.Dense(2, W_std=1.1, b_std=0.1),
    ]


OTHER_CALLS = {
    # network, its layers with parameters, apply_fn_kwargs
    "several-outputs": (several_outputs, (0, 3), {}),
    "kwargs": (dropout, (0, 3), {"rng": jax.random.PRNGKey(5)}),
}


@pytest.mark.parametrize("second", SECONDS)
@pytest.mark.parametrize("family", OTHER_CALLS)
def test_empirical_decomposition_of_other_calls(family, second, x64):
    """Networks the structured contractions leave to NT: each row equals NT
    implementation 1 on the network with every other layer frozen, and the rows
    sum to NT implementation 1's full NTK (per output)."""
    make, param_layers, kwargs = OTHER_CALLS[family]
    init_fn, apply_fn, _ = stax.serial(*make())
    x1, x2 = inputs((3,), n1=3, n2=2, same=second == "x2=None")
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    decomposition = empirical_ntk_decomposition(make(), input_shape=x1.shape)
    only = []
    for i in param_layers:
        init_i, apply_i, _ = stax.serial(*freeze_all_but(make(), {i}))
        like = jax.eval_shape(lambda i=init_i: i(jax.random.PRNGKey(0), x1.shape)[1])
        only.append((apply_i, freeze_like(params, like)))

    def everything(x1, x2, params, kwargs):
        reference = nt.empirical_ntk_fn(apply_fn, implementation=1)
        rows = [
            nt.empirical_ntk_fn(apply_i, implementation=1)(x1, x2, p, **kwargs)
            for apply_i, p in only
        ]
        return (
            decomposition(x1, x2, params, **kwargs),
            reference(x1, x2, params, **kwargs),
            rows,
        )

    parts, full, rows = fast_jit(everything, x1, x2, params, kwargs)
    assert [g.indices for g in decomposition.groups] == [(i,) for i in param_layers]
    if family == "several-outputs":
        assert isinstance(parts, list) and len(parts) == len(full) == 2
    else:
        parts, full, rows = [parts], [full], [[row] for row in rows]
    for k, (stack, ntk) in enumerate(zip(parts, full)):
        assert stack.shape == (len(param_layers), *ntk.shape)
        np.testing.assert_allclose(stack.sum(0), ntk, rtol=1e-12, err_msg=str(k))
        for g, row in enumerate(rows):
            assert rel_err(stack[g], ntk) > 0.001
            np.testing.assert_allclose(stack[g], row[k], rtol=1e-12, err_msg=str(g))


@pytest.mark.parametrize("family", ["mlp", "several-outputs"])
def test_empirical_decomposition_without_groups_is_an_empty_stack(family, x64):
    """Every layer frozen: no default group, a stack of no rows, per output."""
    make = {"mlp": lambda: deep_mlp(depth=1), "several-outputs": several_outputs}
    layers = [Frozen(layer) for layer in make[family]()]
    init_fn, apply_fn, _ = stax.serial(*layers)
    x1, x2 = inputs((3,), n1=3, n2=2)
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    parts = empirical_ntk_decomposition(layers)(x1, x2, params)
    full = nt.empirical_ntk_fn(apply_fn, implementation=1)(x1, x2, params)
    for stack, ntk in zip(*(jax.tree_util.tree_leaves(t) for t in (parts, full))):
        assert stack.shape == (0, *ntk.shape) and stack.dtype == ntk.dtype
    assert jax.tree_util.tree_structure(parts) == jax.tree_util.tree_structure(full)


# Errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, groups, error, match",
    [
        (deep_mlp(depth=2), [0, [2, 0]], ValueError, "layer 0 is in both group"),
        (deep_mlp(depth=2), {"a": [2, 2]}, ValueError, "layer 2 is twice in group"),
        (deep_mlp(depth=2), [0, 7], ValueError, "names layer 7, but the network has 5"),
        (deep_mlp(depth=2), [0, -6], ValueError, "names layer -6"),
        (deep_mlp(depth=2), {"a": []}, ValueError, "group 'a' is empty"),
        (deep_mlp(depth=2), [], ValueError, "`groups` is empty"),
        (deep_mlp(depth=2), [0, "Dense"], TypeError, "holds 'Dense'"),
        (deep_mlp(depth=2), [True], TypeError, "holds True"),
        (deep_mlp(depth=2), "0", TypeError, "`groups` must be None"),
        (stax.serial(stax.Dense(1)), None, TypeError, "not a list of layers"),
        ([stax.Dense(1), stax.Relu], None, TypeError, r"layers\[1\] is the function"),
        ([stax.Relu, stax.Erf, stax.Relu], None, TypeError, "function 'Relu'"),
        ([stax.Dense(1), (1, 2, 3)], None, TypeError, r"layers\[1\], init_fn must be"),
        ([stax.Dense(1), stax.Dense(1)[:2]], None, ValueError, "example_libraries"),
        ([], None, ValueError, "`layers` is empty"),
    ],
)
def test_errors(layers, groups, error, match):
    with pytest.raises(error, match=match):
        ntk_decomposition(layers, groups)


def test_empirical_errors_and_unresolved_labels():
    init_fn, apply_fn, _ = stax.serial(*deep_mlp(depth=2))
    x1, x2 = inputs((3,), n1=3, n2=2, same=True)
    params = jax.eval_shape(lambda: init_fn(jax.random.PRNGKey(0), x1.shape)[1])
    decomposition = empirical_ntk_decomposition(apply_fn, [0, 9])
    with pytest.raises(ValueError, match="names layer 9, but the network has 5"):
        decomposition(x1, x2, params)
    with pytest.raises(TypeError, match="tuple with one entry per layer"):
        empirical_ntk_decomposition(apply_fn)(x1, x2, {"w": params})
    with pytest.raises(TypeError, match="params is None"):
        empirical_ntk_decomposition(apply_fn)(x1, x2, None)
    with pytest.raises(ValueError, match="need the input shape"):
        _ = ntk_decomposition(deep_mlp(depth=2)).labels
    with pytest.raises(ValueError, match="pass the layers instead"):
        _ = empirical_ntk_decomposition(apply_fn).labels
    # nothing is stored by a call: still unknown afterwards
    default = ntk_decomposition(deep_mlp(depth=2))
    default(x1)
    with pytest.raises(ValueError, match="need the input shape"):
        _ = default.labels
    assert ntk_decomposition(deep_mlp(depth=2), [4]).labels == ("4:Dense",)
