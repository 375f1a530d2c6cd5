"""The sweep: empirical NTK draws and analytic kernels, width by width,
saved as each width finishes and resumed from what was saved."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._files import write_json_atomic
from nt_frozen.empirical import empirical_ntk_fn
from nt_frozen.validation.architectures import Architecture
from nt_frozen.validation.checkpoint import (
    CheckpointError,
    load_width,
    sweep_settings,
    width_path,
)
from nt_frozen.validation.statistics import (
    ArchitectureResult,
    Comparison,
    compare,
    relative_frobenius_error,
)

# Controls closer than this (relative) to the frozen kernel are the same kernel
# (e.g. the identity guess for a frozen *first* layer, whose input NTK is 0).
SAME_KERNEL_RTOL = 1e-6


def empirical_draws_fn(
    arch: Architecture, width: int, samples: int, implementation: int | None = None
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`(key, x) -> (samples, *ntk.shape)`: draw `samples` networks, return
    their empirical NTKs.

    The parameters are sampled op by op: each of `init_fn`'s random calls runs
    JAX's kernel compiled once per shape, shared by every width and
    architecture with that shape, whereas compiling the sampling into a jitted
    function costs seconds per width. The NTK is compiled once per width, and
    one draw's parameters are alive at a time (or a few, dispatch being async).

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> empirical_draws_fn(arch, 16, samples=2)(jax.random.PRNGKey(1), x).shape
      (2, 3, 3)
    """
    init_fn, apply_fn, _ = arch.network(width)
    ntk_fn = jax.jit(empirical_ntk_fn(apply_fn, implementation=implementation))

    def draws(key, x):
        keys = jax.random.split(key, samples)
        return jnp.stack([ntk_fn(x, None, init_fn(k, x.shape)[1]) for k in keys])

    return draws


def analytic_ntks_by_width_fn(arch: Architecture, widths: Sequence[int]) -> Callable:
    """Jitted `x -> {width: {"frozen": ntk, control: ntk, ...}}`: one compile
    for the frozen kernel and every control at every width.

    Run op by op, each kernel costs seconds; compiled one width at a time, each
    width costs a compile. An architecture declaring `kernel_width_free` is
    traced at its first width only (tracing NT's kernel functions costs about
    a quarter-second per network); otherwise every width is computed from its
    own network, and XLA merges the identical computations.

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> kernels = analytic_ntks_by_width_fn(arch, [16, 64])(x)
      >>> sorted(kernels), sorted(kernels[16])
      ([16, 64], ['frozen', 'identity_guess', 'unfrozen'])
    """
    widths = list(widths)
    traced = widths[:1] if arch.kernel_width_free else widths
    kernel_fns = {}
    for width in traced:
        networks = {"frozen": arch.network(width)}
        if arch.has_controls:
            networks |= {c: arch.control_network(c, width) for c in arch.control_names}
        kernel_fns[width] = {name: net[2] for name, net in networks.items()}
    kernels_fn = jax.jit(
        lambda x: {
            w: {name: k(x, None, "ntk") for name, k in fns.items()}
            for w, fns in kernel_fns.items()
        }
    )

    def by_width(x):
        if not widths:  # everything resumed: nothing to compile
            return {}
        kernels = kernels_fn(x)
        return {w: kernels[w if w in kernels else traced[0]] for w in widths}

    return by_width


def analytic_ntks_fn(arch: Architecture, width: int) -> Callable:
    """Jitted `x -> {"frozen": ntk, control: ntk, ...}` at one width (see
    `analytic_ntks_by_width_fn` for several).

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> sorted(analytic_ntks_fn(arch, 16)(x))
      ['frozen', 'identity_guess', 'unfrozen']
    """
    by_width = analytic_ntks_by_width_fn(arch, [width])
    return lambda x: by_width(x)[width]


def width_kernels(
    arch: Architecture,
    width: int,
    samples: int,
    key: jax.Array,
    x: jax.Array,
    implementation: int | None = None,
    analytic: dict[str, jax.Array] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One width of the sweep: the `samples` empirical NTKs drawn with `key`,
    and the analytic NTKs `{"frozen": ..., control: ...}` (host arrays),
    computed unless passed as `analytic`.

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> draws, analytic = width_kernels(arch, 16, 2, jax.random.PRNGKey(1), x)
      >>> draws.shape, analytic["frozen"].shape
      ((2, 3, 3), (3, 3))
    """
    draws = empirical_draws_fn(arch, width, samples, implementation)(key, x)
    if analytic is None:
        analytic = analytic_ntks_fn(arch, width)(x)
    # One host transfer per width, after all draws.
    return np.asarray(draws), {n: np.asarray(k) for n, k in analytic.items()}


def sweep_architecture(
    arch: Architecture,
    widths: Sequence[int],
    samples: int,
    key: jax.Array,
    implementation: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    save: Callable[[int, dict[str, Any]], None] | None = None,
    load: Callable[[int], dict[str, Any] | None] | None = None,
) -> ArchitectureResult:
    """Run the sweep for one architecture; see the module docstring.

    `save(width, kernels)` is called with each finished width's kernels;
    `load(width)` returns a saved width's kernels (or None to compute it).

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> result = sweep_architecture(arch, [16, 32], 2, jax.random.PRNGKey(1))
      >>> result.frozen.widths, sorted(result.controls)
      ([16, 32], ['identity_guess', 'unfrozen'])
    """
    start = time.perf_counter()
    x_key, draw_key = jax.random.split(key)
    dtype = jnp.zeros(()).dtype  # float64 under jax_enable_x64
    x = jax.random.normal(x_key, arch.input_shape, dtype)
    layer_widths = [arch.layer_width(w) for w in widths]
    names = ["frozen", *arch.control_names] if arch.has_controls else ["frozen"]
    saved = {w: None if load is None else load(w) for w in widths}
    pending = [w for w in widths if saved[w] is None]
    # Every pending width's analytic kernels in one compile, before the draws.
    computed = analytic_ntks_by_width_fn(arch, pending)(x)
    draws: list[np.ndarray] = []
    analytic: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for width in widths:
        record = saved[width]
        if record is None:
            width_key = jax.random.fold_in(draw_key, width)
            d, a = width_kernels(
                arch, width, samples, width_key, x, implementation, computed[width]
            )
            if save is not None:
                save(width, {"draws": d, "analytic": a})
        else:
            dtype_saved = np.dtype(record["dtype"])
            d = np.asarray(record["draws"], dtype_saved)
            a = {k: np.asarray(v, dtype_saved) for k, v in record["analytic"].items()}
        draws.append(d)
        for name in names:
            analytic[name].append(a[name])
        if progress is not None:  # called once per finished (architecture, width)
            progress(arch.name, arch.layer_width(width))

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    frozen = compare(layer_widths, draws, analytic["frozen"], seed)
    controls: dict[str, Comparison | str] = {}
    for name in arch.control_names:
        if not arch.has_controls:
            controls[name] = "the builder takes no `freeze` argument"
        elif all(
            relative_frobenius_error(c, f) < SAME_KERNEL_RTOL
            for c, f in zip(analytic[name], analytic["frozen"])
        ):
            controls[name] = "equals the frozen kernel for this architecture"
        else:
            controls[name] = compare(layer_widths, draws, analytic[name], seed)
    return ArchitectureResult(
        arch.name,
        arch.description,
        frozen,
        controls,
        time.perf_counter() - start,
        arch.width_label,
    )


def run_validation(
    architectures: Iterable[Architecture],
    widths: Sequence[int],
    samples: int = 8,
    seed: int = 0,
    implementation: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    matmul_precision: str | None = "highest",
) -> list[ArchitectureResult]:
    """Sweep every architecture over `widths` with `samples` draws per width.

    With a `checkpoint` folder, each finished (architecture, width) is written
    there at once (atomically, with the kernels and the `sweep_settings`), so
    an interrupted sweep loses at most the width in progress. `resume=True`
    reads the widths saved there instead of recomputing them (the draws are
    the same: each width's key is derived from `seed`), and refuses a folder
    saved under other settings; without it, a folder holding saved widths is
    refused rather than overwritten (:class:`CheckpointError`, a
    `ValueError`).

    The work runs under `jax.default_matmul_precision(matmul_precision)`:
    by default "highest", full float32 products, since a GPU's TF32 or a TPU's
    bfloat16 products (JAX's "default" there) add ~1e-3 relative rounding that
    the sweep would count as finite-width error. `None` keeps the caller's
    setting; `sweep_settings` records the one used.

    Example (widths this small decide nothing; `nt-frozen validate`'s
    defaults do):
      >>> from nt_frozen.validation import ARCHITECTURES, run_validation
      >>> [result] = run_validation(
      ...     [ARCHITECTURES["mlp-frozen-middle"]], widths=[8, 16], samples=2)
      >>> result.frozen.widths, sorted(result.controls)
      ([8, 16], ['identity_guess', 'unfrozen'])
    """
    if samples < 2:
        raise ValueError(
            f"samples={samples}: must be at least 2 (the noise is estimated)."
        )
    widths = sorted(set(int(w) for w in widths))
    if len(widths) < 2 or widths[0] < 1:
        raise ValueError(
            f"widths={widths}: need at least 2 distinct positive widths to fit "
            f"the error's slope."
        )
    architectures = list(architectures)
    if not architectures:
        raise ValueError("architectures is empty: pass at least one.")
    precision = (
        contextlib.nullcontext()
        if matmul_precision is None
        else jax.default_matmul_precision(matmul_precision)
    )
    with precision:
        return _sweep(
            architectures,
            widths,
            samples,
            seed,
            implementation,
            progress,
            checkpoint,
            resume,
        )


def _sweep(
    architectures: list[Architecture],
    widths: list[int],
    samples: int,
    seed: int,
    implementation: int | None,
    progress: Callable[[str, int], None] | None,
    checkpoint: str | Path | None,
    resume: bool,
) -> list[ArchitectureResult]:
    """`run_validation` after its checks, under its matmul precision."""
    key = jax.random.PRNGKey(seed)
    folder = None if checkpoint is None else Path(checkpoint)
    settings = sweep_settings(architectures, samples, seed, implementation)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        saved = sorted(folder.glob("*.json"))
        if saved and not resume:
            raise CheckpointError(
                f"checkpoint {folder} holds {len(saved)} saved width(s) of an "
                f"earlier sweep: resume it (resume=True), or delete the folder to "
                f"start afresh."
            )
        for path in saved:  # refuse mixed settings before any work
            load_width(path, settings)

    results = []
    for i, arch in enumerate(architectures):
        save = load = None
        if folder is not None:

            def save(width, kernels, i=i, arch=arch):
                a = kernels["analytic"]
                record = {
                    "settings": settings,
                    "architecture": arch.name,
                    "width": width,
                    "dtype": kernels["draws"].dtype.name,
                    "draws": kernels["draws"].tolist(),
                    "analytic": {k: v.tolist() for k, v in a.items()},
                }
                write_json_atomic(width_path(folder, i, arch, width), record)

            def load(width, i=i, arch=arch):
                path = width_path(folder, i, arch, width)
                return load_width(path, settings) if path.exists() else None

        results.append(
            sweep_architecture(
                arch,
                widths,
                samples,
                jax.random.fold_in(key, i),
                implementation,
                progress,
                save,
                load,
            )
        )
    return results
