"""Errors of the fleet server's trust layer (TUF repository, signing keys, broker credentials).

    EdgefleetError                      (edgefleet.errors)
    └── TrustError                      base of everything below
        ├── KeyStoreError               a key file is missing, unreadable, too open, or would be overwritten
        ├── RepositoryError             the TUF repository is missing, inconsistent, or cannot be signed
        │   └── ThresholdError          too few root keys to meet a root threshold
        └── BrokerAuthError             broker password/ACL files cannot be rendered, written or reloaded

Foreign exceptions (cryptography, securesystemslib, tuf, OSError) are wrapped where they
enter with ``raise ... from e`` so callers need one ``except TrustError``.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class TrustError(EdgefleetError):
    """Base of every error the trust layer raises on purpose."""


class KeyStoreError(TrustError):
    """A signing key is missing, unreadable, too widely readable, or would be overwritten."""


class RepositoryError(TrustError):
    """The TUF repository is missing, inconsistent, or cannot be (re)signed."""


class ThresholdError(RepositoryError):
    """Fewer root keys are available than a root threshold needs."""


class BrokerAuthError(TrustError):
    """Broker credentials or ACL cannot be rendered, written or reloaded."""
