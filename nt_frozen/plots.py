"""Deprecated: moved to `nt_frozen.validation.report`."""

from nt_frozen._moved import forward

forward(__name__, "nt_frozen.validation.report", globals())
