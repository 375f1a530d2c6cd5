"""`neural_tangents.stax`, with two silent mistakes of NT's turned into errors.

Every public name of `neural_tangents.stax` is here (``from nt_frozen import
stax``). The layer constructors return NT's own layers, with

- a `kernel_fn` that checks `get` before any work: NT's computes the whole
  kernel and then fails with a bare `KeyError` on a typo such as `"ntkk"`;
  here a ValueError names the value and the valid names;
- for `serial` and `parallel`, an `apply_fn` that requires one entry of
  `params` per layer: NT's zips layers with entries, so the parameters of a
  shallower network run through a deeper one without an error (its last
  layers skipped, a wrong output and a wrong empirical kernel).

Everything else (enums, `Slice`, the decorators `layer`, `requires`, ...) is
NT's object itself. Layers made with `neural_tangents.stax` directly (or
`nt_frozen.nt.stax`) keep NT's behaviour: the guards live here only.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from nt_frozen import stax
  >>> layers = (stax.Dense(8), stax.Relu(), stax.Dense(1))
  >>> init_fn, apply_fn, kernel_fn = stax.serial(*layers)
  >>> kernel_fn(jnp.ones((2, 3)), None, "ntk").shape
  (2, 2)
  >>> shallow_init = stax.serial(*layers[:2])[0]
  >>> _, shallow = shallow_init(jax.random.PRNGKey(0), (2, 3))
  >>> apply_fn(shallow, jnp.ones((2, 3)))  # doctest: +ELLIPSIS
  Traceback (most recent call last):
    ...
  ValueError: serial apply_fn: params has 2 entries, but the network has 3 layers; ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from nt_frozen._compat import stax as _nt_stax
from nt_frozen._stax_utils import (
    checked_entries_apply_fn,
    checked_get_kernel_fn,
    is_nt_layer,
)

# Decorators for writing layers, not layers: NT's own objects.
_NOT_CONSTRUCTORS = {"layer", "requires", "supports_masking", "unmask_fn"}
# Combinators that zip their `*layers` with the entries of `params`.
_ZIPPING = {"serial", "parallel"}


def _checked_constructor(constructor: Callable) -> Callable:
    name = constructor.__name__

    @functools.wraps(constructor)
    def checked(*args, **kwargs):
        made = constructor(*args, **kwargs)
        if not is_nt_layer(made):
            return made
        init_fn, apply_fn, kernel_fn = made
        if name in _ZIPPING:
            apply_fn = checked_entries_apply_fn(apply_fn, len(args), name)
        return init_fn, apply_fn, checked_get_kernel_fn(kernel_fn, name)

    return checked


__all__ = sorted(n for n in dir(_nt_stax) if not n.startswith("_"))
for _name in __all__:
    _value = getattr(_nt_stax, _name)
    if inspect.isfunction(_value) and _name not in _NOT_CONSTRUCTORS:
        _value = _checked_constructor(_value)
    globals()[_name] = _value
del _name, _value


def __getattr__(name: str) -> Any:
    # Names NT may add later, unchecked (and what mypy sees for every name).
    return getattr(_nt_stax, name)
