"""The ``wheelbucket`` logger and the helpers that must never raise."""

from __future__ import annotations

import logging
import reprlib

__all__ = ["logger", "safe_repr"]

logger = logging.getLogger("wheelbucket")

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def safe_repr(obj: object) -> str:
    """A short repr that survives objects whose ``__repr__`` raises."""
    try:
        return _repr.repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object (repr failed)>"
