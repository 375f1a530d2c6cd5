"""Kernels on whole data sets: blocked, symmetric, sharded, resumable, stored.

`kernel_matrix` computes a kernel in blocks over local devices and
`jax.distributed` processes, optionally into a resumable on-disk store;
`kernel_regression` predicts from stored kernels without recomputing them.
"""

from nt_frozen.kernels.compute import kernel_matrix
from nt_frozen.kernels.predict import kernel_regression

__all__ = ["kernel_matrix", "kernel_regression"]
