"""JAX internals nt_frozen itself reads: jaxpr equations (the structured
empirical path), whether JAX has started its backends (the CLI), and the
tracing settings a compiled program depends on (the kernels' program cache).

Each answers a change between JAX releases, so that supporting a new JAX is a
change in `nt_frozen._compat` only. Nothing here imports NT.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def bind_equation(primitive, params: dict, operands) -> Any:
    """`primitive` applied to `operands` as `jax.core.eval_jaxpr` binds it."""
    bind_params = primitive.get_bind_params(params)
    # jax < 0.4.36 returns (subfuns, params); newer JAX the params only.
    subfuns, bind_params = (
        bind_params if isinstance(bind_params, tuple) else ((), bind_params)
    )
    return primitive.bind(*subfuns, *operands, **bind_params)


def scan_counts(params: dict) -> tuple[int, int]:
    """`(num_consts, num_carry)` of a `scan` equation's params."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    # jax 0.12 replaced the counts by `ft_in`, the FlatTree structure of
    # (consts, carry, xs).
    consts, carry, _ = params["ft_in"].unpack()
    return len(list(consts.vals)), len(list(carry.vals))


def backends_are_initialized() -> bool:
    """Whether JAX has started its backends (and XLA has read its flags).

    JAX has no public name for it; where the private one is missing, this
    says True (assume they started: too late to set XLA flags).

    Example:
      >>> isinstance(backends_are_initialized(), bool)
      True
    """
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - depends on jax's internals
        return True
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def tracing_config() -> Any:
    """A hashable value of JAX's settings that change a traced program (what
    `jax.jit` keys its cache on, x64 among them).

    JAX has no public name for it; where the private one is missing, the
    x64 setting alone stands in.

    Example:
      >>> hash(tracing_config()) is not None
      True
    """
    try:
        from jax._src.config import trace_context
    except ImportError:  # pragma: no cover - depends on jax's internals
        trace_context = None
    if trace_context is None:
        return str(jax.dtypes.canonicalize_dtype(np.float64))
    return trace_context()
