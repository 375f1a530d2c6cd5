"""How far `nt.batch` with `x2=None` is from the unbatched analytic NTK.

NT's batched kernel of `x1` with itself is assembled from blocks; on the
diagonal NT's ReLU arccos at cos(angle) ~ 1 turns rounding differences
between the two code paths into errors of order sqrt(eps). Same with or
without `Frozen`. MLP 16 -> 512 -> 512 -> 1 (b_std 0.1 on the first Dense,
W_std 1.5 on the middle one), 8 inputs, batch_size 2.

    uv run python benchmarks/nt_batch_diagonal.py          # float32
    uv run python benchmarks/nt_batch_diagonal.py --x64    # float64
"""

from __future__ import annotations

import sys

import jax
import numpy as np

if "--x64" in sys.argv[1:]:
    jax.config.update("jax_enable_x64", True)  # a script: its own process

from nt_frozen import Frozen, nt, stax  # noqa: E402


def main() -> None:
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    off = ~np.eye(len(x), dtype=bool)
    for frozen in (False, True):
        middle = stax.Dense(512, W_std=1.5)
        _, _, kernel_fn = stax.serial(
            stax.Dense(512, b_std=0.1),
            stax.Relu(),
            Frozen(middle) if frozen else middle,
            stax.Relu(),
            stax.Dense(1),
        )
        plain = np.asarray(kernel_fn(x, None, "ntk"))
        batched = np.asarray(nt.batch(kernel_fn, batch_size=2)(x, None, "ntk"))
        diagonal = np.abs(np.diag(batched) - np.diag(plain)) / np.abs(np.diag(plain))
        rest = np.abs(batched - plain)[off].max() / np.abs(plain).max()
        print(
            f"{'Frozen' if frozen else 'unfrozen'} middle layer, {plain.dtype}: "
            f"diagonal max rel. diff {diagonal.max():.1e}, "
            f"off-diagonal {rest:.1e}"
        )


if __name__ == "__main__":
    main()
