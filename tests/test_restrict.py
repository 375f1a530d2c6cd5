"""`nt_frozen.restrict` against `jax.jacrev` over the chosen leaves of the full
parameters (float64), with `FrozenParams` and `RatedParams` nested both ways.

The reference never calls `restrict`: it substitutes the chosen leaves into
the flat leaves of `params` itself, and its rates are written out by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import Frozen, LearningRate, nt, stax
from nt_frozen.params import FrozenParams
from nt_frozen.rates import RatedParams
from nt_frozen.restrict import restrict


def dense(n):
    return stax.Dense(n, W_std=1.3, b_std=0.2)


def network():
    # Leaves, in tree_leaves order (W, b per Dense), with their rates:
    # 0-1 Dense: 1; 2-3 LearningRate(4) Dense: 4; 4-5 Frozen(LearningRate(9)): 0;
    # 6-7 LearningRate(0.25) inside LearningRate(4): 1; 8-9 Frozen: 0;
    # 10-11 readout: 1.
    return stax.serial(
        dense(5),
        stax.Relu(),
        LearningRate(
            stax.serial(
                dense(5),
                stax.Erf(),
                Frozen(LearningRate(dense(5), 9.0)),
                LearningRate(dense(5), 0.25),
            ),
            4.0,
        ),
        stax.Relu(),
        Frozen(dense(5)),
        dense(2),
    )


RATES = {0: 1.0, 1: 1.0, 2: 4.0, 3: 4.0, 6: 1.0, 7: 1.0, 10: 1.0, 11: 1.0}


@pytest.fixture
def net(x64):
    init_fn, apply_fn, _ = network()
    x1 = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    assert x1.dtype == jnp.float64
    return apply_fn, params, x1, x2


def _is_marker(node) -> bool:
    return isinstance(node, (FrozenParams, RatedParams))


def _markers(tree) -> list[str]:
    """The marker nodes of `tree` at any depth, outermost first."""
    found: list[str] = []

    def visit(node):
        if _is_marker(node):
            found.append(type(node).__name__)
            found.extend(_markers(node.params))
        return node

    jax.tree_util.tree_map(visit, tree, is_leaf=_is_marker)
    return found


def _reference_jacobian(apply_fn, params, indices, x):
    """d apply_fn(params, x) / d leaf, for each chosen leaf, by jax.jacrev."""
    flat, treedef = jax.tree_util.tree_flatten(params)

    def f(chosen):
        full = list(flat)
        for i, value in zip(indices, chosen):
            full[i] = value
        return apply_fn(jax.tree_util.tree_unflatten(treedef, full), x)

    return jax.jacrev(f)(tuple(flat[i] for i in indices))


def _rows(j, n):
    return j.reshape(n, j.shape[1], -1)


@pytest.mark.parametrize(
    "asked, kept",
    [
        (None, (0, 1, 2, 3, 6, 7, 10, 11)),
        ((11, 4, 2, 8, 7), (11, 2, 7)),  # frozen 4 and 8 dropped, order kept
        ((5, 9), ()),
    ],
)
def test_values_indices_and_rates(net, asked, kept):
    apply_fn, params, x1, _ = net
    # Frozen inside rated (and rated inside that), rated inside rated.
    assert _markers(params) == [
        "RatedParams",
        "FrozenParams",
        "RatedParams",
        "RatedParams",
        "FrozenParams",
    ]
    r = restrict(apply_fn, params, asked)
    flat = jax.tree_util.tree_leaves(params)
    assert r.indices == kept
    assert r.rates == tuple(RATES[i] for i in kept)
    assert all(a is flat[i] for a, i in zip(r.leaves, kept))
    np.testing.assert_array_equal(r.fn(r.leaves, x1), apply_fn(params, x1))


@pytest.mark.parametrize("rated", [True, False])
def test_jacobian_is_jacrev_over_the_chosen_leaves(net, rated):
    apply_fn, params, x1, _ = net
    asked = (10, 3, 0, 6, 4)
    r = restrict(apply_fn, params, asked, rated=rated)
    want = _reference_jacobian(apply_fn, params, r.indices, x1)
    got = jax.jacrev(lambda leaves: r.fn(leaves, x1))(r.leaves)
    assert len(got) == len(r.indices) == 4
    for g, w, i in zip(got, want, r.indices):
        scale = np.sqrt(RATES[i]) if rated else 1.0
        np.testing.assert_allclose(g, scale * w, rtol=1e-12, err_msg=str(i))


def test_ntk_of_the_view_is_the_rated_ntk_of_the_chosen_leaves(net):
    apply_fn, params, x1, x2 = net
    r = restrict(apply_fn, params, range(12))
    j1 = _reference_jacobian(apply_fn, params, r.indices, x1)
    j2 = _reference_jacobian(apply_fn, params, r.indices, x2)
    # NT's NTK: sum over leaves and the traced output axis, / its size (2).
    want = sum(
        RATES[i] * jnp.einsum("nop,mop->nm", _rows(a, 3), _rows(b, 2)) / 2
        for a, b, i in zip(j1, j2, r.indices)
    )
    got = nt.empirical_ntk_fn(r.fn, implementation=1)(x1, x2, r.leaves)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_apply_fn_kwargs_reach_apply_fn(net):
    apply_fn, params, x1, _ = net

    def scaled(params, x, scale=1.0):
        return scale * apply_fn(params, x)

    r = restrict(scaled, params, [11])
    np.testing.assert_array_equal(
        r.fn(r.leaves, x1, scale=3.0), scaled(params, x1, 3.0)
    )
    got = jax.jacrev(lambda leaves: r.fn(leaves, x1, scale=3.0))(r.leaves)[0]
    want = _reference_jacobian(apply_fn, params, (11,), x1)[0]
    np.testing.assert_allclose(got, 3.0 * want, rtol=1e-12)


def test_bad_indices():
    params = [jnp.ones(2), FrozenParams(jnp.ones(3))]
    with pytest.raises(ValueError, match="leaf index 2 is out of range"):
        restrict(lambda p, x: x, params, [0, 2])
    with pytest.raises(ValueError, match="repeat"):
        restrict(lambda p, x: x, params, [0, 0])
    with pytest.raises(TypeError):
        restrict(lambda p, x: x, params, [0.5])
