"""Moved: the retryable reasons live in ``edgefleet.events`` with every other event name and reason.

This module only keeps ``from edgefleet.outcomes import is_retryable`` working for code not yet
switched over; import from ``edgefleet.events`` instead.
"""

from __future__ import annotations

from edgefleet.events import DOWNLOAD_FAILED, RETRYABLE_REASONS, is_retryable

__all__ = ["DOWNLOAD_FAILED", "RETRYABLE_REASONS", "is_retryable"]
