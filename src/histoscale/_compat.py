"""Deprecation path for renamed keywords: the old name still works for one release, with a warning."""

from __future__ import annotations

import warnings
from typing import Any

from histoscale.errors import ConfigError

__all__ = ["renamed"]


def renamed(func: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of keyword ``new``, taking a deprecated ``old`` keyword's value if that one was given."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(f"{func}: give {new}= only ({old}= is its deprecated name)")
    warnings.warn(f"{func}({old}=...) is deprecated: use {new}=...", DeprecationWarning, stacklevel=3)
    return old_value
