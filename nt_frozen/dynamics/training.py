"""Train ensembles of finite networks with frozen (and rated) layers by
gradient descent on the schedule of :mod:`nt_frozen.dynamics.schedule`."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nt_frozen._stax_utils import ArrayLike
from nt_frozen.checks import check_targets
from nt_frozen.dynamics.schedule import (
    INF_TOL,
    STEP_FRACTION,
    GDSchedule,
    check_ntk_train_train,
    check_times,
    gd_schedule,
)
from nt_frozen.rates import check_rates_fit
from nt_frozen.restrict import restrict


class EnsemblePredictions(NamedTuple):
    """Predictions of `M` independently initialized, trained networks.

    `test[m, k]` is member `m`'s output on `x_test` at `ts[k]`; `test_0` and
    `train_0` are the outputs at initialization (for paired comparisons).

    Example (:func:`train_ensemble` returns one):
      >>> EnsemblePredictions._fields
      ('ts', 'test', 'train', 'test_0', 'train_0', 'schedule')
    """

    ts: np.ndarray
    test: jax.Array  # (M, T, n_test, out)
    train: jax.Array | None  # (M, T, n_train, out), if requested
    test_0: jax.Array  # (M, n_test, out)
    train_0: jax.Array  # (M, n_train, out)
    schedule: GDSchedule


# The progress bar of the `train_ensemble` call in progress. The loop reports
# its steps through `jax.debug.callback` to one module-level function, so that
# the compiled loop does not depend on the bar (a new bar each call would
# otherwise recompile it); XLA runs the callbacks on its own threads.
_BAR: list[Any] = []
# About this many updates of the bar per call, whatever the number of steps.
PROGRESS_UPDATES = 200


def _advance_bar(_member_key: jax.Array, steps: jax.Array) -> None:
    if _BAR:
        _BAR[-1].update(int(steps))


@functools.partial(
    jax.jit,
    static_argnames=(
        "init_fn",
        "apply_fn",
        "member_batch_size",
        "return_train",
        "progress",
    ),
)
def _train_members(
    init_fn: Callable,
    apply_fn: Callable,
    keys: jax.Array,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
    n_steps: jax.Array,
    step_sizes: jax.Array,
    member_batch_size: int | None,
    return_train: bool,
    progress: bool,
    report_every: jax.Array,
):
    def report(key, i, n):
        # After every `report_every`-th step of a segment and after its last,
        # the steps since the last report. The member's key makes the callback
        # run once per member when `lax.map` vmaps a batch of them.
        done = i + 1
        since = jnp.where(done % report_every == 0, report_every, done % report_every)
        lax.cond(
            (done % report_every == 0) | (done == n),
            lambda: jax.debug.callback(_advance_bar, key, since),
            lambda: None,
        )

    def one_member(key):
        _, params = init_fn(key, x_train.shape)
        check_rates_fit(params, "train_ensemble")
        # The trainable leaves alone, plain derivatives: frozen leaves are
        # constants, and the rates act on the steps below.
        net = restrict(apply_fn, params, rated=False)

        def loss(leaves):
            # Mean over all of y: NT's normalization 1 / (2 N), N = y.size.
            out = net.fn(leaves, x_train)
            return 0.5 * jnp.mean((out - y_train) ** 2)

        grad = jax.grad(loss)

        def outputs(leaves):
            train = net.fn(leaves, x_train) if return_train else None
            return net.fn(leaves, x_test), train

        def segment(leaves, schedule):
            n, eta = schedule

            def step(i, leaves):
                # Per-leaf rates (`LearningRate`): a leaf at rate r moves r x eta.
                g = [d if r == 1.0 else r * d for d, r in zip(grad(leaves), net.rates)]
                if progress:
                    report(key, i, n)
                return tuple(p - eta * d for p, d in zip(leaves, g))

            leaves = lax.fori_loop(0, n, step, leaves)
            return leaves, outputs(leaves)

        test_0 = apply_fn(params, x_test)
        train_0 = apply_fn(params, x_train)
        _, (test, train) = lax.scan(segment, net.leaves, (n_steps, step_sizes))
        return test, train, test_0, train_0

    # lax.map bounds memory to `member_batch_size` members' parameters at once.
    return lax.map(one_member, keys, batch_size=member_batch_size)


@contextlib.contextmanager
def _progress_bar(show: bool, total: int, desc: str) -> Iterator[Any]:
    """The tqdm bar the training loop advances (None when not `show`n).

    On stderr, and only once a call has run for 2 s: short calls (tests,
    doctests) print nothing."""
    if not show or total == 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="step", file=sys.stderr, delay=2) as bar:
        _BAR.append(bar)
        try:
            yield bar
        finally:
            _BAR.remove(bar)


def check_key_and_members(
    key: jax.Array, n_members: int, name: str = "train_ensemble"
) -> None:
    """A `ValueError` unless `key` is a PRNG key and `n_members` a positive
    integer (swapped or misplaced arguments land here)."""
    typed = jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key)
    raw = jnp.ndim(key) == 1 and jnp.asarray(key).dtype == jnp.uint32  # any impl
    if not (typed or raw):
        raise ValueError(
            f"{name}: key must be a PRNG key (jax.random.PRNGKey(seed) or "
            f"jax.random.key(seed)), got {type(key).__name__} of shape "
            f"{jnp.shape(key)}."
        )
    if not (isinstance(n_members, (int, np.integer)) and n_members >= 1):
        raise ValueError(
            f"{name}: n_members must be a positive integer, got {n_members!r}."
        )


def train_ensemble(
    init_fn: Callable,
    apply_fn: Callable,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    ts: ArrayLike,
    ntk_train_train: ArrayLike,
    key: jax.Array,
    n_members: int,
    *,
    learning_rate: float = 1.0,
    step_fraction: float = STEP_FRACTION,
    inf_tol: float = INF_TOL,
    inf_step_fraction: float = 1.0,
    member_batch_size: int | None = None,
    return_train: bool = False,
    progress: bool = True,
) -> EnsemblePredictions:
    """Train `n_members` networks by full-batch gradient descent on MSE.

    Only trainable leaves move (frozen ones, see :func:`nt_frozen.split`, are
    constants); a leaf of a :func:`~nt_frozen.LearningRate` layer moves with
    step `rate * eta`. Member `m` starts from `init_fn(jax.random.split(key,
    n_members)[m], x_train.shape)`. Times follow NT's convention (module
    docstring), the step sizes :func:`gd_schedule`. The training loop is one
    jitted computation (`lax.map` over members, `lax.scan` over the segments
    between requested times, `lax.fori_loop` over steps): repeated calls with
    the same network functions, shapes and number of segments compile once.

    Args:
      init_fn, apply_fn: the network (`nt_frozen.stax` layers, any `Frozen`).
      x_train, y_train: training set; `y_train` has shape `(n_train, out)`.
      x_test: test inputs.
      ts: times in NT's units (1-D, non-negative, non-decreasing); `inf`
        means convergence. The times come first, then the kernel, as in
        :func:`gd_schedule`.
      ntk_train_train: `(n_train, n_train)` train-train NTK used to choose
        step sizes (analytic frozen NTK, or an empirical one).
      key: PRNG key; one key per member is split from it.
      n_members: ensemble size `M`.
      learning_rate: NT's `learning_rate`.
      step_fraction, inf_tol, inf_step_fraction: see :func:`gd_schedule`.
      member_batch_size: train this many members at a time (memory bound);
        `None` trains all at once.
      return_train: also return the predictions on `x_train`.
      progress: show a progress bar over the gradient steps of all members
        (on stderr, from 2 s on; False: none, and no host callbacks).

    Returns:
      An :class:`EnsemblePredictions`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     stax.Dense(16), stax.Relu(), Frozen(stax.Dense(16)), stax.Relu(),
      ...     stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
      >>> y = jnp.sin(x[:, :1])
      >>> ntk = kernel_fn(x, None, "ntk")
      >>> ens = train_ensemble(init_fn, apply_fn, x, y, x[:2], [1.0, jnp.inf],
      ...     ntk, jax.random.PRNGKey(1), 4, return_train=True, progress=False)
      >>> ens.test.shape
      (4, 2, 2, 1)
      >>> bool(jnp.abs(ens.train[:, -1] - y).max() < 1e-2)  # interpolates at inf
      True
    """
    x_train, y_train, x_test = (jnp.asarray(a) for a in (x_train, y_train, x_test))
    check_targets(init_fn, apply_fn, x_train, y_train, x_test, "train_ensemble")
    # Before any work, and in the order of the signature: swapped times and
    # kernel fail here, naming the argument, not deep inside the schedule.
    check_times(ts, "train_ensemble")
    check_ntk_train_train(ntk_train_train, x_train.shape[0], "train_ensemble")
    check_key_and_members(key, n_members)
    schedule = gd_schedule(
        ts,
        ntk_train_train,
        y_train.size,
        learning_rate,
        step_fraction,
        inf_tol,
        inf_step_fraction,
    )
    keys = jax.random.split(key, n_members)
    steps = int(schedule.n_steps.sum())
    with _progress_bar(progress, n_members * steps, "train_ensemble") as bar:
        test, train, test_0, train_0 = _train_members(
            init_fn,
            apply_fn,
            keys,
            x_train,
            y_train,
            x_test,
            jnp.asarray(schedule.n_steps),
            jnp.asarray(schedule.step_sizes, x_train.dtype),
            member_batch_size,
            return_train,
            bar is not None,
            jnp.asarray(max(1, n_members * steps // PROGRESS_UPDATES), jnp.int32),
        )
        jax.block_until_ready(test)  # every callback has run
    recorded = np.flatnonzero(schedule.recorded)
    train = None if train is None else train[:, recorded]
    return EnsemblePredictions(
        schedule.ts, test[:, recorded], train, test_0, train_0, schedule
    )
