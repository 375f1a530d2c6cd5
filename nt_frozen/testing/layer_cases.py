"""Every layer and combinator of `stax`, each after a trainable block (so
that its incoming NTK is non-zero): the cases of the layer-by-layer tests."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nt_frozen._compat import stax
from nt_frozen.frozen import Frozen

_N1, _N2 = 3, 2
# Trainable blocks ending in an affine layer: NT's nonlinearities, LayerNorm and
# FanInSum need Gaussian inputs.
_DENSE_PRE = stax.serial(
    stax.Dense(8, W_std=1.3, b_std=0.4), stax.Erf(), stax.Dense(8, W_std=1.1, b_std=0.2)
)
_CONV_PRE = stax.serial(
    stax.Conv(8, (2, 2), padding="SAME", b_std=0.3),
    stax.Relu(),
    stax.Conv(8, (2, 2), padding="SAME", W_std=1.2),
)
_SEQ_PRE = stax.serial(stax.Dense(8, b_std=0.2), stax.Gelu(), stax.Dense(8, W_std=1.1))
_TWO_BRANCH_PRE = stax.serial(
    stax.Dense(8, b_std=0.3),
    stax.FanOut(2),
    stax.parallel(
        stax.Dense(8, W_std=1.2),
        stax.serial(stax.Erf(), stax.Dense(8, W_std=0.8, b_std=0.1)),
    ),
)
_FLAT, _IMAGE, _SEQ = (4,), (4, 4, 2), (5, 3)


def _numerical_tanh():
    """tanh by NT's quadrature, without NT's construction-time warnings about
    `deg` (importing this module should not warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return stax.ElementwiseNumerical(jnp.tanh, deg=25)


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


LAYER_CASES = [
    ("Dense-ntk", _DENSE_PRE, stax.Dense(6, W_std=1.5, b_std=0.7), _FLAT, True, {}),
    (
        "Dense-standard",
        _DENSE_PRE,
        stax.Dense(6, W_std=1.5, b_std=0.7, parameterization="standard"),
        _FLAT,
        True,
        {},
    ),
    ("Dense-nobias", _DENSE_PRE, stax.Dense(6, W_std=0.6), _FLAT, True, {}),
    (
        "Conv",
        _CONV_PRE,
        stax.Conv(5, (3, 3), padding="SAME", W_std=1.4, b_std=0.2),
        _IMAGE,
        True,
        {},
    ),
    (
        "Conv-valid-std",
        _CONV_PRE,
        stax.Conv(5, (2, 2), W_std=1.4, b_std=0.2, parameterization="standard"),
        _IMAGE,
        True,
        {},
    ),
    (
        "ConvTranspose",
        _CONV_PRE,
        stax.ConvTranspose(5, (2, 2), W_std=1.2, b_std=0.3),
        _IMAGE,
        True,
        {},
    ),
    (
        "ConvLocal",
        _CONV_PRE,
        stax.ConvLocal(5, (2, 2), padding="SAME", W_std=1.2, b_std=0.3),
        _IMAGE,
        True,
        {},
    ),
    ("AvgPool", _CONV_PRE, stax.AvgPool((2, 2)), _IMAGE, False, {}),
    ("SumPool", _CONV_PRE, stax.SumPool((2, 2), padding="SAME"), _IMAGE, False, {}),
    ("GlobalAvgPool", _CONV_PRE, stax.GlobalAvgPool(), _IMAGE, False, {}),
    ("GlobalSumPool", _CONV_PRE, stax.GlobalSumPool(), _IMAGE, False, {}),
    ("Flatten", _CONV_PRE, stax.Flatten(), _IMAGE, False, {}),
    (
        "ImageResize",
        _CONV_PRE,
        stax.ImageResize((-1, 6, 6, -1), "linear"),
        _IMAGE,
        False,
        {},
    ),
    ("Index", _CONV_PRE, stax.Index(stax.Slice[:, 1:3, :, :]), _IMAGE, False, {}),
    ("LayerNorm", _DENSE_PRE, stax.LayerNorm(), _FLAT, False, {}),
    ("LayerNorm-image", _CONV_PRE, stax.LayerNorm(axis=(1, 2, 3)), _IMAGE, False, {}),
    ("Dropout", _DENSE_PRE, stax.Dropout(0.8), _FLAT, False, {}),
    ("Identity", _DENSE_PRE, stax.Identity(), _FLAT, False, {}),
    ("DotGeneral", _DENSE_PRE, stax.DotGeneral(lhs=1.7), _FLAT, False, {}),
    ("Aggregate", _SEQ_PRE, stax.Aggregate(), _SEQ, False, {"pattern": "graph"}),
    (
        "GlobalSelfAttention",
        _SEQ_PRE,
        stax.GlobalSelfAttention(8, 8, 8, n_heads=2, W_out_std=1.3, b_std=0.2),
        _SEQ,
        True,
        {},
    ),
    (
        "GlobalSelfAttention-posemb",
        _SEQ_PRE,
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
        _SEQ,
        True,
        {},
    ),
    (
        "GlobalSelfAttention-identity",
        _SEQ_PRE,
        stax.GlobalSelfAttention(
            8,
            8,
            8,
            n_heads=1,
            linear_scaling=False,
            attention_mechanism="IDENTITY",
            W_key_std=0.7,
            W_query_std=1.2,
            W_value_std=0.9,
            W_out_std=1.3,
            b_std=0.2,
        ),
        _SEQ,
        True,
        {},
    ),
    ("FanOut", _DENSE_PRE, stax.FanOut(3), _FLAT, False, {}),
    ("FanInSum", _TWO_BRANCH_PRE, stax.FanInSum(), _FLAT, False, {}),
    ("FanInConcat", _TWO_BRANCH_PRE, stax.FanInConcat(), _FLAT, False, {}),
    ("FanInProd", _TWO_BRANCH_PRE, stax.FanInProd(), _FLAT, False, {}),
    (
        "serial",
        _DENSE_PRE,
        stax.serial(
            stax.Dense(7, W_std=1.2, b_std=0.1), stax.Relu(), stax.Dense(3, W_std=0.9)
        ),
        _FLAT,
        True,
        {},
    ),
    (
        "parallel",
        _TWO_BRANCH_PRE,
        stax.parallel(stax.Dense(4, W_std=1.1, b_std=0.2), stax.Relu()),
        _FLAT,
        True,
        {},
    ),
    (
        "repeat",
        _DENSE_PRE,
        stax.repeat(stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.Relu()), 3),
        _FLAT,
        True,
        {},
    ),
    (
        "residual",
        _DENSE_PRE,
        stax.serial(
            stax.FanOut(2),
            stax.parallel(
                stax.serial(stax.Relu(), stax.Dense(8, W_std=1.3)), stax.Identity()
            ),
            stax.FanInSum(),
        ),
        _FLAT,
        True,
        {},
    ),
    (
        "nested",
        _DENSE_PRE,
        stax.serial(
            Frozen(stax.Dense(8, W_std=2.0)),
            stax.serial(stax.Dense(8, b_std=0.5), stax.Sin()),
        ),
        _FLAT,
        True,
        {},
    ),
]

_NONLINEARITIES = [
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
    ("ElementwiseNumerical", _numerical_tanh()),
    ("Elementwise", _elementwise_custom()),
]
LAYER_CASES += [
    (name, _DENSE_PRE, lyr, _FLAT, False, {}) for name, lyr in _NONLINEARITIES
]
LAYER_CASES.append(
    (
        "Hermite",
        stax.serial(_DENSE_PRE, stax.LayerNorm()),
        stax.Hermite(2),
        _FLAT,
        False,
        {},
    )
)


def layer_inputs(shape: Sequence[int], kwargs: dict) -> tuple[Any, Any, dict]:
    """Inputs `x1` `(3, *shape)`, `x2` `(2, *shape)` for a :data:`LAYER_CASES`
    entry, and its `kwargs` with a graph `pattern` drawn where it asks for one.

    Example:
      >>> name, pre, layer, shape, has_params, kwargs = LAYER_CASES[0]
      >>> x1, x2, kwargs = layer_inputs(shape, kwargs)
      >>> name, x1.shape, x2.shape
      ('Dense-ntk', (3, 4), (2, 4))
    """
    x1 = jax.random.normal(jax.random.PRNGKey(1), (_N1, *shape))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (_N2, *shape))
    if kwargs.get("pattern") == "graph":
        p1 = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (_N1, shape[0], shape[0]))
        p2 = jax.random.bernoulli(jax.random.PRNGKey(4), 0.5, (_N2, shape[0], shape[0]))
        kwargs = {**kwargs, "pattern": (p1.astype(x1.dtype), p2.astype(x2.dtype))}
    return x1, x2, kwargs
