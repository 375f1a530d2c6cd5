"""Ensemble training: NT's time convention for an exactly linear model, and no
recompilation for new times or keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_frozen import empirical_ntk_fn, nt
from nt_frozen.dynamics import train_ensemble
from nt_frozen.testing import FREEZING_PATTERNS, sphere_regression, three_layer_mlp

CASES = FREEZING_PATTERNS
X_TRAIN, Y_TRAIN_3, X_TEST = sphere_regression()
Y_TRAIN = Y_TRAIN_3[:, :1]
N_TRAIN = len(X_TRAIN)
_mlp = three_layer_mlp


def test_time_convention_is_nt_s_for_an_exactly_linear_model():
    """Only the readout trains, so each network is exactly linear in its
    trainable parameters with its empirical NTK: its trajectory must be NT's
    `gradient_descent_mse` with that kernel, at the same `t` and
    `learning_rate`, up to the discretization error (< step_fraction of the
    change). Three outputs, so that N = y_train.size = 30 differs from the 10
    training points: a loss summed instead of averaged, normalized by the
    number of points instead of y_train.size, or a learning rate not applied to
    `t`, would be off by a factor 30, 3 or 2."""
    outputs = Y_TRAIN_3.shape[1]
    init_fn, apply_fn, _ = _mlp(64, CASES["readout_only"], outputs=outputs)
    lr, step_fraction = 0.5, 0.01
    key = jax.random.PRNGKey(3)
    _, params = init_fn(jax.random.split(key, 2)[0], X_TRAIN.shape)
    # Outputs are independent given the features: the kernel is ntk (x) I.
    ntk = jax.jit(empirical_ntk_fn(apply_fn))(
        jnp.concatenate([X_TRAIN, X_TEST]), None, params
    )
    k_dd, k_td = ntk[:N_TRAIN, :N_TRAIN], ntk[N_TRAIN:, :N_TRAIN]
    lam_max = float(np.linalg.eigvalsh(k_dd)[-1])
    ts = [t * Y_TRAIN_3.size / (lam_max * lr) for t in (0.5, 3.0)] + [math.inf]
    ens = train_ensemble(
        init_fn,
        apply_fn,
        X_TRAIN,
        Y_TRAIN_3,
        X_TEST,
        ts,
        k_dd,
        key,
        2,
        learning_rate=lr,
        step_fraction=step_fraction,
        return_train=True,
    )
    member, f0_train, f0_test = ens.test[0], ens.train_0[0], ens.test_0[0]
    assert member.shape[-1] == outputs
    predict_fn = nt.predict.gradient_descent_mse(k_dd, Y_TRAIN_3, learning_rate=lr)

    def nt_at(t):
        return predict_fn(t, f0_train, f0_test, k_td)[1]

    expected = jnp.stack([nt_at(ts[0]), nt_at(ts[1]), nt_at(None)])
    change = np.linalg.norm(expected - f0_test, axis=(1, 2))
    error = np.linalg.norm(member - expected, axis=(1, 2))
    np.testing.assert_array_less(error, step_fraction * change)
    # The same check fails for a misread time scale: the learning rate (2, 1/2)
    # or N = the number of points instead of y_train.size (3, 1/3).
    for wrong in (2.0, 0.5, outputs, 1 / outputs):
        misread = nt_at(wrong * ts[1])
        assert np.linalg.norm(member[1] - misread) > 10 * step_fraction * change[1]
    # Converged: the training set is interpolated (member 0, whose kernel set
    # the schedule's slowest mode; member 1's kernel is another draw).
    np.testing.assert_allclose(ens.train[0, -1], Y_TRAIN_3, atol=5e-3)


def test_training_compiles_nothing_new_for_new_times_and_keys():
    init_fn, apply_fn, kernel_fn = _mlp(32, CASES["frozen_middle"])
    ntk = np.eye(N_TRAIN)
    compiles, recording = [], [False]

    def on_event(event, duration, **kwargs):
        if recording[0] and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for ts, seed in (([0.5, 1.0], 0), ([2.0, 7.0], 1)):
            recording[0] = seed == 1  # the second call: new times and key
            train_ensemble(
                init_fn,
                apply_fn,
                X_TRAIN,
                Y_TRAIN,
                X_TEST,
                ts,
                ntk,
                jax.random.PRNGKey(seed),
                3,
            )
    finally:
        recording[0] = False
    assert compiles == []


def test_arguments_in_the_old_or_a_wrong_order_are_named_before_any_work():
    """Times, then the kernel, then key and members: the pre-0.1.0 order
    (ts, key, n_members, ntk) fails naming the kernel, before training."""
    init_fn, apply_fn, _ = _mlp(8, CASES["frozen_middle"])
    data = (X_TRAIN, Y_TRAIN, X_TEST)
    key, ntk = jax.random.PRNGKey(0), np.eye(N_TRAIN)
    with pytest.raises(ValueError, match=r"ntk_train_train must be a square .*\(2,\)"):
        train_ensemble(init_fn, apply_fn, *data, [1.0], key, 2, ntk)
    with pytest.raises(ValueError, match=r"ts must be a scalar or 1-D .*NTK"):
        train_ensemble(init_fn, apply_fn, *data, ntk, [1.0], key, 2)
    with pytest.raises(ValueError, match=f"{N_TRAIN} training points"):
        train_ensemble(init_fn, apply_fn, *data, [1.0], np.eye(3), key, 2)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        train_ensemble(init_fn, apply_fn, *data, [1.0], ntk, 2, key)
    with pytest.raises(ValueError, match="n_members must be a positive integer"):
        train_ensemble(init_fn, apply_fn, *data, [1.0], ntk, key, 0)


class _RecordingBar:
    """Stands in for tqdm.tqdm: records the total and every update."""

    bars: list = []

    def __init__(self, total=None, **kwargs):
        self.total, self.updates = total, []
        _RecordingBar.bars.append(self)

    def update(self, n):
        self.updates.append(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("member_batch_size", [None, 2])
def test_progress_bar_counts_every_step_of_every_member(monkeypatch, member_batch_size):
    """The bar reaches n_members x steps (also when `lax.map` vmaps a batch
    of members), in several updates, not one at the end; progress=False makes
    no bar."""
    import tqdm

    import nt_frozen.dynamics.training as training
    from nt_frozen.dynamics import gd_schedule

    monkeypatch.setattr(tqdm, "tqdm", _RecordingBar)
    # A report every 4 steps (4 members x 23 steps / 20): segments of 15 and 8
    # steps end between reports, and their last steps must still count.
    monkeypatch.setattr(training, "PROGRESS_UPDATES", 20)
    _RecordingBar.bars = []
    init_fn, apply_fn, _ = _mlp(8, CASES["frozen_middle"])
    ntk, ts = np.eye(N_TRAIN), [3.0, 4.5]
    steps = int(gd_schedule(ts, ntk, Y_TRAIN.size).n_steps.sum())
    assert steps == 23
    kwargs = dict(member_batch_size=member_batch_size)
    args = (init_fn, apply_fn, X_TRAIN, Y_TRAIN, X_TEST, ts, ntk)
    train_ensemble(*args, jax.random.PRNGKey(0), 4, **kwargs)
    [bar] = _RecordingBar.bars
    assert bar.total == 4 * steps and sum(bar.updates) == 4 * steps
    assert len(bar.updates) > 8  # 4 members x 2 segments, and within segments
    train_ensemble(*args, jax.random.PRNGKey(0), 4, progress=False, **kwargs)
    assert len(_RecordingBar.bars) == 1
