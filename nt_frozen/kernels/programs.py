"""The compiled block programs of `kernel_matrix`, kept across calls.

Tracing and compiling one block program costs about as much as tens of blocks
(0.2-0.5 s per program on a CPU), and a symmetric kernel needs two (diagonal
blocks as `x2=None`). Calls with the same `kernel_fn` object reuse them: the
cache is keyed weakly on `kernel_fn` (its entries go when it does) and then on
everything else that changes the program: `get`, diagonal or not, the devices,
the block shapes and dtypes, and JAX's tracing configuration (x64, matmul
precision, ...). Programs of an empirical `kernel_fn` with `params` hold the
parameters as constants and are not kept.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from nt_frozen._compat import tracing_config

if hasattr(jax, "shard_map"):
    # Each device's block is independent: no replication types to check (with
    # them, NT's empirical VJPs mix device-varying inputs and constant params).
    _shard_map = functools.partial(jax.shard_map, check_vma=False)
else:  # jax < 0.7: the same function under its experimental name
    from jax.experimental.shard_map import shard_map

    _shard_map = functools.partial(shard_map, check_rep=False)

PER_KERNEL_FN = 16  # programs kept per kernel_fn (block sizes tried by sizing)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def block_fn(kernel_fn: Callable, get: tuple[str, ...], params, diagonal: bool):
    """`(xa, xb) -> {name: block}`: exactly `kernel_fn` on one block."""

    def block(xa, xb):
        args = (xa, None if diagonal else xb, get)
        out = kernel_fn(*args) if params is None else kernel_fn(*args, params)
        return dict(zip(get, out))

    return block


def sharded(block: Callable, mesh: Mesh) -> Any:
    """One block per device: inputs and outputs stacked on a leading axis."""

    def local(xa, xb):
        return jax.tree_util.tree_map(lambda v: v[None], block(xa[0], xb[0]))

    spec = PartitionSpec("blocks")
    return jax.jit(_shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec))


def cached(kernel_fn: Callable, params, key: Hashable, build: Callable[[], Any]):
    """`build()`, or its value from an earlier call with the same `kernel_fn`
    object and `key` (plus JAX's tracing configuration)."""
    if params is not None:
        return build()
    try:
        entries = _CACHE.setdefault(kernel_fn, {})
    except TypeError:  # not weakly referenceable: nothing to key on
        return build()
    key = (key, tracing_config())
    if key not in entries:
        if len(entries) >= PER_KERNEL_FN:
            del entries[next(iter(entries))]  # the oldest
        entries[key] = build()
    return entries[key]


def compiled_block(
    kernel_fn: Callable,
    get: tuple[str, ...],
    params,
    diagonal: bool,
    mesh: Mesh,
    xa: jax.ShapeDtypeStruct,
    xb: jax.ShapeDtypeStruct,
):
    """The compiled sharded program for blocks of shapes `xa`, `xb` and its
    output shapes `{name: ShapeDtypeStruct}`."""

    def build():
        program = sharded(block_fn(kernel_fn, get, params, diagonal), mesh)
        return program.lower(xa, xb).compile(), jax.eval_shape(program, xa, xb)

    key = (
        "block",
        get,
        diagonal,
        tuple(mesh.devices.flat),
        (xa.shape, str(xa.dtype)),
        (xb.shape, str(xb.dtype)),
    )
    return cached(kernel_fn, params, key, build)
