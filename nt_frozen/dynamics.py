"""Training dynamics with frozen layers: finite-width ensembles vs `nt.predict`.

Under gradient descent on MSE a wide network stays close to its linearization,
so the mean and covariance of its test predictions over random initializations
follow from the NNGP and the (frozen) NTK through
`nt.predict.gradient_descent_mse_ensemble`. This module trains ensembles of
finite networks with frozen layers, asks `nt.predict` for the same times, and
summarizes how well the two agree.

Time convention, as in `nt.predict.gradient_descent_mse[_ensemble]`: the loss
is `L = ||f(X) - Y||^2 / (2 N)` with `N = y_train.size`, and time `t` with
learning rate `lr` is the absolute time `tau = lr * t` of the gradient flow
`d theta / d tau = -grad L`. In function space (linearized) that is

    df(X)/dtau = -Theta (f(X) - Y) / N,
    f_tau(X) - Y = exp(-Theta tau / N) (f_0(X) - Y),

with `Theta` the train-train NTK. One gradient-descent step of size `eta` on
`L` advances `tau` by `eta`, so `t` counts steps at learning rate `lr` in the
continuous limit.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nt_frozen._compat import nt
from nt_frozen.checks import check_targets
from nt_frozen.params import merge, split
from nt_frozen.rates import apply_learning_rates

ArrayLike = Any

# Largest fraction `eta * lambda_max / N` of one step on the stiffest mode of
# the flow (see `gd_schedule`): the discrete and continuous decay of any mode
# then differ by at most STEP_FRACTION / (2 e) < 0.4% of its initial residual.
STEP_FRACTION = 0.02
# The t = inf run stops when every mode of the residual has shrunk below
# INF_TOL of its value at the start of the run.
INF_TOL = 1e-3
# Before its large steps, the t = inf run follows the flow up to
# lambda_max * tau / N = INF_WARMUP (stiff modes down to e^-4 = 2%). Large steps
# on a large residual move a finite network away from the flow's limit
# (measured: first-layer-only MLP, width 512, 32 members, t = inf straight from
# initialization: paired mean error 0.088 with x_inf = 1, 0.058 with 0.05; after
# a warm-up to 4, 0.059 with x_inf = 1).
INF_WARMUP = 4.0


class GDSchedule(NamedTuple):
    """Gradient-descent segments that reach each requested time.

    Segment `k` runs `n_steps[k]` steps of size `step_sizes[k]` (absolute time
    per step); the network's outputs after the segments with `recorded[k]`
    are the predictions at `ts`, in order (the others are warm-up segments of
    a `t = inf` run).
    """

    ts: np.ndarray
    n_steps: np.ndarray
    step_sizes: np.ndarray
    recorded: np.ndarray


def stiffest_mode_time(
    ntk_train_train: ArrayLike, y_size: int, learning_rate: float = 1.0
) -> float:
    """`N / (learning_rate * lambda_max)`: the time, in NT's units, over which
    the stiffest mode of the flow decays by `e`; a natural unit for `ts`.

    Example:
      >>> import numpy as np
      >>> stiffest_mode_time(np.diag([4.0, 1.0]), y_size=2)
      0.5
    """
    lam_max = float(np.linalg.eigvalsh(np.asarray(ntk_train_train, np.float64))[-1])
    return y_size / (learning_rate * lam_max)


def gd_schedule(
    ts: ArrayLike,
    ntk_train_train: ArrayLike,
    y_size: int,
    learning_rate: float = 1.0,
    step_fraction: float = STEP_FRACTION,
    inf_tol: float = INF_TOL,
    inf_step_fraction: float = 1.0,
    max_steps: int = 1_000_000,
) -> GDSchedule:
    """Steps of gradient descent that follow the flow up to each time in `ts`.

    For the linearized network one step of size `eta` multiplies the residual's
    component along an NTK eigenvector (eigenvalue `lam`) by `1 - x`, with
    `x = eta * lam / N`; the flow multiplies it by `exp(-x)`. After `n` steps
    the two differ by about `n x^2 / 2 * exp(-n x) <= x / (2 e)`, so bounding
    `x <= step_fraction` on the largest eigenvalue bounds the discretization
    error of every mode. Each segment uses the largest step within that bound
    that lands exactly on the requested time.

    `t = inf` is a long run with the larger step `eta = x_inf N / lambda_max`
    (`x_inf = inf_step_fraction <= 1`; stable for `x < 2`): every update of
    the linearized model lies in the span of the Jacobian's rows, so any
    stable step converges to the same limit as the flow. It first follows the
    flow up to `lambda_max tau / N = INF_WARMUP` (see there why), then runs
    until the slowest mode has shrunk below `inf_tol`: `(1 - x_inf lambda_min /
    lambda_max)^n <= inf_tol`.

    Args:
      ts: times in NT's units (non-decreasing; `inf` only at the end).
      ntk_train_train: an estimate of the train-train NTK (`(n, n)`, e.g. the
        analytic one); only its extreme eigenvalues are used.
      y_size: `N = y_train.size`, the loss normalization.
      learning_rate: NT's `learning_rate` (absolute time is `learning_rate * t`).
      step_fraction: bound on `eta * lambda_max / N` for finite times.
      inf_tol: residual reduction of the slowest mode that counts as `t = inf`.
      inf_step_fraction: `x_inf`, the step of the `t = inf` run.
      max_steps: refuse schedules longer than this (ill-conditioned NTK).

    Example:
      >>> import numpy as np
      >>> s = gd_schedule([1.0, 2.0, np.inf], np.diag([4.0, 1.0]), y_size=2)
      >>> s.n_steps.tolist(), s.step_sizes.round(4).tolist()
      ([100, 100, 0, 25], [0.01, 0.01, 0.0, 0.5])
      >>> s.recorded.tolist()
      [True, True, False, True]
    """
    ts = np.asarray(ts, np.float64).reshape(-1)
    if not ts.size:
        raise ValueError("ts is empty: ask for at least one time.")
    if np.any(np.isnan(ts)) or np.any(ts < 0) or np.any(ts[1:] < ts[:-1]):
        raise ValueError(f"ts must be non-negative and non-decreasing, got {ts}.")
    eigs = np.linalg.eigvalsh(np.asarray(ntk_train_train, np.float64))
    lam_max, lam_min = float(eigs[-1]), float(eigs[0])
    if not lam_max > 0:
        raise ValueError(
            "The train-train NTK is zero: no trainable parameter reaches the "
            "output, so training changes nothing."
        )
    eta_max = step_fraction * y_size / lam_max

    def flow(span):  # fine steps covering `span` of absolute time exactly
        n = max(math.ceil(span / eta_max - 1e-9), 0)
        return n, (span / n if n else 0.0)

    segments = []  # (n_steps, step_size, recorded)
    tau = 0.0  # absolute time reached so far
    for t in ts:
        if not np.isinf(t):
            segments.append((*flow(learning_rate * t - tau), True))
            tau = learning_rate * t
            continue
        if np.isinf(tau):  # already converged
            segments.append((0, 0.0, True))
            continue
        if not lam_min > 0:
            raise ValueError(
                "t = inf needs a positive definite train-train NTK (its smallest "
                f"eigenvalue is {lam_min:.3g}); use finite times."
            )
        segments.append((*flow(INF_WARMUP * y_size / lam_max - tau), False))
        # A large step multiplies a mode by 1 - x lam / lam_max, in
        # [0, 1 - x lam_min / lam_max] for x <= 1: the slowest mode bounds all.
        x = min(inf_step_fraction, 1.0)
        contraction = 1 - x * lam_min / lam_max
        n = (
            1
            if contraction <= 0
            else math.ceil(math.log(inf_tol) / math.log(contraction))
        )
        segments.append((n, x * y_size / lam_max, True))
        tau = math.inf
    n_steps, step_sizes, recorded = (np.asarray(v) for v in zip(*segments))
    if n_steps.sum() > max_steps:
        raise ValueError(
            f"The schedule needs {n_steps.sum()} steps (> max_steps={max_steps}); "
            f"the train-train NTK has condition number {lam_max / lam_min:.3g}. "
            "Use fewer or better separated training points, or finite times."
        )
    return GDSchedule(ts, n_steps.astype(np.int32), step_sizes, recorded.astype(bool))


class EnsemblePredictions(NamedTuple):
    """Predictions of `M` independently initialized, trained networks.

    `test[m, k]` is member `m`'s output on `x_test` at `ts[k]`; `test_0` and
    `train_0` are the outputs at initialization (for paired comparisons).
    """

    ts: np.ndarray
    test: jax.Array  # (M, T, n_test, out)
    train: jax.Array | None  # (M, T, n_train, out), if requested
    test_0: jax.Array  # (M, n_test, out)
    train_0: jax.Array  # (M, n_train, out)
    schedule: GDSchedule


@functools.partial(
    jax.jit,
    static_argnames=("init_fn", "apply_fn", "member_batch_size", "return_train"),
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
):
    def one_member(key):
        _, params = init_fn(key, x_train.shape)
        trainable, frozen = split(params)

        def loss(trainable):
            # Mean over all of y: NT's normalization 1 / (2 N), N = y.size.
            out = apply_fn(merge(trainable, frozen), x_train)
            return 0.5 * jnp.mean((out - y_train) ** 2)

        grad = jax.grad(loss)

        def outputs(trainable):
            params = merge(trainable, frozen)
            train = apply_fn(params, x_train) if return_train else None
            return apply_fn(params, x_test), train

        def segment(trainable, schedule):
            n, eta = schedule

            def step(_, trainable):
                # Per-leaf rates (`LearningRate`): a leaf at rate r moves r x eta.
                g = apply_learning_rates(grad(trainable))
                return jax.tree_util.tree_map(lambda p, d: p - eta * d, trainable, g)

            trainable = lax.fori_loop(0, n, step, trainable)
            return trainable, outputs(trainable)

        test_0 = apply_fn(params, x_test)
        train_0 = apply_fn(params, x_train)
        _, (test, train) = lax.scan(segment, trainable, (n_steps, step_sizes))
        return test, train, test_0, train_0

    # lax.map bounds memory to `member_batch_size` members' parameters at once.
    return lax.map(one_member, keys, batch_size=member_batch_size)


def train_ensemble(
    init_fn: Callable,
    apply_fn: Callable,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    ts: ArrayLike,
    key: jax.Array,
    n_members: int,
    ntk_train_train: ArrayLike,
    learning_rate: float = 1.0,
    step_fraction: float = STEP_FRACTION,
    inf_tol: float = INF_TOL,
    inf_step_fraction: float = 1.0,
    member_batch_size: int | None = None,
    return_train: bool = False,
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
      ts: times in NT's units, non-decreasing; `inf` means convergence.
      key: PRNG key; one key per member is split from it.
      n_members: ensemble size `M`.
      ntk_train_train: train-train NTK used to choose step sizes (analytic
        frozen NTK, or an empirical one).
      learning_rate: NT's `learning_rate`.
      step_fraction, inf_tol, inf_step_fraction: see :func:`gd_schedule`.
      member_batch_size: train this many members at a time (memory bound);
        `None` trains all at once.
      return_train: also return the predictions on `x_train`.

    Returns:
      An :class:`EnsemblePredictions`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     stax.Dense(256), stax.Relu(), Frozen(stax.Dense(256)), stax.Relu(),
      ...     stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
      >>> y = jnp.sin(x[:, :1])
      >>> ntk = kernel_fn(x, None, "ntk")
      >>> ens = train_ensemble(init_fn, apply_fn, x, y, x[:2], [1.0, jnp.inf],
      ...                      jax.random.PRNGKey(1), 4, ntk, return_train=True)
      >>> ens.test.shape
      (4, 2, 2, 1)
      >>> bool(jnp.abs(ens.train[:, -1] - y).max() < 1e-2)  # interpolates at inf
      True
    """
    x_train, y_train, x_test = (jnp.asarray(a) for a in (x_train, y_train, x_test))
    check_targets(init_fn, apply_fn, x_train, y_train, x_test, "train_ensemble")
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
    )
    recorded = np.flatnonzero(schedule.recorded)
    train = None if train is None else train[:, recorded]
    return EnsemblePredictions(
        schedule.ts, test[:, recorded], train, test_0, train_0, schedule
    )


class AnalyticPrediction(NamedTuple):
    """`nt.predict` mean and marginal variance of test outputs at each time,
    with the kernels and training settings it came from."""

    ts: np.ndarray
    mean: jax.Array  # (T, n_test, out)
    variance: jax.Array  # (T, n_test): the same for every output channel
    ntk_train_train: jax.Array  # (n_train, n_train)
    ntk_test_train: jax.Array  # (n_test, n_train)
    nngp_train_train: jax.Array  # (n_train, n_train)
    nngp_test_train: jax.Array  # (n_test, n_train)
    y_train: jax.Array
    learning_rate: float
    diag_reg: float


def analytic_prediction(
    kernel_fn: Callable,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    ts: ArrayLike,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
) -> AnalyticPrediction:
    """Infinite-width prediction of gradient descent on MSE at times `ts`.

    `nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
    learning_rate, diag_reg)` with `get="ntk"`: mean and covariance over
    initializations of an infinite ensemble of infinite-width networks, for
    any `kernel_fn` (frozen layers included). `inf` in `ts` uses NT's linear
    solve (`t=None`), which stays exact where the eigenbasis formula would
    multiply a zero eigenvalue by infinity.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> _, _, kernel_fn = stax.serial(
      ...     stax.Dense(8), stax.Relu(), Frozen(stax.Dense(8)), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
      >>> p = analytic_prediction(kernel_fn, x, jnp.sin(x[:, :1]), x[:2],
      ...                         [0.5, jnp.inf])
      >>> p.mean.shape, p.variance.shape
      ((2, 2, 1), (2, 2))
    """
    x_train, y_train, x_test = (jnp.asarray(a) for a in (x_train, y_train, x_test))
    check_targets(None, None, x_train, y_train, x_test, "analytic_prediction")
    ts = np.asarray(ts, np.float64).reshape(-1)
    n_train = x_train.shape[0]
    # One kernel evaluation on train and test points together, compiled per
    # kernel_fn; NT's predict then runs on a lookup of its blocks, compiled
    # once per shape for every kernel_fn.
    nngp, ntk = _joint_kernels(kernel_fn, jnp.concatenate([x_train, x_test]))
    finite = np.isfinite(ts)
    mean, var = _predict_from_kernels(
        nngp,
        ntk,
        y_train,
        n_train,
        jnp.asarray(ts[finite], y_train.dtype),
        int(np.sum(~finite)),
        learning_rate,
        diag_reg,
    )
    inverse = _finite_first_inverse(ts)
    train, test = slice(None, n_train), slice(n_train, None)
    return AnalyticPrediction(
        ts=ts,
        mean=mean[inverse],
        variance=var[inverse],
        ntk_train_train=ntk[train, train],
        ntk_test_train=ntk[test, train],
        nngp_train_train=nngp[train, train],
        nngp_test_train=nngp[test, train],
        y_train=y_train,
        learning_rate=learning_rate,
        diag_reg=diag_reg,
    )


def _finite_first_inverse(ts: np.ndarray) -> np.ndarray:
    """Indices that put results computed at the finite times first, then at
    the infinite ones, back in the order of `ts`."""
    finite = np.isfinite(ts)
    return np.argsort(np.concatenate([np.flatnonzero(finite), np.flatnonzero(~finite)]))


@functools.partial(jax.jit, static_argnames=("kernel_fn",))
def _joint_kernels(kernel_fn: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = kernel_fn(x, None, ("nngp", "ntk"))
    return k.nngp, k.ntk


@functools.partial(jax.jit, static_argnames=("n_train", "n_inf"))
def _predict_from_kernels(
    nngp, ntk, y_train, n_train, finite_ts, n_inf, learning_rate, diag_reg
):
    # NT's predict asks kernel_fn(x1, x2, get) for train-train, test-train and
    # test-test blocks; the "inputs" here are row indices into joint kernels.
    def lookup_kernel_fn(x1, x2, get, **unused_kwargs):
        rows = x1[:, 0]
        cols = rows if x2 is None else x2[:, 0]
        blocks = {"nngp": nngp[rows][:, cols], "ntk": ntk[rows][:, cols]}
        if isinstance(get, str):
            return blocks[get]
        return collections.namedtuple("Kernels", get)(*(blocks[g] for g in get))

    index = jnp.arange(nngp.shape[0])[:, None]
    predict_fn = nt.predict.gradient_descent_mse_ensemble(
        lookup_kernel_fn,
        index[:n_train],
        y_train,
        learning_rate=learning_rate,
        diag_reg=diag_reg,
    )
    x_test = index[n_train:]
    means, variances = [], []
    if finite_ts.size:
        mean, cov = predict_fn(t=finite_ts, x_test=x_test, get="ntk", compute_cov=True)
        means.append(mean)
        variances.append(jnp.diagonal(cov, axis1=-2, axis2=-1))
    if n_inf:
        mean, cov = predict_fn(t=None, x_test=x_test, get="ntk", compute_cov=True)
        means.append(jnp.broadcast_to(mean, (n_inf,) + mean.shape))
        variances.append(jnp.broadcast_to(jnp.diagonal(cov), (n_inf, cov.shape[0])))
    return jnp.concatenate(means), jnp.concatenate(variances)


def linearized_members(
    ensemble: EnsemblePredictions, prediction: AnalyticPrediction
) -> jax.Array:
    """Each member's test prediction had it trained as the infinite-width
    linearized network, from its own initial outputs.

    `nt.predict.gradient_descent_mse` with the analytic NTK: `f_t(x) = f_0(x)
    - Theta_xX Theta^-1 (I - exp(-Theta tau / N)) (f_0(X) - Y)`. It is affine
    in `f_0`, and `E f_0 = 0` exactly at any width (flipping the readout's sign
    is a symmetry of the initialization), so its mean over members is the
    analytic mean: `member - linearized member` has the ensemble's mean error
    as its expectation, without the initialization noise of `f_0`. Returns an
    array shaped like `ensemble.test` (example: :func:`compare_dynamics`).
    """
    ts = prediction.ts
    if not np.array_equal(ensemble.ts, ts):
        raise ValueError(
            f"ensemble and prediction are at different times: {ensemble.ts} vs {ts}."
        )
    finite = ts[np.isfinite(ts)]
    n_inf = ts.size - finite.size
    # Built once, so NT's cached eigendecomposition serves every member and time.
    predict_fn = nt.predict.gradient_descent_mse(
        prediction.ntk_train_train,
        prediction.y_train,
        prediction.learning_rate,
        prediction.diag_reg,
    )
    k_td = prediction.ntk_test_train

    def one(train_0, test_0):
        out = []
        if finite.size:
            out.append(predict_fn(finite, train_0, test_0, k_td)[1])
        if n_inf:
            inf = predict_fn(None, train_0, test_0, k_td)[1]
            out.append(jnp.broadcast_to(inf, (n_inf,) + inf.shape))
        return jnp.concatenate(out)

    out = jax.vmap(one)(ensemble.train_0, ensemble.test_0)
    return out[:, _finite_first_inverse(ts)]


class DynamicsAgreement(NamedTuple):
    """Ensemble vs analytic prediction; arrays have one entry per time.

    Errors are Frobenius norms over test points and outputs. Mean errors are
    relative to the analytic prediction's root second moment `sqrt(||mean||^2
    + sum(variance))` (nonzero even at `t = 0`, where the mean vanishes);
    variance errors relative to `||variance||`.

    - `mean_error`, `mean_se`: ensemble mean vs analytic mean, and the Monte
      Carlo standard error of the ensemble mean, `||std / sqrt(M)||`.
    - `variance_error`, `variance_se`: ensemble variance (ddof=1) vs analytic,
      and `sqrt(2 / (M - 1))`, the relative standard error of the sample
      variance of a Gaussian.
    - `paired_mean_error`, `paired_mean_se`: the same mean error estimated
      from `member - linearized member` (:func:`linearized_members`), whose
      initialization noise cancels: only finite-width effects remain.
    - `residual_rms`: root mean square over members of `member - linearized
      member`, the finite-width deviation of a single network, `O(width^-1/2)`.
    """

    ts: np.ndarray
    n_members: int
    mean_error: np.ndarray
    mean_se: np.ndarray
    variance_error: np.ndarray
    variance_se: float
    paired_mean_error: np.ndarray
    paired_mean_se: np.ndarray
    residual_rms: np.ndarray

    def tolerances(
        self, width: int, k: float = 4.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tolerances `k * (standard error + width^-1/2)` for `(mean_error,
        paired_mean_error, variance_error)`.

        `width^-1/2` allows for finite width: one network deviates from its
        infinite-width linearization by `O(width^-1/2)` (relative), and the
        ensemble's mean and variance by at most that.
        """
        finite_width = 1 / np.sqrt(width)
        return (
            k * (self.mean_se + finite_width),
            k * (self.paired_mean_se + finite_width),
            k * (self.variance_se + finite_width),
        )

    def agrees(self, width: int, k: float = 4.0) -> np.ndarray:
        """Per time: all three errors within :meth:`tolerances`."""
        mean_tol, paired_tol, variance_tol = self.tolerances(width, k)
        return (
            (self.mean_error <= mean_tol)
            & (self.paired_mean_error <= paired_tol)
            & (self.variance_error <= variance_tol)
        )


def dynamics_agreement(
    ensemble: EnsemblePredictions, prediction: AnalyticPrediction
) -> DynamicsAgreement:
    """Summarize how well a trained `ensemble` matches the analytic `prediction`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     stax.Dense(256), stax.Relu(), Frozen(stax.Dense(256)), stax.Relu(),
      ...     stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
      >>> y, x_test, ts = jnp.sin(x[:, :1]), x[:3] + 0.5, [0.5, jnp.inf]
      >>> p = analytic_prediction(kernel_fn, x, y, x_test, ts)
      >>> ens = train_ensemble(init_fn, apply_fn, x, y, x_test, ts,
      ...                      jax.random.PRNGKey(1), 8, p.ntk_train_train)
      >>> dynamics_agreement(ens, p).agrees(width=256).tolist()
      [True, True]
    """
    test = np.asarray(ensemble.test, np.float64)
    n_members = test.shape[0]
    if n_members < 2:
        raise ValueError("dynamics_agreement needs at least 2 members.")
    mean_an = np.asarray(prediction.mean, np.float64)
    var_an = np.broadcast_to(
        np.asarray(prediction.variance, np.float64)[..., None], mean_an.shape
    )
    residual = test - np.asarray(linearized_members(ensemble, prediction), np.float64)

    def norm(a):  # Frobenius norm over test points and outputs, per time
        return np.sqrt(np.sum(a**2, axis=(-2, -1)))

    def se_of_mean(draws):
        return np.sqrt(draws.var(0, ddof=1).sum(axis=(-2, -1)) / n_members)

    scale = np.sqrt(norm(mean_an) ** 2 + var_an.sum(axis=(-2, -1)))
    return DynamicsAgreement(
        ts=prediction.ts,
        n_members=n_members,
        mean_error=norm(test.mean(0) - mean_an) / scale,
        mean_se=se_of_mean(test) / scale,
        variance_error=norm(test.var(0, ddof=1) - var_an) / norm(var_an),
        variance_se=float(np.sqrt(2 / (n_members - 1))),
        paired_mean_error=norm(residual.mean(0)) / scale,
        paired_mean_se=se_of_mean(residual) / scale,
        residual_rms=np.sqrt(np.mean(norm(residual) ** 2, axis=0)) / scale,
    )


def compare_dynamics(
    init_fn: Callable,
    apply_fn: Callable,
    kernel_fn: Callable,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    ts: Sequence[float],
    key: jax.Array,
    n_members: int,
    learning_rate: float = 1.0,
    **train_kwargs,
) -> tuple[EnsemblePredictions, AnalyticPrediction, DynamicsAgreement]:
    """:func:`analytic_prediction`, :func:`train_ensemble` (steps chosen from
    the analytic NTK) and :func:`dynamics_agreement` for one network.

    `train_kwargs` go to :func:`train_ensemble` (`step_fraction`, `inf_tol`,
    `inf_step_fraction`, `member_batch_size`, `return_train`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nt_frozen import Frozen, stax
      >>> init_fn, apply_fn, kernel_fn = stax.serial(
      ...     Frozen(stax.Dense(128)), stax.Relu(), stax.Dense(1))
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
      >>> ens, p, agreement = compare_dynamics(
      ...     init_fn, apply_fn, kernel_fn, x, jnp.cos(x[:, :1]), x[:2], [1.0, 3.0],
      ...     jax.random.PRNGKey(1), n_members=4)
      >>> ens.test.shape, p.mean.shape, agreement.mean_error.shape
      ((4, 2, 2, 1), (2, 2, 1), (2,))
      >>> linearized_members(ens, p).shape
      (4, 2, 2, 1)
    """
    # Before the analytic kernels: a target that does not fit the network
    # (e.g. broadcast over outputs) fails now, not after the expensive work.
    check_targets(init_fn, apply_fn, x_train, y_train, x_test, "compare_dynamics")
    prediction = analytic_prediction(
        kernel_fn, x_train, y_train, x_test, ts, learning_rate
    )
    ensemble = train_ensemble(
        init_fn,
        apply_fn,
        x_train,
        y_train,
        x_test,
        ts,
        key,
        n_members,
        prediction.ntk_train_train,
        learning_rate,
        **train_kwargs,
    )
    return ensemble, prediction, dynamics_agreement(ensemble, prediction)
