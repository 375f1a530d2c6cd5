"""Frozen(layer) for every layer and combinator of `neural_tangents.stax`.

For each layer `L` after a trainable block (so the incoming NTK is non-zero),
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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, stax
from nt_frozen.testing import (
    LAYER_CASES,
    assert_same_fields_but_ntk,
    is_kernel,
    layer_inputs,
    linear_part_by_subtraction,
)


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
    # Full covariances satisfy every layer's input requirement.
    k_in = pre[2](x1, x2, diagonal_batch=False, diagonal_spatial=False, **kwargs)
    plain = lyr[2](k_in, **kwargs)
    frozen = Frozen(lyr)[2](k_in, **kwargs)

    assert_same_fields_but_ntk(frozen, plain)
    expected = linear_part_by_subtraction(lyr[2], k_in, **kwargs)
    got = _ntk_leaves(frozen)
    _assert_close(got, jax.tree_util.tree_leaves(expected))

    # Along random directions: linear (additive and homogeneous), and equal to
    # the unfrozen map's increment from 0 (so the unfrozen map is affine).
    def frozen_map(ntks):
        return _ntk_leaves(Frozen(lyr)[2](_with_ntks(k_in, ntks), **kwargs))

    def plain_map(ntks):
        return _ntk_leaves(lyr[2](_with_ntks(k_in, ntks), **kwargs))

    rng = np.random.default_rng(0)
    ntks_in = _ntk_leaves(k_in)
    d1, d2 = ([rng.normal(size=t.shape) for t in ntks_in] for _ in range(2))
    f1, f2 = frozen_map(d1), frozen_map(d2)
    _assert_close(
        frozen_map([a + b for a, b in zip(d1, d2)]), [a + b for a, b in zip(f1, f2)]
    )
    _assert_close(frozen_map([-2.5 * a for a in d1]), [-2.5 * a for a in f1])
    zero = plain_map([np.zeros(t.shape) for t in ntks_in])
    for d, f in ((d1, f1), (d2, f2)):
        _assert_close(f, [p - z for p, z in zip(plain_map(d), zero)])
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
    k_in = pre[2](x1, x2, **full)
    np.testing.assert_allclose(k_f.nngp, lyr[2](k_in).nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        k_f.ntk, linear_part_by_subtraction(lyr[2], k_in), rtol=2e-4, atol=1e-5
    )
