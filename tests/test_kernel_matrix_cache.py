"""`kernel_matrix` keeps its compiled block programs across calls: reused for the
same `kernel_fn`, never for another `kernel_fn`, `get`, dtype, block size or
x64 setting (each result against `jax.jit(kernel_fn)` on all inputs)."""

from __future__ import annotations

import gc

import jax
import numpy as np
import pytest

from nt_frozen import Frozen, kernel_matrix, stax
from nt_frozen.kernels import programs


def _net(w_std):
    return stax.serial(
        stax.Dense(16), stax.Relu(), Frozen(stax.Dense(16, W_std=w_std)), stax.Dense(1)
    )[2]


def _inputs(n, dtype=np.float32):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, 3)), dtype)


def _check(kernel_fn, x, get, **kwargs):
    k = kernel_matrix(kernel_fn, x, None, get, progress=False, **kwargs)
    ref = np.asarray(jax.jit(kernel_fn, static_argnames="get")(x, None, get=get))
    assert k.dtype == ref.dtype
    # float32: NT's x2=None branch rounds the diagonal blocks' entries apart
    assert np.linalg.norm(k - ref) < 1e-4 * np.linalg.norm(ref)
    return k


@pytest.fixture
def builds(monkeypatch):
    """How many block programs were traced and compiled."""
    count = [0]
    sharded = programs.sharded

    def counted(*args, **kwargs):
        count[0] += 1
        return sharded(*args, **kwargs)

    monkeypatch.setattr(programs, "sharded", counted)
    return count


def test_same_kernel_fn_reuses_its_programs(builds):
    kernel_fn, x = _net(1.0), _inputs(10)
    first = _check(kernel_fn, x, "ntk", block_size=4)
    assert builds[0] == 2  # diagonal blocks (x2=None) and the others
    again = _check(kernel_fn, x, "ntk", block_size=4)
    assert builds[0] == 2
    np.testing.assert_array_equal(again, first)


def test_programs_differ_by_kernel_fn_get_dtype_block_and_x64(builds):
    a, b, x = _net(1.0), _net(3.0), _inputs(10)
    ka = _check(a, x, "ntk", block_size=4)
    kb = _check(b, x, "ntk", block_size=4)  # same shapes, another network
    assert np.abs(kb - ka).max() > 0.1 * np.abs(ka).max()
    _check(a, x, "nngp", block_size=4)
    _check(a, x, "ntk", block_size=5)
    assert builds[0] == 8
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        k64 = _check(a, x, "ntk", block_size=4)  # float32 inputs, x64 on
        assert k64.dtype == np.float64
        _check(a, _inputs(10, np.float64), "ntk", block_size=4)
    finally:
        jax.config.update("jax_enable_x64", previous)
    assert builds[0] == 12


def test_programs_go_with_their_kernel_fn():
    kernel_fn = _net(1.0)
    kernel_matrix(kernel_fn, _inputs(6), None, "ntk", block_size=4, progress=False)
    assert kernel_fn in programs._CACHE
    before = len(programs._CACHE)
    del kernel_fn
    gc.collect()
    assert len(programs._CACHE) == before - 1


def test_empirical_programs_with_params_are_not_kept(builds):
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(1))
    from nt_frozen import empirical_kernel_fn

    kfn, x = empirical_kernel_fn(apply_fn), _inputs(6)
    for seed in (1, 2):  # other parameters, same kernel_fn and shapes
        _, params = init_fn(jax.random.PRNGKey(seed), x.shape)
        k = kernel_matrix(
            kfn, x, None, "ntk", params=params, block_size=4, progress=False
        )
        ref = np.asarray(kfn(x, None, "ntk", params))
        assert np.linalg.norm(k - ref) < 1e-4 * np.linalg.norm(ref)
    assert builds[0] == 4
