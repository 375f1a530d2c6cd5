"""`kernel_matrix` over 4 devices, 2 `jax.distributed` processes, and a run
killed with SIGKILL then resumed: each equal, bit for bit, to one process on
one device (every block is the same program on the same inputs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import kernel_matrix_worker as worker
import numpy as np
import pytest

from nt_frozen.kernels.store import done_blocks

WORKER = str(Path(worker.__file__))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def reference():
    sym, cross = worker.compute()
    return {
        "sym_nngp": sym.nngp,
        "sym_ntk": sym.ntk,
        "cross_nngp": cross.nngp,
        "cross_ntk": cross.ntk,
    }


def _run(*args, env=ENV, timeout=120):
    return subprocess.run(
        [sys.executable, WORKER, *args],
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def test_four_devices_equal_one(tmp_path, reference):
    # The compiler settings of this process (tests/conftest.py), plus devices:
    # bit-equality needs the same code generation as the reference.
    flags = f"{ENV.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**ENV, "XLA_FLAGS": flags}
    done = _run("devices", str(tmp_path / "k.npz"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = np.load(tmp_path / "k.npz")
    for name, want in reference.items():
        np.testing.assert_array_equal(found[name], want, err_msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_write_one_store(tmp_path, reference):
    store, port = str(tmp_path / "k"), str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "process", store, port, str(i)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    computed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        computed.append(int(out.split("computed ")[-1].split()[0]))
    assert sorted(computed) == [10, 11]  # each process its share of the 21 blocks
    for name in ("nngp", "ntk"):
        stored = np.load(Path(store) / f"{name}.npy", mmap_mode="r")
        np.testing.assert_array_equal(stored, reference[f"sym_{name}"])
    assert len(os.listdir(Path(store) / "done")) == 21  # 6 x 7 / 2 blocks


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, reference):
    store = tmp_path / "k"
    proc = subprocess.Popen(
        [sys.executable, WORKER, "slow", str(store)],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (store / "done").is_dir() and len(done_blocks(store)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(done_blocks(store))
    assert 3 <= finished < 21, finished
    calls = []
    sym, _ = worker.compute(store=store, progress=lambda d, t: calls.append(d))
    assert len(calls) == 21 - finished  # only the blocks not marked done
    np.testing.assert_array_equal(sym.nngp, reference["sym_nngp"])
    np.testing.assert_array_equal(sym.ntk, reference["sym_ntk"])
