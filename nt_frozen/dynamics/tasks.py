"""The reference regression task of the dynamics tests, benchmark and
notebook, and training times in units of its stiffest mode."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen.dynamics.schedule import stiffest_mode_time


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
      >>> from nt_frozen.networks import three_layer_mlp
      >>> _, _, kernel_fn = three_layer_mlp(64)
      >>> x_train, y_train, _ = sphere_regression()
      >>> ts = gd_times(kernel_fn, x_train, y_train[:, :1].size)
      >>> ts[1] == 2 * ts[0], ts[-1]
      (True, inf)
    """
    unit = stiffest_mode_time(kernel_fn(x_train, None, "ntk"), y_size)
    return [t * unit for t in units]
