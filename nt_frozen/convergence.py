"""Deprecated: moved to `nt_frozen.validation.statistics`."""

from nt_frozen._moved import forward

forward(__name__, "nt_frozen.validation.statistics", globals())
