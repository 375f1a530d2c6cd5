"""The default empirical NTK (nt_frozen.structured) against NT's implementation
1 on the same stop-gradient network, which differentiates every leaf and gives
frozen ones zero Jacobians: an independent code path. Float64, so that any
mistake shows far above rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nt_frozen
from nt_frozen import Frozen, nt, stax
from nt_frozen.structured import ntk_plan


def mlp(parameterization="ntk"):
    p = {"parameterization": parameterization}
    return [
        stax.Dense(8, b_std=0.1, **p),
        stax.Relu(),
        stax.Dense(8, W_std=1.4, b_std=0.2, **p),
        stax.Erf(),
        stax.Dense(3, W_std=1.2, b_std=0.3, **p),
    ], (4, 5)


def cnn():
    return [
        stax.Conv(4, (3, 3), padding="SAME", b_std=0.1),
        stax.Relu(),
        stax.Conv(4, (2, 2), W_std=1.5, b_std=0.2),
        stax.AvgPool((2, 2)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(2, b_std=0.1),
    ], (3, 5, 5, 2)


def cnn_global_pool():
    return [
        stax.Conv(4, (2, 2), strides=(2, 1), b_std=0.1),
        stax.Gelu(),
        stax.Conv(4, (3, 3), padding="SAME", W_std=1.3),
        stax.GlobalAvgPool(),
        stax.Dense(2, b_std=0.2),
    ], (3, 6, 5, 2)


def residual():
    branch = stax.serial(stax.Relu(), stax.Dense(8, W_std=1.5, b_std=0.3))
    return [
        stax.Dense(8, b_std=0.2),
        stax.FanOut(2),
        stax.parallel(branch, stax.Identity()),
        stax.FanInSum(),
        stax.Relu(),
        stax.Dense(2, b_std=0.1),
    ], (4, 5)


def attention():
    return [
        stax.Dense(8, b_std=0.2),
        stax.GlobalSelfAttention(8, 8, 8, n_heads=2, W_out_std=1.5, b_std=0.1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(2),
    ], (3, 4, 5)


def repeat():
    block = stax.serial(stax.Dense(8, W_std=1.3, b_std=0.1), stax.Erf())
    return [stax.Dense(8, b_std=0.2), stax.repeat(block, 2), stax.Dense(2)], (3, 5)


FAMILIES = {
    "mlp-ntk": mlp,
    "mlp-standard": lambda: mlp("standard"),
    "cnn": cnn,
    "cnn-global-pool": cnn_global_pool,
    "residual": residual,
    "attention": attention,
    "repeat": repeat,
}

OPTIONS = {
    "trace": {},
    "no-trace": {"trace_axes": ()},
    "diagonal-examples": {"trace_axes": (), "diagonal_axes": (0,)},
    "diagonal-outputs": {"trace_axes": (), "diagonal_axes": (-1,)},
}


def network(family, frozen):
    """The family's network with its first, middle or last parameter layer
    frozen (`frozen` in "start", "middle", "end")."""
    layers, shape = FAMILIES[family]()
    _, params = stax.serial(*layers)[0](jax.random.PRNGKey(0), shape)
    with_params = [i for i, p in enumerate(params) if jax.tree_util.tree_leaves(p)]
    index = {"start": 0, "middle": len(with_params) // 2, "end": -1}[frozen]
    chosen = with_params[index]
    layers = [Frozen(lyr) if i == chosen else lyr for i, lyr in enumerate(layers)]
    return stax.serial(*layers), shape


def draw(init_fn, shape, n2=2):
    x1 = jax.random.normal(jax.random.PRNGKey(0), shape)
    x2 = jax.random.normal(jax.random.PRNGKey(1), (n2, *shape[1:]))
    _, params = init_fn(jax.random.PRNGKey(2), shape)
    return x1, x2, params


def assert_close(ours, ref, rtol=1e-10):
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    scale = float(jnp.abs(ref).max())
    assert scale > 0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-2 * scale)


def assert_equal_to_nt(apply_fn, x1, x2, params, **options):
    ours = nt_frozen.empirical_ntk_fn(apply_fn, **options)
    ref = nt.empirical_ntk_fn(apply_fn, implementation=1, **options)
    # One program (op by op, NT compiles every operation on its own).
    assert_close(*jax.jit(lambda *args: (ours(*args), ref(*args)))(x1, x2, params))


def reduce_full(full, option):
    """NT's full NTK `(N1, N2, k, k)` (`trace_axes=()`) reduced with numpy to
    what `OPTIONS[option]` asks for."""
    full = np.asarray(full)
    return {
        "trace": lambda: np.einsum("abii->ab", full) / full.shape[-1],
        "no-trace": lambda: full,
        "diagonal-examples": lambda: np.einsum("aakl->akl", full),
        "diagonal-outputs": lambda: np.einsum("abkk->abk", full),
    }[option]()


# (frozen layer, options, second input): every option with the middle layer
# frozen, and the first or last layer frozen.
CASES = [
    ("middle", "trace", "x2"),
    ("middle", "no-trace", "none"),
    ("middle", "diagonal-examples", "none"),
    ("middle", "diagonal-outputs", "x2"),
    ("start", "trace", "x2"),
    ("end", "no-trace", "x2"),
]


@pytest.mark.filterwarnings("ignore:Linear scaling attention")
@pytest.mark.parametrize("family", FAMILIES)
def test_default_equals_nt_implementation_1(family, x64):
    networks = {f: network(family, f)[0] for f in ("start", "middle", "end")}
    shape = network(family, "middle")[1]
    x1, x2, _ = draw(networks["middle"][0], shape)
    params = {f: draw(net[0], shape)[2] for f, net in networks.items()}
    references = sorted({(frozen, second) for frozen, _, second in CASES})

    # One jit for the family: compiling each case on its own costs minutes.
    def both(x1, x2, params):
        ours = [
            nt_frozen.empirical_ntk_fn(networks[frozen][1], **OPTIONS[option])(
                x1, x2 if second == "x2" else None, params[frozen]
            )
            for frozen, option, second in CASES
        ]
        refs = {
            (frozen, second): nt.empirical_ntk_fn(
                networks[frozen][1], trace_axes=(), implementation=1
            )(x1, x2 if second == "x2" else None, params[frozen])
            for frozen, second in references
        }
        return ours, refs

    ours, refs = jax.jit(both)(x1, x2, params)
    for case, value in zip(CASES, ours):
        frozen, option, second = case
        try:
            assert_close(value, reduce_full(refs[frozen, second], option))
        except AssertionError as e:
            raise AssertionError(f"{family} {case}: {e}") from None


def methods(plan):
    return [leaf.method for leaf in plan.leaves]


def test_plan_structured_for_dense_and_conv():
    (init_fn, apply_fn, _), shape = network("mlp-ntk", "middle")
    x1, x2, params = draw(init_fn, shape)
    plan = ntk_plan(apply_fn, x1, x2, params)
    # Dense kernels in Gram form, biases as per-example Jacobians; the frozen
    # middle layer has no entry (it is not differentiated at all).
    assert (plan.path, plan.independent) == ("structured", True)
    assert methods(plan) == ["gram", "jacobian", "gram", "jacobian"]
    assert [leaf.path for leaf in plan.leaves] == [
        "[0][0]",
        "[0][1]",
        "[4][0]",
        "[4][1]",
    ]

    (init_fn, apply_fn, _), shape = network("cnn", "middle")
    x1, x2, params = draw(init_fn, shape)
    plan = ntk_plan(apply_fn, x1, x2, params)
    assert plan.path == "structured"
    assert methods(plan) == ["jacobian", "jacobian", "gram", "jacobian"]


@pytest.mark.filterwarnings("ignore:Linear scaling attention")
def test_plan_attention_is_structured():
    (init_fn, apply_fn, _), shape = network("attention", "end")
    x1, x2, params = draw(init_fn, shape)
    plan = ntk_plan(apply_fn, x1, x2, params)
    assert plan.path == "structured"
    assert "gram" in methods(plan)


def test_plan_falls_back_for_scan_leaves(x64):
    (init_fn, apply_fn, _), shape = network("repeat", "end")
    x1, x2, params = draw(init_fn, shape)
    plan = ntk_plan(apply_fn, x1, x2, params)
    assert plan.path == "mixed" and plan.independent
    scanned = [leaf for leaf in plan.leaves if leaf.method == "nt"]
    assert [leaf.path for leaf in scanned] == ["[1][0][0]", "[1][0][1]"]
    assert all("scan" in leaf.reason for leaf in scanned)
    assert (plan.nt_implementation, plan.nt_vmap_axes) == (2, 0)


def test_network_mixing_examples_falls_back_whole(x64):
    (init_fn, apply_fn, _), shape = network("mlp-ntk", "middle")
    x1, x2, params = draw(init_fn, shape, n2=3)

    def centred(params, x):  # every output depends on every example
        return apply_fn(params, x - x.mean(0))

    plan = ntk_plan(centred, x1, x2, params)
    assert plan.path == "nt" and plan.independent is False
    assert plan.nt_vmap_axes is None and "reduce" in plan.reason
    assert_equal_to_nt(centred, x1, x2, params, trace_axes=())


def test_tied_and_scaled_weights(x64):
    x1, x2, _ = draw(lambda k, s: (None, None), (4, 3))
    params = {"w": jax.random.normal(jax.random.PRNGKey(3), (3, 5)), "v": jnp.ones(5)}

    def scaled(params, x):  # W enters scaled before the matmul: s = 2.5
        return jnp.tanh(x @ (2.5 * params["w"])) @ params["v"][:, None]

    plan = ntk_plan(scaled, x1, x2, params)
    assert methods(plan) == ["jacobian", "gram"]  # leaves in key order: v, w
    assert_equal_to_nt(scaled, x1, x2, params)

    def tied(params, x):  # W used twice: no single linear entry
        h = jnp.tanh(x @ params["w"])
        return (h @ params["w"].T) @ params["w"] @ params["v"][:, None]

    plan = ntk_plan(tied, x1, x2, params)
    assert methods(plan) == ["jacobian", "nt"]  # v reshaped: per-example Jacobian
    assert "used 3 times" in plan.leaves[1].reason
    assert_equal_to_nt(tied, x1, x2, params, trace_axes=())


def test_explicit_implementation_wins(monkeypatch):
    (init_fn, apply_fn, _), shape = network("mlp-ntk", "middle")
    x1, x2, params = draw(init_fn, shape)

    def refuse(*args, **kwargs):
        raise AssertionError("the default path was taken")

    monkeypatch.setattr(nt_frozen.empirical, "block_ntks", refuse)
    explicit = nt_frozen.empirical_ntk_fn(apply_fn, implementation=2, vmap_axes=0)
    assert jax.jit(explicit)(x1, x2, params).shape == (4, 2)
    with pytest.raises(AssertionError, match="default path"):
        nt_frozen.empirical_ntk_fn(apply_fn, vmap_axes=0)(x1, x2, params)


def test_jit_kwargs_and_errors():
    (init_fn, apply_fn, _), shape = network("cnn", "middle")
    x1, x2, params = draw(init_fn, shape)
    ours = jax.jit(nt_frozen.empirical_ntk_fn(apply_fn))(x1, x2, params)
    ref = jax.jit(nt.empirical_ntk_fn(apply_fn, implementation=1))(x1, x2, params)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6 * jnp.abs(ref).max())

    plan = ntk_plan(apply_fn, x1, x2, params, rng=jax.random.PRNGKey(0))
    assert plan.path == "nt" and "apply_fn_kwargs" in plan.reason
    with pytest.raises(ValueError, match="diagonal_axes=.*as many"):
        nt_frozen.empirical_ntk_fn(apply_fn, trace_axes=(), diagonal_axes=(0,))(
            x1, x2, params
        )


def test_dense_over_positions_in_gram_form(x64):
    # A Dense on (N, positions, features) inputs: NT contracts W on the left
    # (z = [fan_out, N, positions]); wide enough for the Gram form to win.
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(64, b_std=0.1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(2)
    )
    x1, x2, params = draw(init_fn, (3, 4, 16))
    plan = ntk_plan(apply_fn, x1, x2, params, trace_axes=())
    assert methods(plan)[0] == "gram"
    assert_equal_to_nt(apply_fn, x1, x2, params, trace_axes=())
