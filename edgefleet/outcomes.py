"""Update failure reasons that the agent retries by itself, and so the server must not count yet.

An agent reports every failed update step as a ``failed`` event with a reason code
(docs/update-path.md lists them). Most codes are final for that bundle: a bad signature, a
hash that disagrees with TUF, a failed health check. A few are about the way there, not the
bundle: the agent keeps the assignment and tries again later (``retry_after_s``), and a later
attempt may well commit. The agent and the rollout core both read this one set, so a network
blip on one device cannot halt a rollout while the device is still trying, and the device
timeout still bounds how long the rollout waits for it.
"""

from __future__ import annotations

DOWNLOAD_FAILED = "download_failed"

RETRYABLE_REASONS: frozenset[str] = frozenset({DOWNLOAD_FAILED})


def is_retryable(reason: str) -> bool:
    """Whether a ``failed`` event with this reason code will be retried by the device itself."""
    return reason in RETRYABLE_REASONS
