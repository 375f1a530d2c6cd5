"""`nt_frozen.kernel_matrix` against one `kernel_fn` call and `jax.jit(kernel_fn)`
on each block's inputs; stores, resume and refusals; input errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from nt_frozen import Frozen, LearningRate, empirical_kernel_fn, kernel_matrix, stax
from nt_frozen.kernels.layout import BlockLayout, padded_rows


def _mlp():
    return stax.serial(
        stax.Dense(32),
        stax.Relu(),
        Frozen(stax.Dense(32, W_std=1.5)),
        LearningRate(stax.Dense(32), 3.0),
        stax.Relu(),
        stax.Dense(1),
    )


def _cnn():
    return stax.serial(
        stax.Conv(8, (3, 3), padding="SAME"),
        stax.Relu(),
        Frozen(stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu())),
        stax.GlobalAvgPool(),
        LearningRate(stax.Dense(1), 0.5),
    )


def _residual():
    block = stax.serial(stax.Dense(16), stax.Relu(), Frozen(stax.Dense(16)))
    return stax.serial(
        stax.Dense(16),
        stax.FanOut(2),
        stax.parallel(block, stax.Dense(16)),
        stax.FanInSum(),
        LearningRate(stax.Relu(), 2.0),
        stax.Dense(1),
    )


def _attention():
    return stax.serial(
        stax.Dense(8),
        Frozen(stax.GlobalSelfAttention(8, 8, 8, 2)),
        stax.Relu(),
        LearningRate(stax.Dense(8), 2.0),
        stax.GlobalAvgPool(),
        stax.Dense(1),
    )


NETS = {
    "mlp": (_mlp, (5,)),
    "cnn": (_cnn, (4, 4, 2)),
    "residual": (_residual, (5,)),
    "attention": (_attention, (3, 4)),
}


def _inputs(n, shape, seed=0):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, *shape)))


def _compiled(kernel_fn):
    """`kernel_fn` as one compiled program, `get` static."""
    return jax.jit(kernel_fn, static_argnames="get")


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["x2=None", "x2"])
def test_every_block_is_jit_kernel_fn_on_its_inputs(net, symmetric):
    """Ragged N (11 in blocks of 4): every block, padded or not, mirrored or
    not, is bit for bit `jax.jit(kernel_fn)` on that block's (padded) inputs,
    diagonal blocks as `x2=None`."""
    make, shape = NETS[net]
    _, _, kernel_fn = make()
    x1 = _inputs(11, shape)
    x2 = None if symmetric else _inputs(6, shape, seed=1)
    get = ("nngp", "ntk")
    k = kernel_matrix(kernel_fn, x1, x2, get, block_size=4, progress=False)
    ref_fn = _compiled(kernel_fn)
    xb_all = x1 if symmetric else x2
    layout = BlockLayout(11, len(xb_all), 4, min(4, len(xb_all)), symmetric)
    for i in range(layout.row_blocks):
        for j in range(layout.col_blocks):
            lo, hi = sorted((i, j)) if symmetric else (i, j)
            (r0, r1), (c0, c1) = layout.row_range(lo), layout.col_range(hi)
            xa = padded_rows(x1, r0, r1, layout.rows)
            xb = padded_rows(xb_all, c0, c1, layout.cols)
            diagonal = symmetric and lo == hi
            ref = ref_fn(xa, None if diagonal else xb, get=get)
            for name in get:
                want = np.asarray(getattr(ref, name))[: r1 - r0, : c1 - c0]
                got = getattr(k, name)
                if (lo, hi) == (i, j):
                    block = got[r0:r1, c0:c1]
                else:  # a mirrored block below the diagonal
                    block = got[c0:c1, r0:r1].T
                np.testing.assert_array_equal(block, want, err_msg=f"{name} {i},{j}")


@pytest.mark.parametrize(
    "net, get",
    [(net, ("ntk", "nngp")) for net in NETS] + [("mlp", "nngp"), ("mlp", "ntk")],
)
def test_whole_matrix_equals_one_call(net, get, x64):
    make, shape = NETS[net]
    _, _, kernel_fn = make()
    x1, x2 = _inputs(13, shape), _inputs(7, shape, seed=1)
    for b, c in ((x1, None), (x1, x2)):
        k = kernel_matrix(kernel_fn, b, c, get, block_size=5, progress=False)
        ref = _compiled(kernel_fn)(b, c, get)
        pairs = [(k, ref)] if isinstance(get, str) else list(zip(k, ref))
        assert isinstance(k, np.ndarray) == isinstance(get, str)
        for got, want in pairs:
            assert got.dtype == np.float64 and got.shape == want.shape
            # NT's own rounding: x2=None takes another branch near the diagonal.
            assert _rel(got, want) < (1e-8 if c is None else 1e-12)


def test_float32_matches_one_call():
    _, _, kernel_fn = _mlp()
    x = _inputs(301, (16,))
    k = kernel_matrix(kernel_fn, x, None, "ntk", block_size=64, progress=False)
    assert k.dtype == np.float32
    assert _rel(k, _compiled(kernel_fn)(x, None, "ntk")) < 1e-4
    lower = np.tril(k, -64)
    np.testing.assert_array_equal(lower, np.tril(k.T, -64))


def test_empirical_kernel_fn_with_params(x64):
    init_fn, apply_fn, _ = _mlp()
    x1, x2 = _inputs(9, (5,)), _inputs(4, (5,), seed=1)
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    kfn = empirical_kernel_fn(apply_fn)
    for b in (None, x2):
        k = kernel_matrix(
            kfn, x1, b, "ntk", params=params, block_size=4, progress=False
        )
        partial = kernel_matrix(
            functools.partial(kfn, params=params),
            x1,
            b,
            "ntk",
            block_size=4,
            progress=False,
        )
        ref = _compiled(kfn)(x1, b, "ntk", params)
        assert _rel(k, ref) < 1e-12
        np.testing.assert_array_equal(k, partial)


def test_store_round_trip_resume_and_refusals(tmp_path):
    _, _, kernel_fn = _mlp()
    x = _inputs(10, (5,))
    store = tmp_path / "k"
    first = kernel_matrix(
        kernel_fn, x, None, ("nngp", "ntk"), block_size=4, store=store, progress=False
    )
    plain = kernel_matrix(
        kernel_fn, x, None, ("nngp", "ntk"), block_size=4, progress=False
    )
    for name in ("nngp", "ntk"):
        on_disk = np.load(store / f"{name}.npy", mmap_mode="r")
        np.testing.assert_array_equal(on_disk, getattr(plain, name))
        np.testing.assert_array_equal(getattr(first, name), getattr(plain, name))
    # Lose two blocks: their markers and their values.
    (store / "done" / "r0_c2").unlink()
    (store / "done" / "r1_c1").unlink()
    for name in ("nngp", "ntk"):
        arr = np.load(store / f"{name}.npy", mmap_mode="r+")
        arr[0:4, 8:10] = np.nan
        arr[4:8, 4:8] = np.nan
        arr.flush()
    calls = []
    again = kernel_matrix(
        kernel_fn,
        x,
        None,
        ("nngp", "ntk"),
        block_size=4,
        store=store,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(5, 6), (6, 6)]  # only the two missing blocks ran
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(getattr(again, name), getattr(plain, name))

    _, _, other_fn = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(1))
    refusals = {
        "network": dict(kernel_fn=other_fn),
        "x1": dict(x1=x + 1),
        "get": dict(get="ntk"),
        "layout": dict(block_size=5),
    }
    for what, change in refusals.items():
        args = dict(kernel_fn=kernel_fn, x1=x, get=("nngp", "ntk"), block_size=4)
        args.update(change)
        with pytest.raises(ValueError, match=f"differs in: {what}"):
            kernel_matrix(store=store, progress=False, **args)


def test_store_refuses_other_dtype(tmp_path):
    _, _, kernel_fn = _mlp()
    x = _inputs(6, (5,)).astype(np.float32)
    kernel_matrix(kernel_fn, x, get="ntk", block_size=4, store=tmp_path, progress=False)
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        assert (
            jax.eval_shape(lambda x: kernel_fn(x, None, "ntk"), x).dtype == np.float64
        )
        with pytest.raises(ValueError, match="differs in: .*dtype .store: 'float32'"):
            kernel_matrix(
                kernel_fn, x, get="ntk", block_size=4, store=tmp_path, progress=False
            )
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_size=0), "block_size=0"),
        (dict(block_size=-3), "block_size=-3"),
        (dict(block_size=2.5), "block_size=2.5"),
        (dict(block_size=True), "block_size=True"),
        (dict(get="cov1"), "get='cov1'"),
        (dict(get=("ntk", "ntk")), "get="),
        (dict(x2=np.zeros((3, 4))), r"x2 has shape \(3, 4\)"),
        (dict(x1=np.zeros(5)), r"x1 has shape \(5,\)"),
    ],
)
def test_bad_arguments_fail_before_any_work(kwargs, match):
    calls = []

    def kernel_fn(*args):  # pragma: no cover - must not be called
        calls.append(args)
        raise AssertionError("kernel_fn was called")

    args = dict(x1=np.zeros((6, 5)), get="ntk", block_size=4, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kernel_matrix(kernel_fn, **args)
    assert not calls


def test_unwritable_store_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    def kernel_fn(*args):  # pragma: no cover - must not be called
        raise AssertionError("kernel_fn was called")

    with pytest.raises(ValueError, match="store=.*not a writable folder"):
        kernel_matrix(kernel_fn, np.zeros((4, 3)), store=blocker / "k", progress=False)


def test_symmetric_needs_one_number_per_pair():
    _, _, kernel_fn = stax.serial(
        stax.Conv(4, (2, 2)), stax.Relu(), stax.Conv(1, (2, 2))
    )
    with pytest.raises(ValueError, match="pass x2=x1"):
        kernel_matrix(
            kernel_fn, _inputs(4, (4, 4, 1)), get="nngp", progress=False, block_size=2
        )


def test_diagonal_blocks_are_computed_with_x2_none():
    """A kernel_fn whose x2=None branch differs (by 0.5) shows which branch
    each block took: diagonal blocks x2=None, all others x2 given."""

    def kernel_fn(x1, x2, get):
        k = x1 @ x1.T if x2 is None else x1 @ x2.T + 0.5
        return (k,) if isinstance(get, tuple) else k

    x = _inputs(10, (3,))
    k = kernel_matrix(kernel_fn, x, None, "nngp", block_size=4, progress=False)
    gram = x @ x.T
    same_block = (np.arange(10)[:, None] // 4) == (np.arange(10)[None, :] // 4)
    # float32: the offset's own rounding is ~3e-8; a wrong branch is off by 0.5.
    expected = np.where(same_block, gram, gram + 0.5)
    np.testing.assert_allclose(k, expected, rtol=1e-6, atol=1e-6)


def _plain_block_bytes(kernel_fn, x, size):
    """XLA's memory analysis of `jax.jit(kernel_fn)` on one off-diagonal block
    (an independent measure of what one block needs)."""
    stats = (
        _compiled(kernel_fn)
        .lower(x[:size], x[:size], get=("nngp", "ntk"))
        .compile()
        .memory_analysis()
    )
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
    )


def test_block_size_none_fits_the_budget_and_a_too_large_size_names_one():
    _, _, kernel_fn = _mlp()
    x = _inputs(200, (5,))
    budget = int(1.5 * _plain_block_bytes(kernel_fn, x, 32))
    assert _plain_block_bytes(kernel_fn, x, 64) > budget
    get = ("nngp", "ntk")
    sizes = []
    k = kernel_matrix(
        kernel_fn,
        x,
        None,
        get,
        memory_budget=budget,
        progress=lambda d, t: sizes.append(t),
    )
    assert sizes[-1] == 7 * 8 // 2  # 200 inputs in blocks of 32: 7 x 7 blocks
    ntk = _compiled(kernel_fn)(x, None, "ntk")
    assert _rel(k.ntk, np.asarray(ntk)) < 1e-4
    with pytest.raises(MemoryError, match="block_size=128 needs .* block_size=32 fits"):
        kernel_matrix(
            kernel_fn,
            x,
            None,
            get,
            block_size=128,
            memory_budget=budget,
            progress=False,
        )


def test_log_line_every_n_blocks(caplog):
    _, _, kernel_fn = _mlp()
    with caplog.at_level("INFO", logger="nt_frozen.kernels"):
        kernel_matrix(
            kernel_fn,
            _inputs(12, (5,)),
            None,
            "ntk",
            block_size=2,
            progress=False,
            log_every=7,
        )
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "kernel_matrix: 7/21 blocks done",
        "kernel_matrix: 14/21 blocks done",
        "kernel_matrix: 21/21 blocks done",
    ]
    assert all("ETA" in line for line in lines)


def test_resume_with_block_size_none_keeps_the_stored_blocks(tmp_path):
    _, _, kernel_fn = _mlp()
    x = _inputs(40, (5,))
    budget = int(1.5 * _plain_block_bytes(kernel_fn, x, 16))
    first = kernel_matrix(
        kernel_fn, x, None, "ntk", store=tmp_path, memory_budget=budget, progress=False
    )
    (tmp_path / "done" / "r0_c1").unlink()
    calls = []
    again = kernel_matrix(
        kernel_fn,
        x,
        None,
        "ntk",
        store=tmp_path,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(6, 6)]  # blocks of 16 (3 x 3 blocks), one recomputed
    np.testing.assert_array_equal(again, first)
