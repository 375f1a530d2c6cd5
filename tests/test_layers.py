"""Frozen(layer) for every layer and combinator of `neural_tangents.stax`.

For each layer `L` after a trainable block (so the incoming NTK is non-zero):
- every Kernel field of `Frozen(L)` but `ntk` equals `L`'s exactly;
- the frozen NTK equals the linear part of `L`'s NTK map computed by a second
  code path (two passes and a subtraction, float64);
- for layers with parameters that part differs from both the unfrozen NTK and
  the incoming NTK (so neither the "unfrozen" nor the "identity" guess passes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_fields_but_ntk, is_kernel, linear_part_by_subtraction

from nt_frozen import Frozen, stax

N1, N2 = 3, 2
# Trainable blocks ending in an affine layer: NT's nonlinearities, LayerNorm and
# FanInSum need Gaussian inputs.
DENSE_PRE = stax.serial(
    stax.Dense(8, W_std=1.3, b_std=0.4), stax.Erf(), stax.Dense(8, W_std=1.1, b_std=0.2)
)
CONV_PRE = stax.serial(
    stax.Conv(8, (2, 2), padding="SAME", b_std=0.3),
    stax.Relu(),
    stax.Conv(8, (2, 2), padding="SAME", W_std=1.2),
)
SEQ_PRE = stax.serial(stax.Dense(8, b_std=0.2), stax.Gelu(), stax.Dense(8, W_std=1.1))
TWO_BRANCH_PRE = stax.serial(
    stax.Dense(8, b_std=0.3),
    stax.FanOut(2),
    stax.parallel(
        stax.Dense(8, W_std=1.2),
        stax.serial(stax.Erf(), stax.Dense(8, W_std=0.8, b_std=0.1)),
    ),
)
FLAT, IMAGE, SEQ = (4,), (4, 4, 2), (5, 3)


def _elementwise_custom():
    """ReLU given through user-supplied NNGP and derivative kernels."""
    return stax.Elementwise(
        fn=lambda x: jnp.maximum(x, 0.0), nngp_fn=_relu_nngp, d_nngp_fn=_relu_dnngp
    )


def _relu_nngp(cov12, var1, var2):
    prod = jnp.sqrt(var1 * var2)
    cos = jnp.clip(cov12 / prod, -1.0, 1.0)
    theta = jnp.arccos(cos)
    return prod * (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)


def _relu_dnngp(cov12, var1, var2):
    cos = jnp.clip(cov12 / jnp.sqrt(var1 * var2), -1.0, 1.0)
    return (jnp.pi - jnp.arccos(cos)) / (2 * jnp.pi)


# (id, trainable block before, layer under test, input shape, has own params, kwargs)
CASES = [
    ("Dense-ntk", DENSE_PRE, stax.Dense(6, W_std=1.5, b_std=0.7), FLAT, True, {}),
    (
        "Dense-standard",
        DENSE_PRE,
        stax.Dense(6, W_std=1.5, b_std=0.7, parameterization="standard"),
        FLAT,
        True,
        {},
    ),
    ("Dense-nobias", DENSE_PRE, stax.Dense(6, W_std=0.6), FLAT, True, {}),
    (
        "Conv",
        CONV_PRE,
        stax.Conv(5, (3, 3), padding="SAME", W_std=1.4, b_std=0.2),
        IMAGE,
        True,
        {},
    ),
    (
        "Conv-valid-std",
        CONV_PRE,
        stax.Conv(5, (2, 2), W_std=1.4, b_std=0.2, parameterization="standard"),
        IMAGE,
        True,
        {},
    ),
    (
        "ConvTranspose",
        CONV_PRE,
        stax.ConvTranspose(5, (2, 2), W_std=1.2, b_std=0.3),
        IMAGE,
        True,
        {},
    ),
    (
        "ConvLocal",
        CONV_PRE,
        stax.ConvLocal(5, (2, 2), padding="SAME", W_std=1.2, b_std=0.3),
        IMAGE,
        True,
        {},
    ),
    ("AvgPool", CONV_PRE, stax.AvgPool((2, 2)), IMAGE, False, {}),
    ("SumPool", CONV_PRE, stax.SumPool((2, 2), padding="SAME"), IMAGE, False, {}),
    ("GlobalAvgPool", CONV_PRE, stax.GlobalAvgPool(), IMAGE, False, {}),
    ("GlobalSumPool", CONV_PRE, stax.GlobalSumPool(), IMAGE, False, {}),
    ("Flatten", CONV_PRE, stax.Flatten(), IMAGE, False, {}),
    (
        "ImageResize",
        CONV_PRE,
        stax.ImageResize((-1, 6, 6, -1), "linear"),
        IMAGE,
        False,
        {},
    ),
    ("Index", CONV_PRE, stax.Index(stax.Slice[:, 1:3, :, :]), IMAGE, False, {}),
    ("LayerNorm", DENSE_PRE, stax.LayerNorm(), FLAT, False, {}),
    ("LayerNorm-image", CONV_PRE, stax.LayerNorm(axis=(1, 2, 3)), IMAGE, False, {}),
    ("Dropout", DENSE_PRE, stax.Dropout(0.8), FLAT, False, {}),
    ("Identity", DENSE_PRE, stax.Identity(), FLAT, False, {}),
    ("DotGeneral", DENSE_PRE, stax.DotGeneral(lhs=1.7), FLAT, False, {}),
    ("Aggregate", SEQ_PRE, stax.Aggregate(), SEQ, False, {"pattern": "graph"}),
    (
        "GlobalSelfAttention",
        SEQ_PRE,
        stax.GlobalSelfAttention(8, 8, 8, n_heads=2, W_out_std=1.3, b_std=0.2),
        SEQ,
        True,
        {},
    ),
    (
        "GlobalSelfAttention-posemb",
        SEQ_PRE,
        stax.GlobalSelfAttention(
            8,
            8,
            8,
            n_heads=1,
            linear_scaling=False,
            attention_mechanism="IDENTITY",
            pos_emb_type="SUM",
            val_pos_emb=True,
            W_pos_emb_std=0.5,
        ),
        SEQ,
        True,
        {},
    ),
    ("FanOut", DENSE_PRE, stax.FanOut(3), FLAT, False, {}),
    ("FanInSum", TWO_BRANCH_PRE, stax.FanInSum(), FLAT, False, {}),
    ("FanInConcat", TWO_BRANCH_PRE, stax.FanInConcat(), FLAT, False, {}),
    ("FanInProd", TWO_BRANCH_PRE, stax.FanInProd(), FLAT, False, {}),
    (
        "serial",
        DENSE_PRE,
        stax.serial(
            stax.Dense(7, W_std=1.2, b_std=0.1), stax.Relu(), stax.Dense(3, W_std=0.9)
        ),
        FLAT,
        True,
        {},
    ),
    (
        "parallel",
        TWO_BRANCH_PRE,
        stax.parallel(stax.Dense(4, W_std=1.1, b_std=0.2), stax.Relu()),
        FLAT,
        True,
        {},
    ),
    (
        "repeat",
        DENSE_PRE,
        stax.repeat(stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.Relu()), 3),
        FLAT,
        True,
        {},
    ),
    (
        "residual",
        DENSE_PRE,
        stax.serial(
            stax.FanOut(2),
            stax.parallel(
                stax.serial(stax.Relu(), stax.Dense(8, W_std=1.3)), stax.Identity()
            ),
            stax.FanInSum(),
        ),
        FLAT,
        True,
        {},
    ),
    (
        "nested",
        DENSE_PRE,
        stax.serial(
            Frozen(stax.Dense(8, W_std=2.0)),
            stax.serial(stax.Dense(8, b_std=0.5), stax.Sin()),
        ),
        FLAT,
        True,
        {},
    ),
]

NONLINEARITIES = [
    ("Relu", stax.Relu()),
    ("ABRelu", stax.ABRelu(-0.3, 1.2)),
    ("LeakyRelu", stax.LeakyRelu(0.1)),
    ("Abs", stax.Abs()),
    ("Erf", stax.Erf(a=1.2, b=0.8, c=0.1)),
    ("Sigmoid_like", stax.Sigmoid_like()),
    ("Gelu", stax.Gelu()),
    ("Sin", stax.Sin(a=1.1, b=1.3, c=0.2)),
    ("Cos", stax.Cos(a=1.1, b=1.3, c=0.2)),
    ("Exp", stax.Exp(a=0.5, b=0.4)),
    ("ExpNormalized", stax.ExpNormalized()),
    ("Gaussian", stax.Gaussian()),
    ("Rbf", stax.Rbf(0.7)),
    ("Gabor", stax.Gabor()),
    ("Sign", stax.Sign()),
    ("Monomial", stax.Monomial(3)),
    ("RectifiedMonomial", stax.RectifiedMonomial(2)),
    ("Polynomial", stax.Polynomial([0.1, -0.4, 0.5])),
    ("ElementwiseNumerical", stax.ElementwiseNumerical(jnp.tanh, deg=25)),
    ("Elementwise", _elementwise_custom()),
]
CASES += [(name, DENSE_PRE, lyr, FLAT, False, {}) for name, lyr in NONLINEARITIES]
CASES.append(
    (
        "Hermite",
        stax.serial(DENSE_PRE, stax.LayerNorm()),
        stax.Hermite(2),
        FLAT,
        False,
        {},
    )
)


def _inputs(shape, kwargs):
    x1 = jax.random.normal(jax.random.PRNGKey(1), (N1, *shape))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (N2, *shape))
    if kwargs.get("pattern") == "graph":
        p1 = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (N1, shape[0], shape[0]))
        p2 = jax.random.bernoulli(jax.random.PRNGKey(4), 0.5, (N2, shape[0], shape[0]))
        kwargs = {**kwargs, "pattern": (p1.astype(x1.dtype), p2.astype(x2.dtype))}
    return x1, x2, kwargs


@pytest.mark.parametrize(
    "pre, lyr, shape, has_params, kwargs",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_frozen_kernel_is_linear_part(x64, pre, lyr, shape, has_params, kwargs):
    x1, x2, kwargs = _inputs(shape, kwargs)
    # Full covariances satisfy every layer's input requirement.
    k_in = pre[2](x1, x2, diagonal_batch=False, diagonal_spatial=False, **kwargs)
    plain = lyr[2](k_in, **kwargs)
    frozen = Frozen(lyr)[2](k_in, **kwargs)

    assert_same_fields_but_ntk(frozen, plain)
    expected = linear_part_by_subtraction(lyr[2], k_in, **kwargs)
    got = jax.tree_util.tree_map(lambda k: k.ntk, frozen, is_leaf=is_kernel)
    for g, e in zip(
        jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(
            g, e, rtol=1e-10, atol=1e-12 * float(jnp.abs(e).max())
        )

    unfrozen_ntk = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda k: k.ntk, plain, is_leaf=is_kernel)
    )
    same_as_unfrozen = all(
        np.allclose(g, u, rtol=1e-6)
        for g, u in zip(jax.tree_util.tree_leaves(got), unfrozen_ntk)
    )
    # Parameter-free layers: freezing changes nothing. Layers with parameters:
    # the own term is really dropped.
    assert same_as_unfrozen == (not has_params)


@pytest.mark.parametrize(
    "pre, lyr, shape, has_params, kwargs",
    [c[1:] for c in CASES[:8]],
    ids=[c[0] for c in CASES[:8]],
)
def test_frozen_end_to_end_from_inputs(pre, lyr, shape, has_params, kwargs):
    """Same check through the public `kernel_fn(x1, x2, get)` of a serial net,
    in float32, with `jit`."""
    x1, x2, kwargs = _inputs(shape, kwargs)
    net_f = stax.serial(pre, Frozen(lyr))
    full = {"diagonal_batch": False, "diagonal_spatial": False}
    k_f = jax.jit(net_f[2], static_argnames=("get", *full))(
        x1, x2, ("nngp", "ntk"), **full
    )
    k_in = pre[2](x1, x2, **full)
    np.testing.assert_allclose(k_f.nngp, lyr[2](k_in).nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        k_f.ntk, linear_part_by_subtraction(lyr[2], k_in), rtol=2e-4, atol=1e-5
    )
