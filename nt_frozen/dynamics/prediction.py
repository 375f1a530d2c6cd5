"""The infinite-width prediction of training: `nt.predict` with the
analytic NNGP and (frozen, rated) NTK, for the ensemble and per member."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import nt
from nt_frozen._stax_utils import ArrayLike
from nt_frozen.checks import check_targets
from nt_frozen.dynamics.training import EnsemblePredictions


class AnalyticPrediction(NamedTuple):
    """`nt.predict` mean and marginal variance of test outputs at each time,
    with the kernels and training settings it came from.

    Example:
      >>> from nt_frozen.dynamics import analytic_prediction
      >>> from nt_frozen.dynamics.tasks import sphere_regression
      >>> from nt_frozen.networks import three_layer_mlp
      >>> _, _, kernel_fn = three_layer_mlp(32, (False, True, False))
      >>> x, y, x_test = sphere_regression(n_train=4, n_test=2)
      >>> p = analytic_prediction(kernel_fn, x, y[:, :1], x_test, [0.5, 2.0])
      >>> p.mean.shape, p.variance.shape  # (times, test points[, outputs])
      ((2, 2, 1), (2, 2))
    """

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
    array shaped like `ensemble.test`.

    Example (members whose outputs start at 0 follow the analytic mean):
      >>> import numpy as np
      >>> from nt_frozen.dynamics import EnsemblePredictions, analytic_prediction
      >>> from nt_frozen.dynamics.tasks import sphere_regression
      >>> from nt_frozen.networks import three_layer_mlp
      >>> _, _, kernel_fn = three_layer_mlp(32, (False, True, False))
      >>> x, y, x_test = sphere_regression(n_train=4, n_test=2)
      >>> p = analytic_prediction(kernel_fn, x, y[:, :1], x_test, [0.5, 2.0])
      >>> zeros = EnsemblePredictions(p.ts, np.zeros((3, 2, 2, 1)), None,
      ...     np.zeros((3, 2, 1)), np.zeros((3, 4, 1)), None)
      >>> members = linearized_members(zeros, p)
      >>> members.shape, bool(np.allclose(members, p.mean, atol=1e-6))
      ((3, 2, 2, 1), True)
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
