"""`nt-frozen kernel`: a stored kernel equal to the built-in network's kernel_fn."""

from __future__ import annotations

import numpy as np
import pytest

from nt_frozen.validation.architectures import load_architecture
from nt_frozen.validation.cli import main


def test_kernel_command_stores_and_resumes(tmp_path, x64):
    # float64: in float32 NT's arccos near the diagonal differs between block
    # shapes by up to ~sqrt(eps32), more than any tolerance that would still test.
    x = np.random.default_rng(0).normal(size=(9, 16))
    np.save(tmp_path / "x.npy", x)
    store = tmp_path / "k"
    argv = [
        "kernel",
        "--arch",
        "mlp-frozen-middle",
        "--data",
        str(tmp_path / "x.npy"),
        "--get",
        "nngp",
        "ntk",
        "--block-size",
        "4",
        "--store",
        str(store),
        "--no-progress",
        "--x64",
    ]
    assert main(argv) == 0
    _, _, kernel_fn = load_architecture("mlp-frozen-middle").network(512)
    want = kernel_fn(x, None, ("nngp", "ntk"))
    for name in ("nngp", "ntk"):
        got = np.load(store / f"{name}.npy")
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, getattr(want, name), rtol=1e-8, atol=0)
    with pytest.raises(SystemExit, match="--resume"):
        main(argv)
    (store / "done" / "r0_c1").unlink()
    assert main([*argv, "--resume"]) == 0
    assert len(list((store / "done").iterdir())) == 6
    with pytest.raises(SystemExit, match="differs in: get"):
        main([*argv[:5], "--get", "ntk", *argv[8:], "--resume"])


def test_kernel_command_rejects_bad_data(tmp_path):
    with pytest.raises(SystemExit, match="--data"):
        main(
            [
                "kernel",
                "--arch",
                "mlp-frozen-middle",
                "--data",
                "nope.txt",
                "--store",
                str(tmp_path / "k"),
            ]
        )
