"""Old module paths that still import, with a deprecation warning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def forward(old: str, new: str, namespace: dict[str, Any]) -> None:
    """Fill the old module's `namespace` with the public names of `new`."""
    warnings.warn(
        f"{old} is now {new}; import from there ({old} will be removed).",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    public = [k for k in vars(module) if not k.startswith("_")]
    names = getattr(module, "__all__", public)
    namespace.update({k: getattr(module, k) for k in names})
