"""The identities of DESIGN.md section 2, for several architecture families.

1. frozen first layer -> NTK 0 right after it;  2. all frozen -> NTK 0;
3. readout-only -> NTK == NNGP;  4. sum rule over layers;
5. frozen Dense/Conv: ntk_out = W_std^2 * (layer's linear map of ntk_in).
Plus composition laws, `get` subsets, `x2=None`, jit, nt.batch, masking,
float32/float64, and the cancellation-free float32 case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, nt, stax
from nt_frozen.testing import freeze_all_but, inputs, rel_err, relu_arccos

W_STD, B_STD = 1.5, 0.4


def mlp_layers():
    return [
        stax.Dense(16, W_std=1.2, b_std=0.3),
        stax.Relu(),
        stax.Dense(16, W_std=W_STD, b_std=B_STD),
        stax.Erf(),
        stax.Dense(1, W_std=0.9, b_std=0.2),
    ]


def mlp_standard_layers():
    return [
        stax.Dense(16, W_std=1.2, b_std=0.3, parameterization="standard"),
        stax.Relu(),
        stax.Dense(16, W_std=W_STD, b_std=B_STD, parameterization="standard"),
        stax.Relu(),
        stax.Dense(1, W_std=0.9, b_std=0.2, parameterization="standard"),
    ]


def cnn_layers():
    return [
        stax.Conv(8, (2, 2), padding="SAME", W_std=1.3, b_std=0.2),
        stax.Relu(),
        stax.Conv(8, (2, 2), padding="SAME", W_std=W_STD, b_std=B_STD),
        stax.AvgPool((2, 2)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    ]


def residual_layers():
    block = stax.serial(
        stax.FanOut(2),
        stax.parallel(
            stax.serial(stax.Relu(), stax.Dense(16, W_std=W_STD, b_std=B_STD)),
            stax.Identity(),
        ),
        stax.FanInSum(),
    )
    return [
        stax.Dense(16, W_std=1.1, b_std=0.2),
        block,
        stax.Relu(),
        stax.Dense(1, b_std=0.1),
    ]


def attention_layers():
    return [
        stax.Dense(8, W_std=1.2, b_std=0.2),
        stax.GlobalSelfAttention(8, 8, 8, n_heads=2, W_out_std=1.3, b_std=0.1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, W_std=1.1),
    ]


def repeat_layers():
    return [
        stax.Dense(8, b_std=0.2),
        stax.repeat(
            stax.serial(stax.Relu(), stax.Dense(8, W_std=W_STD, b_std=B_STD)), 3
        ),
        stax.Relu(),
        stax.Dense(1),
    ]


FAMILIES = {
    "mlp": (mlp_layers, (4,)),
    "mlp-standard": (mlp_standard_layers, (4,)),
    "cnn": (cnn_layers, (4, 4, 2)),
    "residual": (residual_layers, (4,)),
    "attention": (attention_layers, (5, 3)),
    "repeat": (repeat_layers, (4,)),
}


def gram_blocks(x1, x2):
    """Input NNGP `x x'^T / d` over all points (x1 then x2), float64, and the
    slice of the (x1, x2) block."""
    x = np.concatenate([x1, x1 if x2 is None else x2]).astype(np.float64)
    n1 = len(x1)
    return x @ x.T / x.shape[1], (slice(0, n1), slice(n1, None))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    if request.param == "float64":
        request.getfixturevalue("x64")
    return request.param


@pytest.fixture(params=[False, True], ids=["x2", "x2=None"])
def same(request):
    return request.param


def tol(dtype):
    return 1e-10 if dtype == "float64" else 2e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_sum_rule(family, dtype, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    full = stax.serial(*layers)[2](x1, x2, "ntk")
    parts = [
        stax.serial(*freeze_all_but(layers, {i}))[2](x1, x2, "ntk")
        for i in range(len(layers))
    ]
    assert full.dtype == jnp.dtype(dtype)
    assert rel_err(sum(parts), full) < tol(dtype)
    # power: dropping the frozen layers' own terms matters for every family.
    assert rel_err(parts[-1], full) > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_first_layer_and_all_frozen(family, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    first = stax.serial(Frozen(layers[0]))[2](x1, x2, ("nngp", "ntk"))
    np.testing.assert_array_equal(first.ntk, 0.0)
    assert np.abs(first.nngp).max() > 0
    after_first = stax.serial(Frozen(layers[0]), *layers[1:])[2](x1, x2, "ntk")
    all_frozen = stax.serial(*[Frozen(lyr) for lyr in layers])
    np.testing.assert_array_equal(all_frozen[2](x1, x2, "ntk"), 0.0)
    np.testing.assert_array_equal(
        stax.serial(Frozen(stax.serial(*layers)))[2](x1, x2, "ntk"), 0.0
    )
    # and the empirical NTK of the all-frozen network is exactly 0 as well
    init_fn, apply_fn, _ = all_frozen
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    emp = nt.empirical_ntk_fn(apply_fn, implementation=1)(x1, x2, params)
    np.testing.assert_array_equal(emp, 0.0)
    assert np.abs(after_first).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_only_is_nngp(family, dtype, same):
    make, shape = FAMILIES[family]
    x1, x2 = inputs(shape, same=same)
    layers = make()
    net = stax.serial(Frozen(stax.serial(*layers[:-1])), layers[-1])
    k = net[2](x1, x2, ("nngp", "ntk"))
    if family.endswith("standard"):
        # Standard parameterization: the readout's own term is
        # n_in * nngp_in + 1 (finite fan-in n_in = 16), not W_std^2 nngp_in +
        # b_std^2. Closed form, float64, independent of NT: ReLU arc-cosine maps.
        gram, block = gram_blocks(x1, x2)
        hidden, _ = relu_arccos(1.2**2 * gram + 0.3**2)
        hidden, _ = relu_arccos(W_STD**2 * hidden + B_STD**2)
        expected = (16 * hidden + 1.0)[block]
        np.testing.assert_allclose(
            k.nngp, (0.9**2 * hidden + 0.2**2)[block], rtol=tol(dtype)
        )
        assert rel_err(expected, k.nngp) > 0.5  # the NTK-parameterization rule fails
    else:
        expected = k.nngp
    np.testing.assert_allclose(k.ntk, expected, rtol=tol(dtype), atol=tol(dtype))
    unfrozen = stax.serial(*layers)[2](x1, x2, "ntk")
    assert rel_err(unfrozen, k.nngp) > 0.05  # the unfrozen NTK is not the NNGP


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
    # no cancellation is allowed (DESIGN.md 2): as exact as ntk_in itself.
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
    k_in = pre[2](x1, x2, **full)
    out = stax.serial(pre, Frozen(stax.Conv(8, W_std=W_STD, b_std=0.9, **conv)))[2](
        x1, x2, "ntk", **full
    )
    # The conv's linear map on covariances, applied to ntk_in as if it were an
    # NNGP, through a *different* code path (the unfrozen nngp computation).
    conv_map = stax.Conv(8, W_std=1.0, b_std=None, **conv)[2]
    mapped = conv_map(k_in.replace(nngp=k_in.ntk, cov1=None, cov2=None), **full).nngp
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


def test_get_subsets_and_jit(same):
    x1, x2 = inputs((4,), same=same)
    layers = mlp_layers()
    net = stax.serial(layers[0], layers[1], Frozen(layers[2]), *layers[3:])
    k = net[2](x1, x2)
    np.testing.assert_array_equal(net[2](x1, x2, "nngp"), k.nngp)
    np.testing.assert_allclose(net[2](x1, x2, "ntk"), k.ntk, rtol=1e-6)
    both = jax.jit(net[2], static_argnames="get")(x1, x2, ("ntk", "nngp", "cov1"))
    # jit reorders float32 arithmetic: compare at float32 resolution of the scale
    scale = float(jnp.abs(k.ntk).max())
    np.testing.assert_allclose(both.ntk, k.ntk, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(both.cov1, k.cov1, rtol=1e-4)


@pytest.mark.compat_matrix
def test_nt_batch_matches_unbatched():
    x1, x2 = inputs((4, 4, 2), n1=6, n2=4)
    layers = cnn_layers()
    net = stax.serial(*layers[:2], Frozen(layers[2]), *layers[3:])
    full = net[2](x1, x2, ("nngp", "ntk"))
    batched = nt.batch(net[2], batch_size=2, store_on_device=False)(
        x1, x2, ("nngp", "ntk")
    )
    np.testing.assert_allclose(batched.ntk, full.ntk, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched.nngp, full.nngp, rtol=1e-5, atol=1e-7)


@pytest.mark.compat_matrix
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
    kw = {"mask_constant": jnp.nan}
    full = stax.serial(*layers)[2](x1, x2, "ntk", **kw)
    parts = [
        stax.serial(*freeze_all_but(layers, {i}))[2](x1, x2, "ntk", **kw)
        for i in range(len(layers))
    ]
    assert np.isfinite(full).all()
    assert rel_err(sum(parts), full) < 1e-10
    readout = stax.serial(Frozen(stax.serial(*layers[:-1])), layers[-1])[2](
        x1, x2, ("nngp", "ntk"), **kw
    )
    np.testing.assert_allclose(readout.ntk, readout.nngp, rtol=1e-12)
    # the mask really changes the kernel (otherwise this test says nothing)
    unmasked = stax.serial(*layers)[2](jnp.nan_to_num(x1), jnp.nan_to_num(x2), "ntk")
    assert rel_err(unmasked, full) > 1e-3


def test_diagonal_requirements_propagate():
    """A frozen layer keeps the wrapped layer's input requirements."""
    from nt_frozen._compat import get_req

    for lyr in [
        stax.Conv(4, (2, 2)),
        stax.GlobalSelfAttention(4, 4, 4, 1),
        stax.LayerNorm(),
        stax.Relu(),
    ]:
        assert get_req(Frozen(lyr)[2]) == get_req(lyr[2])
