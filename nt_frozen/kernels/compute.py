"""`kernel_matrix`: a kernel on many inputs, in blocks, over devices and processes.

One compiled program computes one block per local device per step
(`shard_map` over a one-axis mesh of the local devices, not `pmap`); inside,
each device runs exactly `kernel_fn` on its block, so each block equals
`jax.jit(kernel_fn)` on that block's inputs bit for bit. A symmetric kernel
computes only the blocks on and above the diagonal; diagonal blocks are
computed as `kernel_fn(x, None)`, like one call on all inputs would. Processes
of a `jax.distributed` job take every `process_count`-th block and write to one
store. The compiled programs are kept for later calls with the same `kernel_fn`
object (`nt_frozen.kernels.programs`), and the host copies of finished blocks
overlap the device's work on the next ones.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import mmap
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from nt_frozen.kernels.layout import (
    Block,
    BlockLayout,
    blocked_rows,
    share,
    write_block,
)
from nt_frozen.kernels.programs import block_fn, cached, compiled_block
from nt_frozen.kernels.progress import Progress
from nt_frozen.kernels.sizing import check_fits, choose_block_size
from nt_frozen.kernels.store import KernelStore, check_writable, stored_block_size

PAIRWISE = ("nngp", "ntk")


def _check_get(get) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    bad = [g for g in names if g not in PAIRWISE]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(
            f"kernel_matrix: get={get!r}; pass 'nngp', 'ntk' or ('nngp', 'ntk'). "
            f"Only these are N1 x N2 matrices: cov1/cov2 are per-input "
            f"(the diagonal), computed by `kernel_fn(x, None, 'cov1')` in batches."
        )
    return names


def _check_inputs(x1, x2) -> None:
    if np.ndim(x1) < 2:
        raise ValueError(
            f"kernel_matrix: x1 has shape {np.shape(x1)}; pass a batch of inputs "
            f"with the example axis first, e.g. shape (N, features)."
        )
    if x2 is not None and np.shape(x2)[1:] != np.shape(x1)[1:]:
        raise ValueError(
            f"kernel_matrix: x2 has shape {np.shape(x2)} but x1 has "
            f"{np.shape(x1)}; the inputs must agree after the example axis."
        )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def fingerprint(kernel_fn: Callable, get, params, x1, diagonal: bool) -> str:
    """A hash of `kernel_fn`'s program on a 2-input probe: its jaxpr (layers,
    hyperparameters as literals) and the values of its constants (e.g. bound
    parameters). Same network, same fingerprint: traced with both outputs, so
    that a store of another `get` is refused for its `get` alone."""
    probe = jax.ShapeDtypeStruct((2, *np.shape(x1)[1:]), np.asarray(x1[:1]).dtype)
    try:
        block = block_fn(kernel_fn, PAIRWISE, params, diagonal)
        closed = jax.make_jaxpr(block)(probe, probe)
    except Exception:  # noqa: BLE001 - a kernel_fn with only some outputs
        block = block_fn(kernel_fn, get, params, diagonal)
        closed = jax.make_jaxpr(block)(probe, probe)
    # Older JAX prints callables in a jaxpr's parameters (custom_jvp's thunk)
    # with their address, which differs between calls and processes.
    program = _ADDRESS.sub("", str(closed.jaxpr))
    digest = hashlib.sha256(program.encode())
    for const in closed.consts:
        digest.update(np.asarray(const).tobytes())
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:32]


def _array_hash(x) -> str | None:
    if x is None:
        return None
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
    digest.update(x.tobytes())
    return digest.hexdigest()[:32]


def kernel_matrix(
    kernel_fn: Callable,
    x1,
    x2=None,
    get="ntk",
    *,
    params=None,
    block_size: int | None = None,
    store: str | Path | None = None,
    progress: bool | Callable[[int, int], Any] = True,
    name: str | None = None,
    memory_budget: int | None = None,
    log_every: int | None = None,
    wait_s: float = 3600.0,
):
    """The kernel `kernel_fn(x1, x2, get)` on all inputs, computed in blocks.

    Args:
      kernel_fn: an analytic `kernel_fn` (stax, with `Frozen` / `LearningRate`
        anywhere) or an empirical one, `kernel_fn(x1, x2, get, params)` with
        `params` given (e.g. `nt_frozen.empirical_kernel_fn(apply_fn)`).
        Kernel entries must be per pair of inputs (true of every stax layer;
        not of an `apply_fn` that mixes the examples of a batch).
      x1: inputs `(N1, ...)`, example axis first.
      x2: inputs `(N2, ...)`, or None for the symmetric `x1` x `x1` kernel: only
        the blocks on and above the diagonal are computed, the others are their
        transposes (exactly); diagonal blocks are computed as `kernel_fn(x, None)`.
        Symmetric kernels need one number per pair (e.g. pooled or flattened
        outputs); pass `x2=x1` for kernels with more axes.
      get: "nngp", "ntk" or a tuple of both (cov1/cov2 are not N1 x N2).
      params: the parameters of an empirical `kernel_fn`, passed as its 4th
        argument.
      block_size: rows (and columns) per block; the last block is padded by
        repeating an input, so every block uses one compiled program. None:
        the largest size whose compiled program fits `memory_budget`.
      store: a folder: each block is written to `<get>.npy` memory maps there
        as it finishes and recorded as done; calling again with the same
        arguments resumes, computing only missing blocks, and a store of other
        settings is refused. Returns read-only memory maps. Processes of a
        `jax.distributed` job share the blocks and need a store on a shared
        filesystem.
      progress: True: a tqdm bar; False: none; a callable: called as
        `progress(blocks_done, blocks_total)` after each block.
      name: stored in the manifest instead of the network's fingerprint (a hash
        of `kernel_fn`'s jaxpr and constants), e.g. to resume on another JAX.
      memory_budget: bytes one device may use for one block (default: 70% of
        the device's memory, or 50% of free host memory per CPU device).
      log_every: log a line (logger "nt_frozen.kernels") every this many blocks.
      wait_s: how long a process waits for the others (store creation, and the
        end of their blocks).

    Returns:
      A NumPy array (`get` a string) or a namedtuple of arrays, each of shape
      `(N1, N2, ...)` in `kernel_fn`'s output dtype.

    Example:
      >>> import jax, numpy as np
      >>> from nt_frozen import Frozen, kernel_matrix, stax
      >>> _, _, kernel_fn = stax.serial(
      ...     stax.Dense(8), stax.Relu(), Frozen(stax.Dense(8)), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (10, 3))
      >>> k = kernel_matrix(kernel_fn, x, get="ntk", block_size=4, progress=False)
      >>> ref = np.asarray(kernel_fn(x, None, "ntk"))
      >>> k.shape, bool(np.abs(k - ref).max() < 1e-4 * np.abs(ref).max())  # float32
      ((10, 10), True)
    """
    names = _check_get(get)
    _check_inputs(x1, x2)
    if block_size is not None and (
        not isinstance(block_size, (int, np.integer))
        or isinstance(block_size, bool)
        or block_size < 1
    ):
        raise ValueError(
            f"kernel_matrix: block_size={block_size!r}; pass a positive integer "
            f"(rows per block) or None to choose the largest that fits in memory."
        )
    store_path = None if store is None else Path(store)
    if store_path is not None:
        check_writable(store_path)
    if jax.process_count() > 1 and store_path is None:
        raise ValueError(
            f"kernel_matrix: {jax.process_count()} processes (jax.distributed) "
            f"share the blocks; pass store= a folder on a filesystem all of them "
            f"see."
        )
    symmetric = x2 is None
    x1 = np.asarray(x1)
    x2 = x1 if symmetric else np.asarray(x2)
    n1, n2 = len(x1), len(x2)
    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("blocks",))
    kinds = (True, False) if symmetric else (False,)

    def inputs(rows: int, cols: int):
        d = len(devices)
        return (
            jax.ShapeDtypeStruct((d, rows, *x1.shape[1:]), x1.dtype),
            jax.ShapeDtypeStruct((d, cols, *x2.shape[1:]), x2.dtype),
        )

    built: dict = {}  # (diagonal, rows, cols): (compiled, output shapes)

    def compile_all(rows: int, cols: int) -> dict:
        for diagonal in kinds:
            if (diagonal, rows, cols) not in built:
                xa, xb = inputs(rows, cols)
                built[diagonal, rows, cols] = compiled_block(
                    kernel_fn, names, params, diagonal, mesh, xa, xb
                )
        return {diagonal: built[diagonal, rows, cols][0] for diagonal in kinds}

    # Sizes must be multiples of nothing: clip to N so small kernels are one
    # block.
    def clip(b: int) -> tuple[int, int]:
        return min(b, n1), (min(b, n1) if symmetric else min(b, n2))

    if min(n1, n2) == 0:
        raise ValueError(
            f"kernel_matrix: x1 has {n1} and x2 has {n2} inputs; pass at least one."
        )
    if block_size is None and store_path is not None:
        # Resuming: keep the store's blocks (the budget may have changed since).
        block_size = stored_block_size(store_path)
    if block_size is None:
        block_size, compiled = choose_block_size(
            compile_all, clip, max(n1, n2), devices[0], memory_budget
        )
    else:
        compiled = check_fits(
            compile_all, clip, int(block_size), devices[0], memory_budget
        )
    rows, cols = clip(int(block_size))
    layout = BlockLayout(n1, n2, rows, cols, symmetric)

    out_shapes = built[symmetric, rows, cols][1]
    rest = {k: v.shape[3:] for k, v in out_shapes.items()}
    dtypes = {str(v.dtype) for v in out_shapes.values()}
    if symmetric and any(rest.values()):
        raise ValueError(
            f"kernel_matrix: with x2=None each pair must give one number, but "
            f"kernel_fn gives per-pair shapes {rest}; pass x2=x1 (computes both "
            f"triangles) or pool/flatten the network's output."
        )
    dtype = dtypes.pop()
    blocks = layout.blocks()
    mine = share(blocks, jax.process_index(), jax.process_count())

    if store_path is not None:
        manifest = {
            "network": name
            or cached(
                kernel_fn,
                params,
                ("fingerprint", names, symmetric, x1.shape[1:], str(x1.dtype)),
                lambda: fingerprint(kernel_fn, names, params, x1, symmetric),
            ),
            "x1": _array_hash(x1),
            "x2": None if symmetric else _array_hash(x2),
            "get": list(names),
            "dtype": dtype,
            "layout": layout.to_json(),
        }
        kstore = KernelStore.open_or_create(
            store_path,
            manifest,
            {k: (n1, n2, *rest[k]) for k in names},
            create=jax.process_index() == 0,
            wait_s=wait_s,
        )
        done = kstore.done()
        sink = kstore.write
    else:
        done = set()
        result = {k: _host_array((n1, n2, *rest[k]), dtype) for k in names}
        sink = functools.partial(write_block, result, layout)

    todo = [b for b in mine if b not in done]
    bar = Progress(len(mine), len(mine) - len(todo), progress, log_every)
    try:
        _run(compiled, layout, x1, x2, todo, len(devices), sink, bar)
    finally:
        bar.close()

    if store_path is None:
        values = result
    else:
        _wait_for_all(kstore, len(blocks), wait_s)
        values = kstore.read_only()
    if isinstance(get, str):
        return values[get]
    return collections.namedtuple("Kernel", names)(*(values[k] for k in names))


def _host_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array for the result, in private anonymous memory.

    Not `np.empty`: NumPy advises huge pages for large arrays, and on a busy
    host the kernel then compacts memory on the first write of each page
    (seconds of system time for a 2 GiB kernel, measured: 1.4-4.6 s against
    0.9 s with ordinary pages)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size < 2**22 or not hasattr(mmap, "MAP_PRIVATE"):  # small, or not POSIX
        return np.empty(shape, dtype)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(memory, dtype).reshape(shape)


def _steps(layout: BlockLayout, todo: list[Block], devices: int):
    """Groups of `devices` blocks with one program (diagonal or not), the last
    group of each kind padded by repeating its last block."""
    for diagonal in (True, False):
        group = [b for b in todo if layout.is_diagonal(b) == diagonal]
        for start in range(0, len(group), devices):
            step = group[start : start + devices]
            yield diagonal, step, step + [step[-1]] * (devices - len(step))


IN_FLIGHT = 3  # steps dispatched ahead, so that host copies never stall the device


@jax.jit
def _transposed(values: dict) -> dict:
    """Blocks `(devices, rows, cols)` as `(devices, cols, rows)`: the mirror
    images below the diagonal, exact (data movement only)."""
    return {k: jax.numpy.swapaxes(v, 1, 2) for k, v in values.items()}


def _run(compiled, layout, x1, x2, todo, devices, sink, bar) -> None:
    # Every block's inputs, padded once: a step gathers its blocks in one copy.
    rows = blocked_rows(x1, layout.rows, layout.row_blocks)
    cols = rows if x2 is x1 else blocked_rows(x2, layout.cols, layout.col_blocks)
    pending: collections.deque = collections.deque()
    for diagonal, step, padded in _steps(layout, todo, devices):
        xa = rows[[i for i, _ in padded]]
        xb = cols[[j for _, j in padded]]
        try:
            out = compiled[diagonal](xa, xb)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is rewritten
            _raise_if_oom(e, layout.rows)
            raise
        mirrored = _transposed(out) if layout.symmetric and not diagonal else None
        pending.append((step, out, mirrored))
        if len(pending) >= IN_FLIGHT:
            _finish(pending.popleft(), layout, sink, bar)
    while pending:
        _finish(pending.popleft(), layout, sink, bar)


def _finish(dispatched: tuple, layout, sink, bar) -> None:
    """Copy one finished step's blocks (and mirror images) to the host."""
    step, out, mirrored = dispatched
    try:
        host = {k: np.asarray(v) for k, v in out.items()}
        below = (
            None
            if mirrored is None
            else {k: np.asarray(v) for k, v in mirrored.items()}
        )
    except Exception as e:  # noqa: BLE001
        _raise_if_oom(e, layout.rows)
        raise
    for d, block in enumerate(step):
        (r0, r1), (c0, c1) = layout.row_range(block[0]), layout.col_range(block[1])
        r, c = r1 - r0, c1 - c0
        sink(
            block,
            {k: v[d, :r, :c] for k, v in host.items()},
            None if below is None else {k: v[d, :c, :r] for k, v in below.items()},
        )
        bar.update(1)


def _raise_if_oom(error: Exception, rows: int) -> None:
    if "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error):
        raise MemoryError(
            f"kernel_matrix: block_size={rows} ran out of device memory ({error}); "
            f"pass a smaller block_size (memory grows as its square), e.g. "
            f"{max(1, rows // 2)}, or block_size=None to choose one that fits."
        ) from error


def _wait_for_all(kstore: KernelStore, total: int, wait_s: float) -> None:
    """Other processes may still be writing their blocks."""
    last, since = -1, time.monotonic()
    while (count := len(kstore.done())) < total:
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > wait_s:
            raise TimeoutError(
                f"kernel_matrix: {total - count} blocks of {str(kstore.path)!r} "
                f"were not finished by the other processes within {wait_s:.0f} s; "
                f"rerun to resume."
            )
        time.sleep(0.05)
