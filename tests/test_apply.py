"""apply_fn semantics of Frozen: same outputs, white-box input gradients,
exactly zero parameter gradients, and frozen values really reach the output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, FrozenParams, stax

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
