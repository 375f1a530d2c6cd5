"""Shared fixtures: float64 switching and an independent reference NTK path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import nt


@pytest.fixture
def x64():
    """Run a test in float64, restoring the global setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def is_kernel(x) -> bool:
    return isinstance(x, nt.Kernel)


def linear_part_by_subtraction(kernel_fn, k, **kwargs):
    """Reference for the frozen NTK, by a second code path: two passes,
    `kernel_fn(k).ntk - kernel_fn(k with ntk = 0).ntk` (exact in float64 when
    the own-parameter term is of moderate size)."""
    zero_ntk = jax.tree_util.tree_map(
        lambda kk: kk.replace(ntk=jnp.zeros_like(kk.ntk)), k, is_leaf=is_kernel
    )
    full = kernel_fn(k, **kwargs)
    own = kernel_fn(zero_ntk, **kwargs)
    return jax.tree_util.tree_map(
        lambda a, b: a.ntk - b.ntk, full, own, is_leaf=is_kernel
    )


def assert_same_fields_but_ntk(k_frozen, k_plain):
    """Every Kernel field but `ntk` must be identical (values, shapes, flags)."""
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


def rel_err(a, b) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def relu_arccos(gram):
    """ReLU's NNGP map and derivative kernel, in float64 numpy (the arc-cosine
    kernels of Cho & Saul 2009), for a full covariance `gram` over all points."""
    gram = np.asarray(gram, np.float64)
    norms = np.sqrt(np.diag(gram))
    prod = np.outer(norms, norms)
    cos = np.clip(gram / prod, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)  # exactly, so that arccos does not amplify rounding
    theta = np.arccos(cos)
    nngp = prod * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    return nngp, (np.pi - theta) / (2 * np.pi)
