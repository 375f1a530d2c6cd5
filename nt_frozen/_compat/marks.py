"""Marks on what the compatibility layer installs, and module views.

Every object `nt_frozen._compat` installs is marked, so that a second load
finds it and wraps nothing twice. NT's modules are given views of JAX or SciPy
modules with a few names replaced (:func:`module_view`), never the modules
themselves changed.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

# Set on every object the compatibility layer installs, so that loading twice
# is a no-op.
_MARK = "__nt_frozen_patch__"


def marked(obj):
    setattr(obj, _MARK, True)
    return obj


def is_marked(obj) -> bool:
    return getattr(obj, _MARK, False) is True


class _ModuleView(types.ModuleType):
    """`module` with some names replaced; every other name is read from it."""

    def __init__(self, module: types.ModuleType, replaced: dict):
        super().__init__(module.__name__, module.__doc__)
        self.__dict__.update(replaced, _module=module)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_module"], name)


def module_view(module: types.ModuleType, **replaced) -> types.ModuleType:
    return marked(_ModuleView(module, replaced))


def set_missing(obj, name: str, value) -> None:
    if not hasattr(obj, name):
        setattr(obj, name, value)


def nt_module(name: str) -> Any:
    """One of NT's modules, to read and patch: NT is untyped, so is this."""
    return importlib.import_module(name)
