"""A kernel matrix on disk: one `.npy` per output, a manifest, done markers.

    store/
      manifest.json      what was computed: network, inputs, get, dtype, layout
      nngp.npy ntk.npy   the kernels, readable with `numpy.load(mmap_mode="r")`
      done/r{i}_c{j}     one empty file per finished block

Plain `.npy` memory maps rather than zarr: any NumPy reads them, no dependency,
and a block is a strided slice written in place. A block counts as done only
once its values are flushed to disk and its marker is renamed into place
(`os.replace` is atomic), so a run killed at any moment leaves every marked
block complete; a rerun computes the unmarked ones.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nt_frozen._files import unwritable_reason, write_text_atomic
from nt_frozen.kernels.layout import Block, BlockLayout, write_block

MANIFEST = "manifest.json"
FORMAT = 1


def check_writable(path: Path) -> None:
    """Raise before any work if `path` cannot hold a store."""
    reason = unwritable_reason(path)
    if reason is not None:
        raise ValueError(
            f"kernel_matrix: store={str(path)!r} is not a writable folder "
            f"({reason}); pass a folder you can write to."
        )


def stored_block_size(path: Path) -> int | None:
    """The block size of the store at `path`, or None if there is none yet."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    return int(manifest["layout"]["rows"])


def done_blocks(path: Path) -> set[Block]:
    """The blocks marked done in the store at `path`: `done/r{i}_c{j}`, not
    the temporary file of a marker being written (a kill can leave one)."""
    found = set()
    for name in os.listdir(Path(path) / "done"):
        if name.startswith("r") and "_c" in name and not name.endswith(".tmp"):
            i, j = name[1:].split("_c")
            found.add((int(i), int(j)))
    return found


def _differences(found: dict, wanted: dict) -> list[str]:
    return [
        f"{key} (store: {found.get(key)!r}, this call: {wanted[key]!r})"
        for key in wanted
        if found.get(key) != wanted[key]
    ]


class KernelStore:
    """The store folder of one `kernel_matrix` call (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any], mode: Literal["r", "r+"]):
        self.path = Path(path)
        self.manifest = manifest
        self.layout = BlockLayout(**manifest["layout"])
        self.arrays = {
            name: np.load(self.path / f"{name}.npy", mmap_mode=mode)
            for name in manifest["get"]
        }

    @classmethod
    def open_or_create(
        cls,
        path: Path,
        manifest: dict[str, Any],
        shapes: dict[str, Sequence[int]],
        create: bool = True,
        wait_s: float = 600.0,
    ) -> KernelStore:
        """Open the store at `path` for `manifest`, creating it if `create` and
        it is absent; otherwise wait up to `wait_s` for another process to
        create it. Refuse a store made with other settings, naming them."""
        path = Path(path)
        manifest = {"format": FORMAT, **manifest}
        deadline = time.monotonic() + wait_s
        while not (path / MANIFEST).exists():
            if create:
                cls._create(path, manifest, shapes)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"kernel_matrix: no store appeared at {str(path)!r} within "
                    f"{wait_s:.0f} s; process 0 creates it."
                )
            time.sleep(0.05)
        found = json.loads((path / MANIFEST).read_text())
        differs = _differences(found, manifest)
        if differs:
            raise ValueError(
                f"kernel_matrix: store={str(path)!r} holds another kernel; it "
                f"differs in: {'; '.join(differs)}. Use a new store folder, or "
                f"delete this one to recompute."
            )
        return cls(path, found, "r+")

    @staticmethod
    def _create(path: Path, manifest: dict, shapes: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "done").mkdir(exist_ok=True)
        for name, shape in shapes.items():
            array = np.lib.format.open_memmap(
                path / f"{name}.npy",
                mode="w+",
                dtype=np.dtype(manifest["dtype"]),
                shape=tuple(shape),
            )
            array.flush()
            del array
        # Last, so that a manifest means the arrays exist (other processes wait
        # for it).
        write_text_atomic(path / MANIFEST, json.dumps(manifest, indent=1))

    def _marker(self, block: Block) -> Path:
        return self.path / "done" / f"r{block[0]}_c{block[1]}"

    def done(self) -> set[Block]:
        """The blocks whose values are on disk."""
        return done_blocks(self.path)

    def write(
        self,
        block: Block,
        values: dict[str, np.ndarray],
        mirrored: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write one block (and its mirror image when symmetric), flush, and
        only then mark it done."""
        write_block(self.arrays, self.layout, block, values, mirrored)
        for name in values:
            self.arrays[name].flush()
        write_text_atomic(self._marker(block), "")

    def read_only(self) -> dict[str, np.ndarray]:
        """The stored arrays as read-only memory maps."""
        return {
            name: np.load(self.path / f"{name}.npy", mmap_mode="r")
            for name in self.manifest["get"]
        }
