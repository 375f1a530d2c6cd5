"""Reference networks and helpers shared by the tests, benchmarks, notebooks
and the validation sweep.

Independent references (float64 closed forms, a second code path through
`kernel_fn`), input draws, error measures and the small networks that several
of them train, defined once so that a test, a benchmark and a notebook mean
the same thing by "the frozen-middle MLP".

Constants:
  FREEZING_PATTERNS: which of the three Dense layers of :func:`three_layer_mlp`
    are frozen, by name: `"frozen_middle"`, `"readout_only"` (only the readout
    trains) and `"first_layer_only"` (only the first Dense trains).
  LAYER_CASES: every layer and combinator of `stax`, each after a trainable
    block (so that its incoming NTK is non-zero), as tuples `(id, block
    before, layer, input shape, has own parameters, kernel_fn kwargs)`; inputs
    from :func:`layer_inputs`.

Example:
  >>> from nt_frozen import Frozen, stax
  >>> from nt_frozen.testing import freeze_all_but, inputs, rel_err
  >>> x1, x2 = inputs((3,), n1=2, n2=2)
  >>> layers = [stax.Dense(8), stax.Relu(), stax.Dense(1)]
  >>> frozen = stax.serial(*freeze_all_but(layers, keep={2}))[2]
  >>> nngp = stax.serial(*layers)[2](x1, x2, "nngp")
  >>> rel_err(frozen(x1, x2, "ntk"), nngp) < 1e-6  # readout only: the NNGP
  True
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import nt, stax
from nt_frozen._stax_utils import Layer
from nt_frozen.dynamics.schedule import stiffest_mode_time
from nt_frozen.frozen import Frozen

__all__ = [
    "FREEZING_PATTERNS",
    "LAYER_CASES",
    "assert_same_fields_but_ntk",
    "fast_jit",
    "freeze_all_but",
    "gd_times",
    "frozen_middle_mlp",
    "inputs",
    "is_kernel",
    "layer_inputs",
    "linear_part_by_subtraction",
    "rel_err",
    "relu_arccos",
    "sphere_regression",
    "synthetic_sweep_result",
    "three_layer_mlp",
]

FREEZING_PATTERNS = {
    "frozen_middle": (False, True, False),
    "readout_only": (True, True, False),
    "first_layer_only": (False, True, True),
}

# XLA's cheapest CPU compilation: for checks of values, not of speed.
_FAST_COMPILE: dict[str, Any] = {  # JAX types values as str | bool; XLA takes ints
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def is_kernel(x: Any) -> bool:
    """Whether `x` is an `nt.Kernel` (the leaf test for Kernel pytrees).

    Example:
      >>> from nt_frozen import stax
      >>> k = stax.Dense(1)[2](jnp.ones((2, 3)), None)
      >>> is_kernel(k), is_kernel(k.ntk)
      (True, False)
    """
    return isinstance(x, nt.Kernel)


def rel_err(a: Any, b: Any) -> float:
    """Relative Frobenius error `||a - b|| / ||b||`, in float64.

    Example:
      >>> rel_err([3.0, 4.0], [0.0, 4.0])  # ||(3, 0)|| / ||(0, 4)||
      0.75
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def relu_arccos(gram: Any) -> tuple[np.ndarray, np.ndarray]:
    """ReLU's NNGP map and derivative kernel, in float64 numpy.

    The arc-cosine kernels of Cho & Saul (2009), for a full covariance `gram`
    over all points: an independent reference for `stax.Relu`.

    Args:
      gram: `(n, n)` covariance of the pre-activations.

    Returns:
      `(nngp, dot)`: `E[relu(u) relu(v)]` and `E[relu'(u) relu'(v)]`.

    Example:
      >>> nngp, dot = relu_arccos(np.eye(2))
      >>> float(nngp[0, 0]), float(dot[0, 1])  # E[relu(u)^2] = 1/2; orthogonal: 1/4
      (0.5, 0.25)
    """
    gram = np.asarray(gram, np.float64)
    norms = np.sqrt(np.diag(gram))
    prod = np.outer(norms, norms)
    cos = np.clip(gram / prod, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)  # exactly, so that arccos does not amplify rounding
    theta = np.arccos(cos)
    nngp = prod * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    return nngp, (np.pi - theta) / (2 * np.pi)


def linear_part_by_subtraction(kernel_fn: Callable, k: Any, **kwargs: Any) -> Any:
    """Reference for the frozen NTK of a layer, by a second code path.

    Two passes, `kernel_fn(k).ntk - kernel_fn(k with ntk = 0).ntk`: the part of
    the output NTK linear in the input NTK (exact in float64 when the layer's
    own-parameter term is of moderate size).

    Args:
      kernel_fn: the layer's (unfrozen) `kernel_fn`.
      k: the input `Kernel`, or a pytree of them.
      **kwargs: passed to `kernel_fn`.

    Returns:
      The frozen layer's output NTK (a pytree like `kernel_fn`'s output).

    Example:
      >>> from nt_frozen import Frozen, stax
      >>> x = jnp.ones((2, 3))
      >>> k = stax.Dense(4, W_std=2.0)[2](x, None)
      >>> want = linear_part_by_subtraction(stax.Dense(4, W_std=3.0)[2], k)
      >>> got = Frozen(stax.Dense(4, W_std=3.0))[2](k).ntk
      >>> rel_err(got, want) < 1e-6
      True
    """
    zero_ntk = jax.tree_util.tree_map(
        lambda kk: kk.replace(ntk=jnp.zeros_like(kk.ntk)), k, is_leaf=is_kernel
    )
    full = kernel_fn(k, **kwargs)
    own = kernel_fn(zero_ntk, **kwargs)
    return jax.tree_util.tree_map(
        lambda a, b: a.ntk - b.ntk, full, own, is_leaf=is_kernel
    )


def assert_same_fields_but_ntk(k_frozen: Any, k_plain: Any) -> None:
    """Assert that every `Kernel` field but `ntk` is identical (values, shapes,
    flags) between two Kernel pytrees.

    Example:
      >>> from nt_frozen import Frozen, stax
      >>> x = jnp.ones((2, 3))
      >>> dense = stax.Dense(4, W_std=2.0)
      >>> assert_same_fields_but_ntk(Frozen(dense)[2](x, None), dense[2](x, None))
    """
    flat_f = jax.tree_util.tree_leaves(k_frozen, is_leaf=is_kernel)
    flat_p = jax.tree_util.tree_leaves(k_plain, is_leaf=is_kernel)
    assert len(flat_f) == len(flat_p)
    for kf, kp in zip(flat_f, flat_p):
        for field in dataclasses.fields(nt.Kernel):
            if field.name == "ntk":
                continue
            a, b = getattr(kf, field.name), getattr(kp, field.name)
            if a is None or b is None:
                assert a is b, field.name
            elif isinstance(a, (jax.Array, np.ndarray)):
                np.testing.assert_array_equal(a, b, err_msg=field.name)
            else:
                assert a == b, field.name


def inputs(
    shape: Sequence[int], n1: int = 4, n2: int = 3, same: bool = False
) -> tuple[jax.Array, jax.Array | None]:
    """Fixed standard-normal inputs `x1` `(n1, *shape)` and `x2` `(n2, *shape)`.

    Args:
      shape: shape of one input (without the batch axis).
      n1, n2: batch sizes.
      same: return `x2 = None` (the kernel of `x1` with itself).

    Example:
      >>> x1, x2 = inputs((4, 4, 2), n1=3, n2=2)
      >>> x1.shape, x2.shape, inputs((3,), same=True)[1]
      ((3, 4, 4, 2), (2, 4, 4, 2), None)
    """
    x1 = jax.random.normal(jax.random.PRNGKey(10), (n1, *shape))
    x2 = None if same else jax.random.normal(jax.random.PRNGKey(11), (n2, *shape))
    return x1, x2


def fast_jit(fn: Callable, *args: Any) -> Any:
    """`jax.jit(fn)(*args)`, compiled with XLA's cheapest settings, results on
    the host: one compilation is far cheaper than NT's op-by-op dispatch when
    only values matter.

    Example:
      >>> fast_jit(lambda a, b: a @ b, jnp.eye(2), jnp.ones(2)).tolist()
      [1.0, 1.0]
    """
    return jax.device_get(jax.jit(fn).lower(*args).compile(_FAST_COMPILE)(*args))


def freeze_all_but(layers: Iterable[Layer], keep: Iterable[int]) -> list[Layer]:
    """The layers with every one not indexed in `keep` wrapped in `Frozen`.

    Example:
      >>> from nt_frozen import is_frozen_layer, stax
      >>> layers = freeze_all_but([stax.Dense(2), stax.Relu(), stax.Dense(1)], {2})
      >>> [is_frozen_layer(layer) for layer in layers]
      [True, True, False]
    """
    keep = set(keep)
    return [lyr if i in keep else Frozen(lyr) for i, lyr in enumerate(layers)]


def sphere_regression(
    n_train: int = 10, n_test: int = 6, d: int = 8
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The regression task of the dynamics tests and benchmark (seed 0).

    Points on the sphere of radius `sqrt(d)` in `R^d`; three target columns
    `sin(x . v_j / 2)` with `v_0 = linspace(-1, 1, d)`, `v_1 = cos(0..d-1)`,
    `v_2 = 1`. All float32.

    Returns:
      `(x_train (n_train, d), y_train (n_train, 3), x_test (n_test, d))`.

    Example:
      >>> x_train, y_train, x_test = sphere_regression()
      >>> x_train.shape, y_train.shape, x_test.shape
      ((10, 8), (10, 3), (6, 8))
      >>> bool(jnp.allclose(jnp.linalg.norm(x_test, axis=1), 8 ** 0.5))
      True
    """
    rng = np.random.default_rng(0)

    def sphere(n):
        x = rng.normal(size=(n, d))
        return np.sqrt(d) * x / np.linalg.norm(x, axis=1, keepdims=True)

    x_train, x_test = sphere(n_train), sphere(n_test)
    directions = np.stack([np.linspace(-1, 1, d), np.cos(np.arange(d)), np.ones(d)])
    y_train = np.sin(x_train @ directions.T / 2)
    return (
        jnp.asarray(x_train, jnp.float32),
        jnp.asarray(y_train, jnp.float32),
        jnp.asarray(x_test, jnp.float32),
    )


def gd_times(
    kernel_fn: Callable,
    x_train: Any,
    y_size: int,
    units: Sequence[float] = (1.0, 2.0, 4.0, math.inf),
) -> list[float]:
    """Training times in NT's units (learning rate 1) from times in units of
    the stiffest mode, `N / lambda_max` of the analytic NTK on `x_train`
    (`N = y_size`, the number of targets).

    Example:
      >>> _, _, kernel_fn = three_layer_mlp(64)
      >>> x_train, y_train, _ = sphere_regression()
      >>> ts = gd_times(kernel_fn, x_train, y_train[:, :1].size)
      >>> ts[1] == 2 * ts[0], ts[-1]
      (True, inf)
    """
    unit = stiffest_mode_time(kernel_fn(x_train, None, "ntk"), y_size)
    return [t * unit for t in units]


def synthetic_sweep_result(name: str = "toy", offset: float = 0.0) -> Any:
    """A sweep result from synthetic draws, for reports without a sweep.

    Draws `K + noise / sqrt(n)` at widths 256, 1024, 4096 (8 each, seed 0)
    around `K = I + 0.5` (3 x 3), scored against `K - offset`: PASS for
    `offset=0`, FAIL for an offset well above the noise (e.g. 0.3).

    Returns:
      A :class:`~nt_frozen.validation.ArchitectureResult` without controls.

    Example:
      >>> synthetic_sweep_result().frozen.verdict
      'PASS'
      >>> synthetic_sweep_result("wrong", offset=0.3).frozen.verdict
      'FAIL'
    """
    from nt_frozen.validation import ArchitectureResult, compare

    rng, k, widths = np.random.default_rng(0), np.eye(3) + 0.5, [256, 1024, 4096]
    draws = [k + rng.normal(size=(8, 3, 3)) / np.sqrt(n) for n in widths]
    comparison = compare(widths, draws, [k - offset] * 3)
    return ArchitectureResult(name, "synthetic draws", comparison, {}, 0.0)


def three_layer_mlp(
    width: int,
    frozen: Sequence[bool] = (False, False, False),
    middle: Callable[[Layer], Layer] | None = None,
    outputs: int = 1,
    w_middle: float = 0.5,
) -> Layer:
    """Dense -> Relu -> Dense(W_std=`w_middle`) -> Relu -> Dense(`outputs`),
    all `b_std=0.1`: the network the dynamics are trained on.

    Args:
      width: hidden width.
      frozen: which of the three Dense layers are wrapped in `Frozen` (see
        `FREEZING_PATTERNS`).
      middle: if given, applied to the middle Dense (after freezing), e.g. a
        control or `LearningRate`.
      outputs: the readout's width.
      w_middle: the middle Dense's `W_std`; the default 0.5 is far from 1, so
        that a frozen layer that passed the NTK through unchanged is visibly
        wrong.

    Returns:
      The `stax.serial` triple `(init_fn, apply_fn, kernel_fn)`.

    Example:
      >>> _, _, kernel_fn = three_layer_mlp(64, FREEZING_PATTERNS["readout_only"])
      >>> x = jnp.ones((2, 8))
      >>> rel_err(kernel_fn(x, None, "ntk"), kernel_fn(x, None, "nngp")) < 1e-6
      True
    """
    dense = [
        stax.Dense(width, b_std=0.1),
        stax.Dense(width, W_std=w_middle, b_std=0.1),
        stax.Dense(outputs, b_std=0.1),
    ]
    dense = [Frozen(d) if f else d for d, f in zip(dense, frozen)]
    if middle is not None:
        dense[1] = middle(dense[1])
    return stax.serial(dense[0], stax.Relu(), dense[1], stax.Relu(), dense[2])


def frozen_middle_mlp(width: int = 256) -> Layer:
    """Dense -> Relu -> Frozen(Dense(W_std=1.4)) -> Relu -> Dense(2): a small
    network with frozen and trainable parameters, for parameter-tree and
    empirical-kernel checks.

    Example:
      >>> from nt_frozen import split
      >>> init_fn, _, _ = frozen_middle_mlp(4)
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 3))
      >>> trainable, frozen = split(params)
      >>> len(jax.tree_util.tree_leaves(frozen))  # the middle Dense's W and b
      2
    """
    return stax.serial(
        stax.Dense(width, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(width, W_std=1.4, b_std=0.1)),
        stax.Relu(),
        stax.Dense(2),
    )


# --- Every stax layer after a trainable block ---------------------------------

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
