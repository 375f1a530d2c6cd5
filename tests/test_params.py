"""Trainable/frozen partition, optimizer masks, and training with optax; the
walk through markers, and the layering of the modules below the layers."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nt_frozen
from nt_frozen import (
    Frozen,
    FrozenParams,
    LearningRate,
    RatedParams,
    freeze_like,
    labels,
    learning_rates,
    merge,
    split,
    stax,
    trainable_mask,
    unfreeze,
)
from nt_frozen.markers import map_with_rates
from nt_frozen.testing import frozen_middle_mlp


def nested_net():
    return stax.serial(
        stax.Dense(16, b_std=0.1),
        stax.Relu(),
        stax.FanOut(2),
        stax.parallel(Frozen(stax.Dense(16, W_std=1.3, b_std=0.2)), stax.Dense(16)),
        stax.FanInSum(),
        stax.repeat(stax.serial(stax.Relu(), Frozen(stax.Dense(16))), 2),
        stax.Relu(),
        stax.Dense(1, b_std=0.1),
    )


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_split_merge_roundtrip_and_mask():
    init_fn, _, _ = nested_net()
    _, params = init_fn(jax.random.PRNGKey(0), (2, 5))
    trainable, frozen = split(params)
    assert _leaves_equal(merge(trainable, frozen), params)
    assert _leaves_equal(jax.jit(lambda t, f: merge(t, f))(trainable, frozen), params)
    n_frozen = sum(x.size for x in jax.tree_util.tree_leaves(frozen))
    n_trainable = sum(x.size for x in jax.tree_util.tree_leaves(trainable))
    # parallel branch (W, b) + repeat's Dense, whose params hold both repetitions
    assert n_frozen == 16 * 16 + 16 + 2 * 16 * 16
    assert n_frozen + n_trainable == sum(
        x.size for x in jax.tree_util.tree_leaves(params)
    )
    mask = trainable_mask(params)
    flat_mask = jax.tree_util.tree_leaves(mask)
    assert sum(not m for m in flat_mask) == 3 and sum(flat_mask) == 5
    assert set(jax.tree_util.tree_leaves(labels(params))) == {"trainable", "frozen"}


def test_grad_on_trainable_half():
    init_fn, apply_fn, _ = nested_net()
    x = jnp.ones((3, 5))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    trainable, frozen = split(params)
    g = jax.grad(lambda t: jnp.sum(apply_fn(merge(t, frozen), x) ** 2))(trainable)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(trainable)
    assert all(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree_util.tree_leaves(g))


def test_freeze_like_and_errors():
    frozen_net = nested_net()
    plain_net = stax.serial(stax.Dense(16, b_std=0.1), stax.Relu(), stax.Dense(3))
    _, like = frozen_net[0](jax.random.PRNGKey(0), (2, 5))
    pretrained = unfreeze(frozen_net[0](jax.random.PRNGKey(7), (2, 5))[1])
    loaded = freeze_like(pretrained, like)
    assert _leaves_equal(unfreeze(loaded), pretrained)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(like)
    with pytest.raises(ValueError, match="layout of the frozen network"):
        freeze_like(plain_net[0](jax.random.PRNGKey(0), (2, 5))[1], like)
    wrong_shape = unfreeze(frozen_net[0](jax.random.PRNGKey(7), (2, 6))[1])
    with pytest.raises(ValueError, match=r"\[0\]\[0\] has shape \(6, 16\)"):
        freeze_like(wrong_shape, like)
    trainable, frozen = split(like)
    other_trainable, _ = split(plain_net[0](jax.random.PRNGKey(0), (2, 5))[1])
    with pytest.raises(ValueError, match="do not match|does not come from"):
        merge(other_trainable, frozen)


def _l2_adam_steps(opt, n_steps=5):
    """`n_steps` of `opt` on a loss with an L2 term on *all* parameters, whose
    gradient reaches frozen leaves too (outside `apply_fn`'s stop-gradient).
    Returns the parameters before and after."""
    init_fn, apply_fn, _ = frozen_middle_mlp(16)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)

    def loss(p):
        l2 = sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))
        return jnp.mean((apply_fn(p, x) - 1.0) ** 2) + 1e-2 * l2

    opt = opt(params)
    state, new = opt.init(params), params
    for _ in range(n_steps):
        updates, state = opt.update(jax.grad(loss)(new), state, new)
        new = optax.apply_updates(new, updates)
    return params, new


@pytest.mark.parametrize(
    "recipe",
    [
        lambda p: optax.multi_transform(
            {"trainable": optax.adam(0.1), "frozen": optax.set_to_zero()}, labels(p)
        ),
        lambda p: optax.chain(
            optax.adam(0.1), optax.masked(optax.set_to_zero(), nt_frozen.frozen_mask(p))
        ),
        # optax also takes the label / mask functions themselves
        lambda p: optax.multi_transform(
            {"trainable": optax.adam(0.1), "frozen": optax.set_to_zero()}, labels
        ),
        lambda p: optax.chain(
            optax.adam(0.1), optax.masked(optax.set_to_zero(), nt_frozen.frozen_mask)
        ),
    ],
    ids=[
        "multi_transform-labels",
        "set_to_zero-frozen_mask",
        "multi_transform-labels-fn",
        "set_to_zero-frozen_mask-fn",
    ],
)
def test_optax_recipes_keep_frozen_leaves_fixed_under_l2(recipe):
    """The README's recipes: 5 Adam steps with an L2 term on all parameters
    leave frozen leaves bit-for-bit unchanged and move the trainable ones."""
    params, new = _l2_adam_steps(recipe)
    assert _leaves_equal(split(new)[1], split(params)[1])
    moved = jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max()), split(new)[0], split(params)[0]
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_optax_masked_alone_moves_frozen_leaves():
    """Why the README does not recommend `optax.masked(opt, trainable_mask)`:
    masked-out leaves get the raw gradient as their update, so the L2 term
    moves frozen weights. The recipes' test above can therefore fail."""
    params, new = _l2_adam_steps(
        lambda p: optax.masked(optax.adam(0.1), trainable_mask(p))
    )
    frozen_before = jax.tree_util.tree_leaves(split(params)[1])
    frozen_after = jax.tree_util.tree_leaves(split(new)[1])
    assert (
        max(float(jnp.abs(a - b).max()) for a, b in zip(frozen_after, frozen_before))
        > 1e-3
    )


def test_optax_adamw_with_mask_keeps_frozen_bits():
    """adamw with weight decay on trainable leaves only, frozen leaves set to
    zero updates: frozen weights bit-for-bit unchanged, the loss goes down."""
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(64, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(64, b_std=0.1)),
        stax.Relu(),
        stax.Dense(1),
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
    y = jnp.sin(x.sum(1, keepdims=True))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    opt = optax.multi_transform(
        {
            "trainable": optax.adamw(1e-2, weight_decay=0.1),
            "frozen": optax.set_to_zero(),
        },
        labels(params),
    )
    state = opt.init(params)

    def loss(p):
        return jnp.mean((apply_fn(p, x) - y) ** 2)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    start = loss(params)
    new = params
    for _ in range(300):
        new, state, _ = step(new, state)
    assert float(loss(new)) < 0.2 * float(start)
    assert _leaves_equal(split(new)[1], split(params)[1])  # bit-for-bit
    assert not np.allclose(new[0][0], params[0][0])


def test_haiku_subset_training_example():
    """Haiku docs' 'training a subset of parameters', with stax + Frozen: an MLP
    learns the identity on 0..9 with its middle layer frozen."""
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(32, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(32, b_std=0.1)),
        stax.Relu(),
        stax.Dense(1, b_std=0.1),
    )
    x = jnp.arange(10.0).reshape(10, 1)
    _, params = init_fn(jax.random.PRNGKey(42), x.shape)
    trainable, frozen = split(params)
    opt = optax.adam(1e-2)
    state = opt.init(trainable)

    def loss(t):
        return jnp.mean((apply_fn(merge(t, frozen), x) - x) ** 2)

    @jax.jit
    def step(t, s):
        g = jax.grad(loss)(t)
        updates, s = opt.update(g, s)
        return optax.apply_updates(t, updates), s

    for _ in range(2000):
        trainable, state = step(trainable, state)
    prediction = apply_fn(merge(trainable, frozen), x)
    np.testing.assert_allclose(prediction, x, atol=0.3)
    assert float(loss(trainable)) < 0.02


def test_frozen_params_node_in_pytree_utilities():
    p = FrozenParams((jnp.ones(2), None))
    assert jax.tree_util.tree_leaves(p)[0].shape == (2,)
    assert isinstance(jax.tree_util.tree_map(lambda x: 2 * x, p), FrozenParams)


def test_freeze_like_copies_rates_and_frozen_marks():
    """Pretrained plain parameters take the markers of the rated network's own
    `init_fn` (the reference), rates and frozen leaves alike."""
    layers = [
        LearningRate(stax.Dense(8, b_std=0.1), 0.1),
        stax.Relu(),
        Frozen(LearningRate(stax.Dense(8), 3.0)),
        LearningRate(stax.serial(stax.Dense(8), stax.Dense(2, b_std=0.2)), 10.0),
    ]
    _, like = stax.serial(*layers)[0](jax.random.PRNGKey(0), (2, 5))
    plain = stax.serial(
        stax.Dense(8, b_std=0.1),
        stax.Relu(),
        stax.Dense(8),
        stax.serial(stax.Dense(8), stax.Dense(2, b_std=0.2)),
    )[0]
    _, pretrained = plain(jax.random.PRNGKey(7), (2, 5))
    marked = freeze_like(pretrained, like)
    structure = jax.tree_util.tree_structure
    assert structure(marked) == structure(like)
    assert structure(learning_rates(marked)) == structure(learning_rates(like))
    rates = jax.tree_util.tree_leaves(learning_rates(marked))
    assert rates == jax.tree_util.tree_leaves(learning_rates(like))
    assert sorted(set(rates)) == [0.0, 0.1, 10.0]
    for got, want in zip(
        jax.tree_util.tree_leaves(marked), jax.tree_util.tree_leaves(pretrained)
    ):
        np.testing.assert_array_equal(got, want)


def test_the_walk_multiplies_rates_frozen_as_zero():
    """Each leaf's rate is the product of the markers above it, a frozen one
    counting 0 (rates worked out by hand); markers are kept, or dropped."""
    tree = [
        RatedParams({"a": 1.0, "f": FrozenParams(RatedParams(2.0, 3.0))}, 0.5),
        FrozenParams({"z": 4.0}),
        RatedParams(RatedParams(6.0, 4.0), 0.25),
        5.0,
    ]
    rates = map_with_rates(lambda _, rate: rate, tree)
    structure = jax.tree_util.tree_structure
    assert structure(rates) == structure(tree)
    assert jax.tree_util.tree_leaves(rates) == [0.5, 0.0, 0.0, 1.0, 1.0]
    assert (
        repr(rates[0]) == "RatedParams({'a': 0.5, 'f': FrozenParams("
        "RatedParams(0.0, rate=3.0))}, rate=0.5)"
    )
    values = map_with_rates(lambda leaf, _: leaf, tree, keep_markers=False)
    assert values == [{"a": 1.0, "f": 2.0}, {"z": 4.0}, 6.0, 5.0]


# What each module below the layers may load (besides itself): markers is the
# floor, params and the rate scaling stand on it alone, without NT.
FLOOR = {
    "markers": set(),
    "params": {"markers"},
    "rate_scaling": {"markers"},
    "checks": {"markers"},
}
ROOT = pathlib.Path(nt_frozen.__file__).parent


@pytest.mark.parametrize("module", sorted(FLOOR))
def test_the_floor_loads_only_what_it_stands_on(module):
    """Imported alone (under an empty `nt_frozen` package, so that its
    `__init__` loads nothing), a floor module loads only its own floor, and
    no neural-tangents."""
    code = textwrap.dedent(
        f"""
        import sys, types
        package = types.ModuleType("nt_frozen")
        package.__path__ = [{str(ROOT)!r}]
        sys.modules["nt_frozen"] = package
        import nt_frozen.{module}
        print(sorted(m[len("nt_frozen."):] for m in sys.modules
                     if m.startswith("nt_frozen.")))
        print("neural_tangents" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, nt_loaded = out.stdout.split("\n")[:2]
    assert loaded == str(sorted(FLOOR[module] | {module}))
    assert nt_loaded == "False"


LAYERS = ("markers", "params", "rate_scaling", "checks", "frozen", "rates")


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """`(module, at top level)` for each nt_frozen module `path` imports."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "nt_frozen"
        ):
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [
                (a.name, id(node) in top)
                for a in node.names
                if a.name.startswith("nt_frozen")
            ]
    return found


def test_the_layers_import_downwards_only():
    """Markers, params, frozen and rates import each other at the top of the
    module only (no import deferred into a function to dodge a cycle), and
    each imports only modules listed before it."""
    for i, name in enumerate(LAYERS):
        below = {f"nt_frozen.{m}" for m in LAYERS[:i]}
        for module, at_top in _imports(ROOT / f"{name}.py"):
            assert at_top, (name, module)
            if module.removeprefix("nt_frozen.") in LAYERS:
                assert module in below, (name, module)
