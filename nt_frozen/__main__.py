"""`python -m nt_frozen`: analytic vs empirical NTK of a net with a frozen layer."""

from __future__ import annotations

import jax
import numpy as np

from nt_frozen import Frozen, nt, stax
from nt_frozen.convergence import relative_frobenius_error


def main() -> None:
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    print("MLP 16 -> n -> [frozen n] -> 1, 8 inputs: analytic vs empirical frozen NTK")
    for width in (256, 1024, 4096):
        init_fn, apply_fn, kernel_fn = stax.serial(
            stax.Dense(width),
            stax.Relu(),
            Frozen(stax.Dense(width, W_std=1.5, b_std=0.1)),
            stax.Relu(),
            stax.Dense(1),
        )
        analytic = kernel_fn(x, None, "ntk")
        _, params = init_fn(jax.random.PRNGKey(1), x.shape)
        empirical = nt.empirical_ntk_fn(apply_fn)(x, None, params)
        err = relative_frobenius_error(empirical, analytic)
        print(
            f"  width {width:5d}: relative Frobenius error {err:.4f}"
            f"  (n^-1/2 = {1 / np.sqrt(width):.4f})"
        )


if __name__ == "__main__":
    main()
