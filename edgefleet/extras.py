"""Friendly failures when an optional dependency (an install extra) is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgefleet.errors import EdgefleetError


class MissingExtraError(EdgefleetError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or explain which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed",
            fix=f"pip install 'edgefleet[{extra}]'",
        ) from exc
