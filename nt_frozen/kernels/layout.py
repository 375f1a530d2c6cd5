"""How an N1 x N2 kernel matrix is cut into blocks, and which blocks are computed.

A symmetric kernel (`x2=None`) cut into b x b blocks needs only the b(b+1)/2
blocks on and above the diagonal: block (j, i) is block (i, j) transposed.
Every block has the same shape (the last row/column block is padded by
repeating the last input), so one compiled program serves all of them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Block = tuple[int, int]  # (row block index, column block index)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Blocks of a `(n1, n2)` kernel; rows in steps of `rows`, columns of `cols`.

    Example:
      >>> layout = BlockLayout(n1=5, n2=5, rows=2, cols=2, symmetric=True)
      >>> layout.blocks()
      [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
      >>> layout.row_range(2)
      (4, 5)
    """

    n1: int
    n2: int
    rows: int
    cols: int
    symmetric: bool

    @property
    def row_blocks(self) -> int:
        return math.ceil(self.n1 / self.rows)

    @property
    def col_blocks(self) -> int:
        return math.ceil(self.n2 / self.cols)

    def blocks(self) -> list[Block]:
        """The blocks to compute, row-major; only i <= j when symmetric."""
        return [
            (i, j)
            for i in range(self.row_blocks)
            for j in range(i if self.symmetric else 0, self.col_blocks)
        ]

    def is_diagonal(self, block: Block) -> bool:
        """Whether `block` is computed as `kernel_fn(x, None)` (a diagonal block
        of a symmetric kernel)."""
        return self.symmetric and block[0] == block[1]

    def row_range(self, i: int) -> tuple[int, int]:
        return i * self.rows, min((i + 1) * self.rows, self.n1)

    def col_range(self, j: int) -> tuple[int, int]:
        return j * self.cols, min((j + 1) * self.cols, self.n2)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def share(blocks: list[Block], index: int, count: int) -> list[Block]:
    """Process `index` of `count` takes every `count`-th block (round robin, so
    that diagonal and off-diagonal blocks spread evenly)."""
    return blocks[index::count]


def padded_rows(x: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """`x[start:stop]` padded to `size` rows by repeating its last row.

    Kernel entries are per pair of inputs, so padding rows never change the
    real entries; repeating a real input (not zeros) keeps the padding finite
    (a zero input gives NaN in NT's arccos kernels)."""
    part = np.asarray(x[start:stop])
    if stop - start == size:
        return part
    return np.concatenate([part, np.repeat(part[-1:], size - (stop - start), 0)])


def blocked_rows(x: np.ndarray, size: int, count: int) -> np.ndarray:
    """`x` cut into `count` blocks of `size` rows, `(count, size, ...)`, the last
    block padded as `padded_rows` pads it.

    Example:
      >>> blocked_rows(np.arange(5), 2, 3).tolist()
      [[0, 1], [2, 3], [4, 4]]
    """
    x = np.asarray(x)
    pad = count * size - len(x)
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
    return x.reshape(count, size, *x.shape[1:])


def write_block(
    arrays: dict[str, np.ndarray],
    layout: BlockLayout,
    block: Block,
    values: dict[str, np.ndarray],
    mirrored: dict[str, np.ndarray] | None = None,
) -> None:
    """Write `values` (unpadded) at `block` of `arrays`; off the diagonal of a
    symmetric kernel also their transposes below it: `mirrored` when given
    (transposed on the device, cheaper than NumPy's strided copy), else
    `values` swapped here."""
    (r0, r1), (c0, c1) = layout.row_range(block[0]), layout.col_range(block[1])
    for name, value in values.items():
        arrays[name][r0:r1, c0:c1] = value
        if layout.symmetric and block[0] != block[1]:
            below = np.swapaxes(value, 0, 1) if mirrored is None else mirrored[name]
            arrays[name][c0:c1, r0:r1] = below
