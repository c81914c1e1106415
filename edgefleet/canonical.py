"""Canonical JSON: the one byte form that is hashed and signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN. Two equal documents always give the
same bytes, which is what makes bundles reproducible and signatures checkable.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(document: Any) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def pretty_json(document: Any) -> bytes:
    """Stable, human-readable JSON (sorted keys, two-space indent, trailing newline)."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
