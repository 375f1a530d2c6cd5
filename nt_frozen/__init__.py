"""nt-frozen: frozen (non-trainable) layers for infinite-width networks.

Import `nt` and `stax` from here (``from nt_frozen import nt, stax``): this
makes neural-tangents 0.6.5 work on current JAX without TensorFlow.
"""

from nt_frozen._compat import load_neural_tangents

nt = load_neural_tangents()
stax = nt.stax

from nt_frozen.frozen import Frozen, is_frozen_layer, propagate_ntk_linearly  # noqa: E402
from nt_frozen.params import FrozenParams, freeze_params, frozen_values, is_frozen  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Frozen",
    "FrozenParams",
    "freeze_params",
    "frozen_values",
    "is_frozen",
    "is_frozen_layer",
    "nt",
    "propagate_ntk_linearly",
    "stax",
]
