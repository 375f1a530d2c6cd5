"""nt-frozen: frozen (non-trainable) layers for infinite-width networks.

Import `nt` and `stax` from here (``from nt_frozen import nt, stax``): this
makes neural-tangents 0.6.5 work on current JAX without TensorFlow.
"""

from nt_frozen._compat import nt, stax
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
