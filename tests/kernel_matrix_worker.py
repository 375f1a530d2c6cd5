"""Runs `kernel_matrix` in a subprocess for tests/test_kernel_matrix_processes.py.

python kernel_matrix_worker.py devices OUT.npz          # all local devices
python kernel_matrix_worker.py slow STORE               # 0.3 s per block
python kernel_matrix_worker.py process STORE PORT INDEX # one of 2 processes
"""

from __future__ import annotations

import sys
import time

import numpy as np

N, BLOCK = 21, 4


def network():
    from nt_frozen import Frozen, LearningRate, stax

    return stax.serial(
        stax.Dense(16),
        stax.Relu(),
        Frozen(stax.Dense(16)),
        LearningRate(stax.Dense(16), 2.0),
        stax.Relu(),
        stax.Dense(1),
    )[2]


def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(
        np.float32
    )


def compute(store=None, progress=False, cross=True):
    from nt_frozen import kernel_matrix

    x1, x2 = inputs()
    get = ("nngp", "ntk")
    sym = kernel_matrix(
        network(), x1, None, get, block_size=BLOCK, store=store, progress=progress
    )
    if not cross:
        return sym, None
    return sym, kernel_matrix(network(), x1, x2, get, block_size=BLOCK, progress=False)


def main(mode: str, *args: str) -> None:
    import jax

    if mode == "devices":
        assert jax.local_device_count() == 4, jax.devices()
        sym, cross = compute()
        np.savez(
            args[0],
            sym_nngp=sym.nngp,
            sym_ntk=sym.ntk,
            cross_nngp=cross.nngp,
            cross_ntk=cross.ntk,
        )
    elif mode == "slow":
        compute(
            store=args[0], progress=lambda done, total: time.sleep(0.3), cross=False
        )
    elif mode == "process":
        store, port, index = args
        jax.distributed.initialize(f"localhost:{port}", 2, int(index))
        assert jax.process_count() == 2
        calls = []
        compute(store=store, progress=lambda d, t: calls.append(d), cross=False)
        print(f"computed {len(calls)} blocks")
        jax.distributed.shutdown()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
