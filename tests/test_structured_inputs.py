"""The default empirical NTK on inputs, casts and `apply_fn`s at the edge of
what the structured path reads: other dtypes, weights cast to integers,
functions of the batch size or the row position, empty batches, outputs whose
example axis is not 0, and operations that keep examples apart (checkpoint,
cond, gather, sort, dynamic slices). Each against NT's implementation 1 on the
same network, an independent code path; float64 unless the dtype is the point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nt_frozen
from nt_frozen import Frozen, nt, stax
from nt_frozen.structured import ntk_plan


def mlp_with_biases():
    return stax.serial(
        stax.Dense(16, b_std=0.3),
        stax.Relu(),
        Frozen(stax.Dense(16, W_std=1.4, b_std=0.2)),
        stax.Erf(),
        stax.Dense(2, b_std=0.1),
    )


def ours_and_reference(apply_fn, x1, x2, params, **options):
    """The default empirical NTK and NT implementation 1's, in one `jit`."""

    def both(x1, x2, params):
        return (
            nt_frozen.empirical_ntk_fn(apply_fn, **options)(x1, x2, params),
            nt.empirical_ntk_fn(apply_fn, implementation=1, **options)(x1, x2, params),
        )

    return jax.jit(both)(x1, x2, params)


def rel_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(ref))
    scale = np.linalg.norm(ref)
    assert scale > 0
    return float(np.linalg.norm(ours - ref) / scale)


def inputs(dtype, shape=(5, 6), key=0):
    x = jax.random.normal(jax.random.PRNGKey(key), shape)
    if jnp.issubdtype(dtype, jnp.integer):
        return (10 * jnp.abs(x)).astype(dtype)  # raw pixel values, counts
    if dtype == jnp.bool_:
        return x > 0
    return x.astype(dtype)


@pytest.mark.parametrize(
    "dtype", [jnp.uint8, jnp.int32, jnp.bool_, jnp.float16, jnp.bfloat16, jnp.float32]
)
def test_input_dtypes_into_a_float64_network(dtype, x64):
    # Cotangents take the network's dtype: integer, boolean and narrower float
    # inputs are cast up inside the network, and the kernel is float64-exact.
    init_fn, apply_fn, _ = mlp_with_biases()
    x1, x2 = inputs(dtype), inputs(dtype, (3, 6), key=1)
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    for second in (None, x2):
        ours, ref = ours_and_reference(apply_fn, x1, second, params)
        assert ours.dtype == ref.dtype
        assert rel_error(ours, ref) < 1e-12


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.uint8])
def test_narrow_inputs_into_a_float32_network(dtype):
    # float32 rounding only (NT's own agreement with itself), not the input
    # dtype's: a float16 cotangent gave 3e-4.
    init_fn, apply_fn, _ = mlp_with_biases()
    x = inputs(dtype, (6, 6))
    _, params = init_fn(jax.random.PRNGKey(2), x.shape)
    ours, ref = ours_and_reference(apply_fn, x, None, params)
    assert ours.dtype == jnp.float32
    assert rel_error(ours, ref) < 2e-6


def test_x1_and_x2_of_different_float_dtypes(x64):
    init_fn, apply_fn, _ = mlp_with_biases()
    x1 = inputs(jnp.float32)
    x2 = inputs(jnp.float64, (3, 6), key=1) * (1 + 1e-12)  # not float32-exact
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    ours, ref = ours_and_reference(apply_fn, x1, x2, params, trace_axes=())
    assert rel_error(ours, ref) < 1e-12


def test_float32_params_under_x64(x64):
    init_fn, apply_fn, _ = mlp_with_biases()
    x = inputs(jnp.float32)
    _, params = init_fn(jax.random.PRNGKey(2), x.shape)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
    assert rel_error(*ours_and_reference(apply_fn, x, None, params)) < 2e-6


def two_layer(cast):
    def apply_fn(params, x):
        h = jnp.tanh(x @ cast(params["w"]))
        return h @ params["v"]

    params = {
        "w": jax.random.normal(jax.random.PRNGKey(3), (6, 7)),
        "v": jax.random.normal(jax.random.PRNGKey(4), (7, 2)),
    }
    return apply_fn, params


CASTS = {
    # Rounding to an integer or boolean has zero derivative: `w` adds nothing.
    "int8": lambda w: (4 * w).astype(jnp.int8).astype(w.dtype),
    "bool": lambda w: w.astype(jnp.bool_).astype(w.dtype),
    # Between floating dtypes a cast is linear.
    "float32": lambda w: w.astype(jnp.float32).astype(w.dtype),
}


@pytest.mark.parametrize("cast", CASTS)
def test_weight_casts(cast, x64):
    apply_fn, params = two_layer(CASTS[cast])
    x1, x2 = inputs(jnp.float64), inputs(jnp.float64, (3, 6), key=1)
    plan = ntk_plan(apply_fn, x1, x2, params)
    method = {leaf.path: leaf.method for leaf in plan.leaves}["['w']"]
    assert (method == "nt") == (cast != "float32")
    ours, ref = ours_and_reference(apply_fn, x1, x2, params)
    # JAX rounds the cotangent through the float32 round trip of `w` (the
    # Gram form takes the derivative, 1, exactly): float32 rounding there.
    assert rel_error(ours, ref) < (1e-6 if cast == "float32" else 1e-12)


SHAPE_DEPENDENT = {
    "divides by the batch size": lambda z, n: z / n,
    "adds the row position": lambda z, n: z + jnp.arange(n)[:, None],
    "adds fixed-key noise": lambda z, n: (
        z + jax.random.normal(jax.random.PRNGKey(7), z.shape)
    ),
}


@pytest.mark.parametrize("name", SHAPE_DEPENDENT)
def test_functions_of_the_batch_shape_are_evaluated_per_input(name, x64):
    # NT differentiates f(x1) and f(x2), not rows of f([x1; x2]).
    change = SHAPE_DEPENDENT[name]
    params = {
        "w": jax.random.normal(jax.random.PRNGKey(3), (6, 7)),
        "v": jax.random.normal(jax.random.PRNGKey(4), (7, 2)),
    }

    def apply_fn(params, x):
        z = change(x @ params["w"], x.shape[0])
        return jnp.tanh(z) @ params["v"]

    x1, x2 = inputs(jnp.float64), inputs(jnp.float64, (3, 6), key=1)
    assert ntk_plan(apply_fn, x1, x2, params).path == "structured"
    for options in ({}, {"trace_axes": ()}):
        assert (
            rel_error(*ours_and_reference(apply_fn, x1, x2, params, **options)) < 1e-12
        )


def test_empty_batches_give_nt_empty_kernels(x64):
    init_fn, apply_fn, _ = mlp_with_biases()
    x, empty = inputs(jnp.float64), jnp.zeros((0, 6))
    _, params = init_fn(jax.random.PRNGKey(2), x.shape)
    for x1, x2 in ((empty, None), (empty, x), (x, empty)):
        ours = nt_frozen.empirical_ntk_fn(apply_fn)(x1, x2, params)
        ref = nt.empirical_ntk_fn(apply_fn, implementation=1)(x1, x2, params)
        assert ours.shape == ref.shape and ours.size == 0


def test_output_with_the_example_axis_last(x64):
    init_fn, apply_fn, _ = mlp_with_biases()
    x1, x2 = inputs(jnp.float64), inputs(jnp.float64, (3, 6), key=1)
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)

    def transposed(params, x):  # (outputs, examples)
        return apply_fn(params, x).T

    plan = ntk_plan(transposed, x1, x2, params)
    assert plan.path == "nt" and plan.nt_vmap_axes == (0, 1, {})
    for options in ({"trace_axes": (0,)}, {"trace_axes": ()}):
        assert (
            rel_error(*ours_and_reference(transposed, x1, x2, params, **options))
            < 1e-12
        )


def _gathered(h):
    return h[:, jnp.array([0, 2, 3, 5])]


KEEPS_EXAMPLES_APART = {
    "checkpoint": lambda f: jax.checkpoint(f),
    "cond": lambda f: (
        lambda p, x: jax.lax.cond(
            p[0][0][0, 0] > -100, lambda x: f(p, x), lambda x: 2 * f(p, x), x
        )
    ),
    "gather": lambda f: lambda p, x: _gathered(f(p, x)),
    "sort": lambda f: lambda p, x: jnp.sort(f(p, x), axis=1),
    "dynamic_slice": lambda f: (
        lambda p, x: jax.lax.dynamic_slice_in_dim(f(p, x), 1, 3, axis=1)
    ),
}


@pytest.mark.parametrize("name", KEEPS_EXAMPLES_APART)
def test_operations_that_keep_examples_apart_stay_structured(name, x64):
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(16, b_std=0.3), stax.Relu(), stax.Dense(6, b_std=0.1)
    )
    wrapped = KEEPS_EXAMPLES_APART[name](apply_fn)
    x1, x2 = inputs(jnp.float64), inputs(jnp.float64, (3, 6), key=1)
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    plan = ntk_plan(wrapped, x1, x2, params)
    assert plan.independent, plan.reason
    assert plan.nt_vmap_axes == 0
    if name == "checkpoint":  # the body is inlined: every leaf is matched
        assert plan.path == "structured"
    ours, ref = ours_and_reference(wrapped, x1, x2, params, trace_axes=())
    assert rel_error(ours, ref) < 1e-12


def test_gather_and_sort_along_the_example_axis_mix_examples():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(3))
    x = inputs(jnp.float32)
    _, params = init_fn(jax.random.PRNGKey(2), x.shape)
    for mixing in (
        lambda p, x: apply_fn(p, x)[jnp.array([1, 0, 2, 4, 3])],
        lambda p, x: jnp.sort(apply_fn(p, x), axis=0),
    ):
        plan = ntk_plan(mixing, x, None, params)
        assert plan.independent is False and plan.nt_vmap_axes is None
