"""Frozen(layer): its kernel, its apply_fn, and the identities it satisfies.

Identities (derivations/identities.md, sections 1-6), for several families:

1. frozen first layer -> NTK 0 right after it;  2. all frozen -> NTK 0;
3. readout-only -> NTK == NNGP;  4. sum rule over layers;
5. frozen Dense/Conv: ntk_out = W_std^2 * (layer's linear map of ntk_in).
Plus composition laws, `get` subsets, `x2=None`, jit, nt.batch, masking,
float32/float64, and the cancellation-free float32 case.

apply_fn: same outputs, white-box input gradients,
exactly zero parameter gradients, and frozen values really reach the output.

Every layer and combinator of `neural_tangents.stax`: for each layer `L`
after a trainable block (so the incoming NTK is non-zero),
in float64:
- every Kernel field of `Frozen(L)` but `ntk` equals `L`'s exactly;
- the frozen NTK equals the linear part of `L`'s NTK map computed by a second
  code path (two passes and a subtraction), at the incoming NTK and along two
  random directions;
- the frozen NTK map is linear: additive and homogeneous along random
  directions (one ray would only check homogeneity);
- for layers with parameters that part differs from both the unfrozen NTK and
  the incoming NTK (so neither the "unfrozen" nor the "identity" guess passes);
- attention and `FanInProd` match independent closed forms (numpy).

Against the empirical NTK (slow): the analytic frozen NTK vs the Monte Carlo mean of
finite-width empirical NTKs
(`nt.empirical_ntk_fn` on the frozen network's `apply_fn`), per architecture
family. The tolerance is the Monte Carlo standard error of the mean plus an
O(1/width) bias allowance (nt_frozen.validation.statistics); the "identity"
guess and the unfrozen NTK must fail the same check.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, FrozenParams, LearningRate, nt, stax
from nt_frozen.networks import FAMILIES as NETWORK_FAMILIES
from nt_frozen.networks import frozen_family
from nt_frozen.testing import (
    LAYER_CASES,
    assert_same_fields_but_ntk,
    freeze_all_but,
    inputs,
    is_kernel,
    layer_inputs,
    linear_part_by_subtraction,
    rel_err,
    relu_arccos,
)
from nt_frozen.validation.controls import IdentityGuess
from nt_frozen.validation.statistics import agreement

W_STD, B_STD = 1.5, 0.4


# The zoo's families at small widths: the identities are exact at any width.
EXACT_WIDTH = {"cnn": 8, "attention": 8, "repeat": 8}
FAMILIES = {
    name: (
        functools.partial(family.layers, EXACT_WIDTH.get(name, 16)),
        family.input_shape,
    )
    for name, family in NETWORK_FAMILIES.items()
}


def gram_blocks(x1, x2):
    """Input NNGP `x x'^T / d` over all points (x1 then x2), float64, and the
    slice of the (x1, x2) block."""
    x = np.concatenate([x1, x1 if x2 is None else x2]).astype(np.float64)
    n1 = len(x1)
    return x @ x.T / x.shape[1], (slice(0, n1), slice(n1, None))


# float64 checks the sum rule to 1e-12; the float32 run (rtol 1e-5) adds only
# the dtype plumbing, so it runs with the long tests (-m slow).
@pytest.fixture(params=[pytest.param("float32", marks=pytest.mark.slow), "float64"])
def dtype(request):
    if request.param == "float64":
        request.getfixturevalue("x64")
    return request.param


@pytest.fixture(params=[False, True], ids=["x2", "x2=None"])
def same(request):
    return request.param


def tol(dtype):
    # float64: separately compiled programs round the diagonal's arccos
    # differently (to ~1e-9 on jax 0.4-0.6); a wrong formula is off by O(1).
    return 1e-8 if dtype == "float64" else 2e-5


def kernels(nets, x1, x2, get="ntk", **kwargs):
    """The networks' kernels, compiled as one program (NT's op-by-op dispatch
    of a kernel_fn costs about ten times its compilation at these sizes, and
    each program compiled costs a fixed overhead)."""
    return jax.jit(lambda a, b: [net[2](a, b, get, **kwargs) for net in nets])(x1, x2)


@pytest.mark.parametrize("family", FAMILIES)
def test_sum_rule(family, dtype, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    full, *parts = kernels(
        [stax.serial(*layers)]
        + [stax.serial(*freeze_all_but(layers, {i})) for i in range(len(layers))],
        x1,
        x2,
    )
    assert full.dtype == jnp.dtype(dtype)
    assert rel_err(sum(parts), full) < tol(dtype)
    # power: dropping the frozen layers' own terms matters for every family.
    assert rel_err(parts[-1], full) > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_first_layer_and_all_frozen(family, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    all_frozen = stax.serial(*[Frozen(lyr) for lyr in layers])
    first, after_first, every_one, whole = kernels(
        [
            stax.serial(Frozen(layers[0])),
            stax.serial(Frozen(layers[0]), *layers[1:]),
            all_frozen,
            stax.serial(Frozen(stax.serial(*layers))),
        ],
        x1,
        x2,
        ("nngp", "ntk"),
    )
    np.testing.assert_array_equal(first.ntk, 0.0)
    assert np.abs(first.nngp).max() > 0
    np.testing.assert_array_equal(every_one.ntk, 0.0)
    np.testing.assert_array_equal(whole.ntk, 0.0)
    # and the empirical NTK of the all-frozen network is exactly 0 as well
    init_fn, apply_fn, _ = all_frozen
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    emp = jax.jit(nt.empirical_ntk_fn(apply_fn, implementation=1))(x1, x2, params)
    np.testing.assert_array_equal(emp, 0.0)
    assert np.abs(after_first.ntk).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_only_is_nngp(family, dtype, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    net = stax.serial(Frozen(stax.serial(*layers[:-1])), layers[-1])
    k, unfrozen = kernels([net, stax.serial(*layers)], x1, x2, ("nngp", "ntk"))
    if family.endswith("standard"):
        # Standard parameterization: the readout's own term is
        # n_in * nngp_in + 1 (finite fan-in n_in = 16), not W_std^2 nngp_in +
        # b_std^2. Closed form, float64, independent of NT: ReLU arc-cosine maps.
        # The zoo's MLP: (W_std, b_std) = (1.2, 0.3), (1.5, 0.4), (1.5, 0.2).
        gram, block = gram_blocks(x1, x2)
        hidden, _ = relu_arccos(1.2**2 * gram + 0.3**2)
        hidden, _ = relu_arccos(1.5**2 * hidden + 0.4**2)
        expected = (16 * hidden + 1.0)[block]
        np.testing.assert_allclose(
            k.nngp, (1.5**2 * hidden + 0.2**2)[block], rtol=tol(dtype)
        )
        assert rel_err(expected, k.nngp) > 0.5  # the NTK-parameterization rule fails
    else:
        expected = k.nngp
    np.testing.assert_allclose(k.ntk, expected, rtol=tol(dtype), atol=tol(dtype))
    assert rel_err(unfrozen.ntk, k.nngp) > 0.05  # the unfrozen NTK is not the NNGP


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("frozen_b_std", [None, 0.7, 1e3])
def test_frozen_dense_scales_ntk_by_w_std_squared(
    dtype, parameterization, frozen_b_std
):
    """Frozen Dense: ntk_out = W_std^2 ntk_in, against a float64 closed form of
    ntk_in (Dense(32, b_std=0.5) then ReLU, independent of NT)."""
    x1, x2 = inputs((4,))
    pre = stax.serial(
        stax.Dense(32, b_std=0.5, parameterization=parameterization),
        stax.Relu(),
    )
    dense = stax.Dense(
        32, W_std=W_STD, b_std=frozen_b_std, parameterization=parameterization
    )
    ntk_in = pre[2](x1, x2, "ntk")
    ntk_out = stax.serial(pre, Frozen(dense))[2](x1, x2, "ntk")

    gram, block = gram_blocks(x1, x2)
    _, relu_derivative = relu_arccos(gram + 0.5**2)
    # The first Dense's own term: its output NNGP (NTK parameterization), or
    # fan-in d = 4 times its input NNGP plus 1 for the bias (standard).
    own = gram + 0.5**2 if parameterization == "ntk" else 4 * gram + 1.0
    closed_in = (relu_derivative * own)[block]
    np.testing.assert_allclose(ntk_in, closed_in, rtol=tol(dtype))
    np.testing.assert_allclose(ntk_out, W_STD**2 * closed_in, rtol=tol(dtype))
    # float32 with b_std=1e3: the own term is ~1e6 times larger than W^2 ntk_in;
    # no cancellation is allowed (derivations/identities.md, section 6): as
    # exact as ntk_in itself.
    np.testing.assert_allclose(
        ntk_out, W_STD**2 * ntk_in, rtol=2e-6 if dtype == "float32" else 1e-12
    )
    # Neither the identity guess nor the unfrozen layer's NTK passes.
    assert rel_err(ntk_out, ntk_in) > 0.5
    assert rel_err(ntk_out, stax.serial(pre, dense)[2](x1, x2, "ntk")) > 0.05


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_frozen_conv_is_w_std_squared_times_conv_map(x64, parameterization):
    x1, x2 = inputs((5, 5, 2))
    full = {"diagonal_spatial": False}
    pre = stax.serial(stax.Conv(8, (3, 3), padding="SAME", b_std=0.3), stax.Erf())
    conv = dict(
        filter_shape=(2, 3),
        strides=(1, 2),
        padding="SAME",
        parameterization=parameterization,
    )
    net = stax.serial(pre, Frozen(stax.Conv(8, W_std=W_STD, b_std=0.9, **conv)))
    # The conv's linear map on covariances, applied to ntk_in as if it were an
    # NNGP, through a *different* code path (the unfrozen nngp computation).
    conv_map = stax.Conv(8, W_std=1.0, b_std=None, **conv)[2]

    @jax.jit  # one program (op by op, NT compiles every operation on its own)
    def both(x1, x2):
        k_in = pre[2](x1, x2, **full)
        as_nngp = k_in.replace(nngp=k_in.ntk, cov1=None, cov2=None)
        return net[2](x1, x2, "ntk", **full), conv_map(as_nngp, **full).nngp

    out, mapped = both(x1, x2)
    np.testing.assert_allclose(out, W_STD**2 * mapped, rtol=1e-12)


def test_composition_laws(x64):
    x1, x2 = inputs((4,))
    a, b = (
        stax.Dense(8, W_std=1.4, b_std=0.3),
        stax.serial(stax.Relu(), stax.Dense(8, W_std=0.7)),
    )
    pre = stax.Dense(8, b_std=0.1)
    whole = stax.serial(pre, Frozen(stax.serial(a, b)))[2](x1, x2)
    parts = stax.serial(pre, Frozen(a), Frozen(b))[2](x1, x2)
    np.testing.assert_allclose(whole.ntk, parts.ntk, rtol=1e-12)
    np.testing.assert_allclose(whole.nngp, parts.nngp, rtol=1e-12)
    frozen = Frozen(a)
    assert Frozen(frozen) is frozen
    twice = stax.serial(pre, Frozen(Frozen(a)))[2](x1, x2, "ntk")
    np.testing.assert_array_equal(twice, stax.serial(pre, frozen)[2](x1, x2, "ntk"))


def test_get_subsets_and_jit(same, x64):
    # float64: near the diagonal NT's arccos turns float32 reordering (jit) into
    # errors up to ~sqrt(eps32), which would hide a real mistake.
    x1, x2 = inputs((4,), same=same)
    layers = FAMILIES["mlp-ntk"][0]()
    net = stax.serial(layers[0], layers[1], Frozen(layers[2]), *layers[3:])
    k = net[2](x1, x2)
    np.testing.assert_array_equal(net[2](x1, x2, "nngp"), k.nngp)
    np.testing.assert_allclose(net[2](x1, x2, "ntk"), k.ntk, rtol=1e-6)
    both = jax.jit(net[2], static_argnames="get")(x1, x2, ("ntk", "nngp", "cov1"))
    assert both.ntk.dtype == jnp.float64
    np.testing.assert_allclose(both.ntk, k.ntk, rtol=1e-7)
    np.testing.assert_allclose(both.cov1, k.cov1, rtol=1e-7)


def test_nt_batch_matches_unbatched():
    x1, x2 = inputs((4, 4, 2), n1=6, n2=4)
    layers = FAMILIES["cnn"][0]()
    net = stax.serial(*layers[:2], Frozen(layers[2]), *layers[3:])
    (full,) = kernels([net], x1, x2, ("nngp", "ntk"))
    # Batches of a compiled kernel_fn, as NT advises (one program per batch shape).
    kernel_fn = jax.jit(net[2], static_argnames="get")
    batched = nt.batch(kernel_fn, batch_size=2, store_on_device=False)(
        x1, x2, ("nngp", "ntk")
    )
    np.testing.assert_allclose(batched.ntk, full.ntk, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched.nngp, full.nngp, rtol=1e-5, atol=1e-7)


def test_nt_batch_on_several_devices():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from nt_frozen import Frozen, nt, stax
        assert jax.device_count() == 2, jax.devices()
        net = stax.serial(stax.Dense(8, b_std=.2), stax.Relu(),
                          Frozen(stax.Dense(8, W_std=1.5, b_std=.3)), stax.Relu(),
                          stax.Dense(1))
        x1 = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
        x2 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
        full = net[2](x1, x2, 'ntk')
        batched = nt.batch(net[2], batch_size=2, device_count=-1)(x1, x2, 'ntk')
        np.testing.assert_allclose(batched, full, rtol=1e-5, atol=1e-7)
        print('ok')
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_masking(x64):
    """mask_constant: the readout-only identity and the sum rule still hold, and
    masked positions do not leak into the frozen NTK."""
    x1, x2 = inputs((6, 3))
    x1 = x1.at[0, 4:].set(jnp.nan).at[2, 1].set(jnp.nan)
    x2 = x2.at[1, 3:].set(jnp.nan)
    layers = [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.Relu(),
        stax.GlobalSelfAttention(8, 8, 8, n_heads=1, W_out_std=1.3),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, b_std=0.3),
    ]
    full, *parts, readout = kernels(
        [stax.serial(*layers)]
        + [stax.serial(*freeze_all_but(layers, {i})) for i in range(len(layers))]
        + [stax.serial(Frozen(stax.serial(*layers[:-1])), layers[-1])],
        x1,
        x2,
        ("nngp", "ntk"),
        mask_constant=jnp.nan,
    )
    assert np.isfinite(full.ntk).all()
    assert rel_err(sum(p.ntk for p in parts), full.ntk) < 1e-10
    np.testing.assert_allclose(readout.ntk, readout.nngp, rtol=1e-12)
    # the mask really changes the kernel (otherwise this test says nothing)
    (unmasked,) = kernels([stax.serial(*layers)], *map(jnp.nan_to_num, (x1, x2)))
    assert rel_err(unmasked, full.ntk) > 1e-3


def test_diagonal_requirements_propagate():
    """A frozen layer keeps the wrapped layer's input requirements (NT's
    `kernel_fn.input_req`, which `stax.serial` combines)."""
    for lyr in [
        stax.Conv(4, (2, 2)),
        stax.GlobalSelfAttention(4, 4, 4, 1),
        stax.LayerNorm(),
        stax.Relu(),
    ]:
        assert Frozen(lyr)[2].input_req == lyr[2].input_req


# --- apply_fn -------------------------------------------------------------------

LAYERS = {
    "dense": (
        stax.serial(stax.Dense(8, b_std=0.3), stax.Relu(), stax.Dense(3)),
        (5, 4),
    ),
    "conv": (
        stax.serial(
            stax.Conv(4, (2, 2), b_std=0.1),
            stax.Relu(),
            stax.AvgPool((2, 2)),
            stax.Flatten(),
            stax.Dense(2),
        ),
        (3, 5, 5, 2),
    ),
    "attention": (
        stax.serial(
            stax.Dense(4), stax.GlobalSelfAttention(4, 4, 4, 2), stax.GlobalAvgPool()
        ),
        (3, 6, 2),
    ),
}


@pytest.mark.parametrize("name", LAYERS)
def test_same_params_outputs_and_input_gradients(name):
    layer, shape = LAYERS[name]
    frozen = Frozen(layer)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    key = jax.random.PRNGKey(1)
    out_shape, params = layer[0](key, x.shape)
    f_shape, f_params = frozen[0](key, x.shape)
    assert f_shape == out_shape
    assert isinstance(f_params, FrozenParams)
    jax.tree_util.tree_map(np.testing.assert_array_equal, f_params.params, params)
    np.testing.assert_array_equal(frozen[1](f_params, x), layer[1](params, x))

    gx = jax.grad(lambda x: jnp.sum(jnp.sin(layer[1](params, x))))(x)
    gx_frozen = jax.grad(lambda x: jnp.sum(jnp.sin(frozen[1](f_params, x))))(x)
    np.testing.assert_allclose(gx_frozen, gx, rtol=1e-6)
    assert np.abs(gx).max() > 0

    gp = jax.grad(lambda p: jnp.sum(frozen[1](p, x) ** 2))(f_params)
    for leaf in jax.tree_util.tree_leaves(gp):
        np.testing.assert_array_equal(leaf, 0.0)
    # jit and raw (unwrapped) parameters behave the same
    np.testing.assert_allclose(
        jax.jit(frozen[1])(f_params, x), layer[1](params, x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(frozen[1](params, x), layer[1](params, x))


def test_replacing_a_frozen_value_changes_the_output():
    net = stax.serial(stax.Dense(8), stax.Relu(), Frozen(stax.Dense(2)))
    x = jnp.ones((3, 4))
    _, params = net[0](jax.random.PRNGKey(0), x.shape)
    w, b = params[2].params
    changed = (params[0], params[1], FrozenParams((2.0 * w, b)))
    assert not np.allclose(net[1](changed, x), net[1](params, x))


def test_flux_frozen_layer_checks():
    """FluxML's `Frozen` proposal: a frozen and an unfrozen copy of a net
    share parameters; loss = sum(m0(x) - m1(x)) has zero gradient w.r.t. the
    free parameters (they enter both copies) and non-zero gradient w.r.t. the
    frozen ones (they are only differentiated through m0)."""
    inner = stax.serial(stax.Dense(6, b_std=0.2), stax.Erf())
    free, frozen_part = stax.Dense(6, b_std=0.1), inner
    m0 = stax.serial(free, frozen_part)  # everything trainable
    m1 = stax.serial(free, Frozen(frozen_part))  # second block frozen
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    _, (p_free, p_frozen) = m0[0](jax.random.PRNGKey(1), x.shape)

    def loss(p_free, p_frozen):
        return jnp.sum(
            m0[1]((p_free, p_frozen), x) - m1[1]((p_free, FrozenParams(p_frozen)), x)
        )

    g_free, g_frozen = jax.grad(loss, argnums=(0, 1))(p_free, p_frozen)
    for leaf in jax.tree_util.tree_leaves(g_free):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-6)
    assert (
        max(float(jnp.abs(leaf).max()) for leaf in jax.tree_util.tree_leaves(g_frozen))
        > 1e-3
    )


def test_parameter_free_layers_are_unchanged():
    for lyr in [stax.Relu(), stax.LayerNorm(), stax.Flatten(), stax.GlobalAvgPool()]:
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 2))
        _, params = Frozen(lyr)[0](jax.random.PRNGKey(0), x.shape)
        assert params == ()
        np.testing.assert_array_equal(Frozen(lyr)[1](params, x), lyr[1]((), x))


def test_multi_input_output_layers():
    branchy = stax.serial(
        stax.FanOut(2), stax.parallel(stax.Dense(3), stax.Dense(3)), stax.FanInConcat()
    )
    x = jnp.ones((2, 4))
    key = jax.random.PRNGKey(0)
    _, params = branchy[0](key, x.shape)
    _, f_params = Frozen(branchy)[0](key, x.shape)
    np.testing.assert_array_equal(
        Frozen(branchy)[1](f_params, x), branchy[1](params, x)
    )


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (stax.Relu, TypeError, "Call it first"),
        ((lambda k, s: (s, ()), lambda p, x: x), ValueError, "no analytic kernel_fn"),
        ((1, 2, 3), TypeError, "init_fn must be callable"),
        ("Dense", TypeError, "got str"),
        ([stax.Relu()[0]], ValueError, "1 items"),
        (
            (stax.Relu()[0], stax.Relu()[1], None),
            TypeError,
            "kernel_fn must be callable",
        ),
    ],
)
def test_bad_input_errors(bad, error, match):
    with pytest.raises(error, match=match):
        Frozen(bad)


@pytest.mark.parametrize(
    "fn, wrap", [(jnp.tanh, Frozen), (jnp.tanh, LearningRate), (jax.nn.relu, Frozen)]
)
def test_a_plain_function_gets_a_stax_layer_that_exists(fn, wrap):
    """`Frozen(jnp.tanh)` suggested `stax.tanh(...)`, which does not exist:
    every `stax.X` the message names exists, and the suggested layer computes
    the function given."""
    with pytest.raises(TypeError) as info:
        wrap(fn) if wrap is Frozen else wrap(fn, 0.5)
    message = str(info.value)
    named = re.findall(r"stax\.(\w+)\(", message)
    assert named and all(callable(getattr(stax, name, None)) for name in named)
    x = jnp.linspace(-2.0, 2.0, 7).reshape(1, 7)
    suggested = named[0]
    if suggested == "ElementwiseNumerical":
        layer = stax.ElementwiseNumerical(fn, deg=25)
    else:
        layer = getattr(stax, suggested)()
    assert f"{wrap.__name__}(stax.{suggested}(" in message
    np.testing.assert_allclose(layer[1]((), x), fn(x), rtol=1e-6, atol=1e-6)


# --- Every stax layer after a trainable block -----------------------------------


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attention_linear_scaling(k, ntk):
    """sigma_OV^2 G_x ntk G_x'^T, G_x = softmax_gamma(sigma_QK K(x, a; x, gamma));
    here sigma_QK = 1, sigma_OV = W_out_std = 1.3 (derivations/frozen_rules.md 6)."""
    cov1, cov2 = (np.asarray(c, np.float64) for c in (k.cov1, k.cov2))
    g1 = _softmax(np.einsum("xxag->xag", cov1))
    g2 = _softmax(np.einsum("yybd->ybd", cov2))
    return 1.3**2 * np.einsum("xag,xygd,ybd->xyab", g1, ntk, g2)


def _attention_identity(k, ntk):
    """s^2 (2 <K, ntk> K + <K, K> ntk), s = sigma_QK sigma_OV, <A, B> summed
    over position pairs (derivations/frozen_rules.md 6)."""
    nngp = np.asarray(k.nngp, np.float64)
    s2 = (0.7 * 1.2 * 1.3 * 0.9) ** 2

    def inner(a, b):
        return np.einsum("xygd,xygd->xy", a, b)[:, :, None, None]

    return s2 * (2 * inner(nngp, ntk) * nngp + inner(nngp, nngp) * ntk)


def _fan_in_prod(ks, ntks):
    """Product rule for independent branches: sum_a ntk^a prod_{b != a} K^b."""
    k1, k2 = (np.asarray(k.nngp, np.float64) for k in ks)
    return ntks[0] * k2 + ntks[1] * k1


# Independent closed forms of the frozen NTK map, `(k_in, ntk leaves) -> ntk`.
CLOSED_FORMS = {
    "GlobalSelfAttention": lambda k, t: _attention_linear_scaling(k, t[0]),
    "GlobalSelfAttention-identity": lambda k, t: _attention_identity(k, t[0]),
    "FanInProd": _fan_in_prod,
}


def _ntk_leaves(k):
    return [kk.ntk for kk in jax.tree_util.tree_leaves(k, is_leaf=is_kernel)]


def _with_ntks(k, ntks):
    leaves, treedef = jax.tree_util.tree_flatten(k, is_leaf=is_kernel)
    return jax.tree_util.tree_unflatten(
        treedef, [kk.replace(ntk=jnp.asarray(t)) for kk, t in zip(leaves, ntks)]
    )


def _assert_close(got, expected):
    for g, e in zip(got, expected):
        scale = float(np.abs(e).max())
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize(
    "name, pre, lyr, shape, has_params, kwargs",
    LAYER_CASES,
    ids=[c[0] for c in LAYER_CASES],
)
def test_frozen_kernel_is_linear_part(x64, name, pre, lyr, shape, has_params, kwargs):
    x1, x2, kwargs = layer_inputs(shape, kwargs)

    # Two compiled programs (NT's op-by-op dispatch compiles every operation on
    # its own): the kernels, then the maps along random directions.
    @jax.jit
    def layer_kernels(x1, x2):
        # Full covariances satisfy every layer's input requirement.
        k_in = pre[2](x1, x2, diagonal_batch=False, diagonal_spatial=False, **kwargs)
        plain = lyr[2](k_in, **kwargs)
        frozen = Frozen(lyr)[2](k_in, **kwargs)
        return k_in, plain, frozen, linear_part_by_subtraction(lyr[2], k_in, **kwargs)

    k_in, plain, frozen, expected = layer_kernels(x1, x2)
    assert_same_fields_but_ntk(frozen, plain)
    got = _ntk_leaves(frozen)
    _assert_close(got, jax.tree_util.tree_leaves(expected))

    # Along random directions: linear (additive and homogeneous), and equal to
    # the unfrozen map's increment from 0 (so the unfrozen map is affine).
    def frozen_map(ntks):
        return _ntk_leaves(Frozen(lyr)[2](_with_ntks(k_in, ntks), **kwargs))

    def plain_map(ntks):
        return _ntk_leaves(lyr[2](_with_ntks(k_in, ntks), **kwargs))

    @jax.jit
    def maps(d1, d2):
        f1, f2 = frozen_map(d1), frozen_map(d2)
        added = frozen_map([a + b for a, b in zip(d1, d2)])
        scaled = frozen_map([-2.5 * a for a in d1])
        zero = plain_map([jnp.zeros_like(a) for a in d1])
        return f1, f2, added, scaled, plain_map(d1), plain_map(d2), zero

    rng = np.random.default_rng(0)
    ntks_in = _ntk_leaves(k_in)
    d1, d2 = ([rng.normal(size=t.shape) for t in ntks_in] for _ in range(2))
    f1, f2, added, scaled, p1, p2, zero = maps(d1, d2)
    _assert_close(added, [a + b for a, b in zip(f1, f2)])
    _assert_close(scaled, [-2.5 * a for a in f1])
    for p, f in ((p1, f1), (p2, f2)):
        _assert_close(f, [a - z for a, z in zip(p, zero)])
    if name in CLOSED_FORMS:
        leaves = jax.tree_util.tree_leaves(k_in, is_leaf=is_kernel)
        k_arg = leaves[0] if len(leaves) == 1 else leaves
        for d, f in ((ntks_in, got), (d1, f1)):
            _assert_close(f, [CLOSED_FORMS[name](k_arg, [np.asarray(t) for t in d])])

    unfrozen_ntk = _ntk_leaves(plain)
    same_as_unfrozen = all(
        np.allclose(g, u, rtol=1e-6) for g, u in zip(got, unfrozen_ntk)
    )
    # Parameter-free layers: freezing changes nothing. Layers with parameters:
    # the own term is really dropped, and the incoming NTK is not passed through
    # unchanged (the "identity" guess), wherever the shapes would allow it.
    assert same_as_unfrozen == (not has_params)
    if has_params:
        for g, t in zip(got, ntks_in):
            assert g.shape != t.shape or not np.allclose(g, t, rtol=1e-3)


@pytest.mark.parametrize(
    "pre, lyr, shape, has_params, kwargs",
    [c[1:] for c in LAYER_CASES[:8]],
    ids=[c[0] for c in LAYER_CASES[:8]],
)
def test_frozen_end_to_end_from_inputs(pre, lyr, shape, has_params, kwargs):
    """Same check through the public `kernel_fn(x1, x2, get)` of a serial net,
    in float32, with `jit`."""
    x1, x2, kwargs = layer_inputs(shape, kwargs)
    net_f = stax.serial(pre, Frozen(lyr))
    full = {"diagonal_batch": False, "diagonal_spatial": False}
    k_f = jax.jit(net_f[2], static_argnames=("get", *full))(
        x1, x2, ("nngp", "ntk"), **full
    )

    @jax.jit  # the references, a second program
    def references(x1, x2):
        k_in = pre[2](x1, x2, **full)
        return lyr[2](k_in).nngp, linear_part_by_subtraction(lyr[2], k_in)

    nngp, ntk = references(x1, x2)
    np.testing.assert_allclose(k_f.nngp, nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k_f.ntk, ntk, rtol=2e-4, atol=1e-5)


# --- Against the Monte Carlo mean of empirical NTKs (slow) ----------------------

N_DRAWS = 8
# The zoo's families: (width, draws); CNN channels are cheaper kept low, with
# more draws; `stax.repeat` is covered by the exact identities above.
MONTE_CARLO_FAMILIES = {
    "mlp-ntk": (1024, N_DRAWS),
    "mlp-standard": (1024, N_DRAWS),
    "cnn": (256, 24),
    "residual": (1024, N_DRAWS),
    "attention": (256, N_DRAWS),
}
# Input shapes (batch first) at which the controls are rejected.
SHAPES = {"cnn": (6, 4, 4, 2), "attention": (5, 4, 3)}


def empirical_draws(layers, x, n_draws=N_DRAWS):
    init_fn, apply_fn, _ = stax.serial(*layers)
    ntk_fn = nt.empirical_ntk_fn(apply_fn, implementation=1, vmap_axes=0)

    @jax.jit
    def one(key):
        _, params = init_fn(key, x.shape)
        return ntk_fn(x, None, params)

    keys = jax.random.split(jax.random.PRNGKey(2024), n_draws)
    return jnp.stack([one(k) for k in keys])


@pytest.mark.slow
@pytest.mark.parametrize("family", MONTE_CARLO_FAMILIES)
def test_frozen_analytic_matches_empirical(family):
    width, n_draws = MONTE_CARLO_FAMILIES[family]
    layers = NETWORK_FAMILIES[family].layers(width)
    frozen_index = NETWORK_FAMILIES[family].frozen_index
    shape = SHAPES.get(family, (8, *NETWORK_FAMILIES[family].input_shape))
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    frozen_layers = frozen_family(family, width)

    draws = empirical_draws(frozen_layers, x, n_draws)
    analytic = stax.serial(*frozen_layers)[2](x, None, "ntk")
    result = agreement(draws, analytic, width)
    assert result.agrees, result

    # Power: a wrong formula at the frozen layer fails the same check.
    unfrozen = stax.serial(*layers)[2](x, None, "ntk")
    assert not agreement(draws, unfrozen, width).agrees

    pre, post = layers[:frozen_index], layers[frozen_index + 1 :]
    identity_guess = stax.serial(*pre, IdentityGuess(layers[frozen_index]), *post)[2](
        x, None, "ntk"
    )
    assert not agreement(draws, identity_guess, width).agrees
