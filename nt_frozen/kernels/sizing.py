"""Block sizes measured, not guessed: XLA's memory analysis of the compiled block.

A block's memory grows as (block size)^2 (times pixels^2 for a CNN without
pooling before the readout), so a size that fits one network is out of memory
for another. The compiled program states what it needs
(`compiled.memory_analysis()`: arguments, outputs, temporaries, per device);
the chosen size is the largest power of two (or N) whose program fits the
budget, and a user's size that does not fit is refused before any work,
naming one that does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

SMALLEST = 8
FALLBACK = 256


def default_budget(device, devices: int) -> int:
    """70% of an accelerator's memory; on the CPU, half the free host memory
    shared by the local CPU devices."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(0.7 * stats["bytes_limit"])
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        free = 8 * 2**30
    return int(0.5 * free / max(1, devices))


def program_bytes(compiled: dict) -> int | None:
    """Peak bytes per device of the largest of the compiled block programs, or
    None where XLA gives no memory analysis."""
    sizes = []
    for program in compiled.values():
        try:
            stats = program.memory_analysis()
        except Exception:  # noqa: BLE001
            stats = None
        if stats is None:
            return None
        sizes.append(
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            + stats.generated_code_size_in_bytes
            - stats.alias_size_in_bytes
        )
    return max(sizes)


def _budget(device, budget: int | None) -> int:
    import jax

    return budget or default_budget(device, len(jax.local_devices()))


def choose_block_size(
    compile_all: Callable, clip: Callable, n: int, device, budget: int | None
) -> tuple[int, dict]:
    """The largest power of two (or `n`) whose block program fits `budget`, and
    its compiled programs; sizes double from `SMALLEST` until one does not fit."""
    budget = _budget(device, budget)
    size = min(SMALLEST, n)
    compiled = compile_all(*clip(size))
    need = program_bytes(compiled)
    if need is None:
        warnings.warn(
            f"kernel_matrix: XLA gives no memory analysis on {device.platform}; "
            f"block_size=None uses {FALLBACK}. Pass block_size to choose.",
            stacklevel=3,
        )
        size = min(FALLBACK, n)
        return size, compile_all(*clip(size))
    if need > budget:
        raise MemoryError(
            f"kernel_matrix: even block_size={size} needs {need / 2**20:.0f} MiB "
            f"per device, over the budget of {budget / 2**20:.0f} MiB; raise "
            f"memory_budget or use a device with more memory."
        )
    while size < n:
        bigger = min(2 * size, n)
        candidate = compile_all(*clip(bigger))
        if program_bytes(candidate) > budget:  # type: ignore[operator]
            break
        size, compiled = bigger, candidate
    return size, compiled


def check_fits(
    compile_all: Callable, clip: Callable, size: int, device, budget: int | None
) -> dict:
    """The compiled programs for a user's `size`, or a `MemoryError` naming the
    largest size that fits (found as `choose_block_size` does)."""
    compiled = compile_all(*clip(size))
    need = program_bytes(compiled)
    budget = _budget(device, budget)
    if need is not None and need > budget:
        fits, _ = choose_block_size(compile_all, clip, size, device, budget)
        raise MemoryError(
            f"kernel_matrix: block_size={size} needs {need / 2**20:.0f} MiB per "
            f"device, over the budget of {budget / 2**20:.0f} MiB; "
            f"block_size={fits} fits (or pass block_size=None, or a larger "
            f"memory_budget)."
        )
    return compiled
