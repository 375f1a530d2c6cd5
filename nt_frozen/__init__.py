"""nt-frozen: frozen (non-trainable) layers for infinite-width networks.

Import `nt` and `stax` from here (``from nt_frozen import nt, stax``, or
``import nt_frozen`` before ``import neural_tangents``): this makes
neural-tangents 0.6.5 work on current JAX without TensorFlow.

Layers (wrap any `stax` layer or combinator):
  Frozen: the layer's parameters do not train; exact analytic NTK.
  LearningRate: the layer trains at `rate` times the base learning rate.

Finite-width kernels (trainable parameters only; fastest exact path by default):
  empirical_ntk_fn: the empirical NTK, NT's arguments.
  empirical_kernel_fn: empirical NNGP and NTK.
  monte_carlo_kernel_fn: Monte Carlo average over random networks.

Layer-wise NTK:
  ntk_decomposition: each layer's (or group's) analytic NTK contribution.
  empirical_ntk_decomposition: the same blocks at finite width.

Parameters (trainable vs frozen, for optax):
  split / merge: trainable and frozen halves, and back.
  labels, trainable_mask, frozen_mask: for `optax.multi_transform` / masks.
  freeze_like: mark pretrained parameters as a frozen network's.
  check_params: check parameters against the network, naming what differs.
  learning_rates, scale_by_learning_rates: per-leaf rates, and for optax.

Training dynamics (`nt_frozen.dynamics`):
  compare_dynamics: train finite ensembles and compare with `nt.predict`.
  train_ensemble, analytic_prediction, dynamics_agreement: its parts.

Command line: ``nt-frozen validate`` (`nt_frozen.validation`) checks the
analytic frozen NTK against finite networks on this machine.

Example:
  >>> import jax
  >>> from nt_frozen import Frozen, empirical_ntk_fn, stax
  >>> init_fn, apply_fn, kernel_fn = stax.serial(
  ...     stax.Dense(64), stax.Relu(), Frozen(stax.Dense(64)), stax.Relu(),
  ...     stax.Dense(1))
  >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  >>> _, params = init_fn(jax.random.PRNGKey(1), x.shape)
  >>> empirical_ntk_fn(apply_fn)(x, None, params).shape
  (3, 3)
  >>> kernel_fn(x, None, "ntk").shape
  (3, 3)
"""

from nt_frozen import stax
from nt_frozen._compat import nt
from nt_frozen.checks import check_params
from nt_frozen.decomposition import (
    empirical_ntk_decomposition,
    ntk_decomposition,
)
from nt_frozen.dynamics import (
    analytic_prediction,
    compare_dynamics,
    dynamics_agreement,
    gd_schedule,
    linearized_members,
    stiffest_mode_time,
    train_ensemble,
)
from nt_frozen.empirical import (
    empirical_kernel_fn,
    empirical_ntk_fn,
    monte_carlo_kernel_fn,
)
from nt_frozen.frozen import Frozen, is_frozen_layer, propagate_ntk_linearly
from nt_frozen.kernels import kernel_matrix, kernel_regression
from nt_frozen.params import (
    FrozenParams,
    freeze_like,
    freeze_params,
    frozen_mask,
    frozen_values,
    is_frozen,
    labels,
    merge,
    split,
    trainable_mask,
    unfreeze,
)
from nt_frozen.rates import (
    LearningRate,
    RatedParams,
    apply_learning_rates,
    is_rated,
    learning_rates,
    rate_params,
    rated_values,
    scale_by_learning_rates,
    weight_jacobians,
)

__version__ = "0.1.0"

__all__ = [
    "analytic_prediction",
    "compare_dynamics",
    "dynamics_agreement",
    "gd_schedule",
    "linearized_members",
    "stiffest_mode_time",
    "train_ensemble",
    "Frozen",
    "FrozenParams",
    "check_params",
    "empirical_kernel_fn",
    "empirical_ntk_decomposition",
    "empirical_ntk_fn",
    "freeze_like",
    "frozen_mask",
    "labels",
    "merge",
    "monte_carlo_kernel_fn",
    "split",
    "trainable_mask",
    "unfreeze",
    "freeze_params",
    "frozen_values",
    "is_frozen",
    "is_frozen_layer",
    "kernel_matrix",
    "kernel_regression",
    "nt",
    "ntk_decomposition",
    "propagate_ntk_linearly",
    "stax",
    # Per-layer learning rates (nt_frozen.rates).
    "LearningRate",
    "RatedParams",
    "apply_learning_rates",
    "is_rated",
    "learning_rates",
    "rate_params",
    "rated_values",
    "scale_by_learning_rates",
    "weight_jacobians",
]
