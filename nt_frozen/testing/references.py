"""Independent references for tests of partially trained kernels: float64
closed forms, a second code path through `kernel_fn`, fixed inputs, and a
cheap compilation for checks of values.

Example:
  >>> from nt_frozen import Frozen, stax
  >>> from nt_frozen.networks import freeze_all_but
  >>> x1, x2 = inputs((3,), n1=2, n2=2)
  >>> layers = [stax.Dense(8), stax.Relu(), stax.Dense(1)]
  >>> frozen = stax.serial(*freeze_all_but(layers, keep={2}))[2]
  >>> nngp = stax.serial(*layers)[2](x1, x2, "nngp")
  >>> rel_err(frozen(x1, x2, "ntk"), nngp) < 1e-6  # readout only: the NNGP
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import nt
from nt_frozen._stax_utils import is_kernel
from nt_frozen.validation.statistics import relative_frobenius_error

#: `||a - b||_F / ||b||_F` in float64 (the sweep's error measure).
rel_err = relative_frobenius_error

# XLA's cheapest CPU compilation: for checks of values, not of speed.
_FAST_COMPILE: dict[str, Any] = {  # JAX types values as str | bool; XLA takes ints
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


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
      >>> import jax.numpy as jnp
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
      >>> import jax.numpy as jnp
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
      >>> import jax.numpy as jnp
      >>> fast_jit(lambda a, b: a @ b, jnp.eye(2), jnp.ones(2)).tolist()
      [1.0, 1.0]
    """
    return jax.device_get(jax.jit(fn).lower(*args).compile(_FAST_COMPILE)(*args))
