"""Progress of a long kernel computation: a tqdm bar with an ETA, a user
callback per block, and a log line (logger "nt_frozen.kernels") every
`log_every` blocks, for runs whose terminal nobody watches."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("nt_frozen.kernels")


class Progress:
    """A tqdm bar with an ETA, a user callback, and a log line every
    `log_every` blocks."""

    def __init__(self, total: int, done: int, progress, log_every: int | None):
        self.total, self.count, self.start = total, done, time.perf_counter()
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:  # tqdm.auto warns in a notebook without ipywidgets
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=done, unit="block", desc="kernel_matrix"
            )
        self.log_every = log_every or max(1, total // 20)
        self.new = 0

    def update(self, n: int) -> None:
        self.count += n
        self.new += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.count, self.total)
        if self.count % self.log_every < n or self.count == self.total:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.new * (self.total - self.count)
            logger.info(
                "kernel_matrix: %d/%d blocks done, %.1f s, ETA %.1f s",
                self.count,
                self.total,
                elapsed,
                eta,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
