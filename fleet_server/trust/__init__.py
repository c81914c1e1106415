"""The fleet server's trust layer: signing keys and the TUF repository that carries bundles.

``keys``      where the online and root keys live; ``init_keys``, ``KeyStore``
``tuf_repo``  ``TufRepository``: targets, snapshot, timestamp signed with python-tuf
``rotation``  ``rotate_root``, ``rotate_online_key``: new keys published in a new root
``errors``    ``TrustError`` and its subclasses

Broker credentials live beside it in ``fleet_server.broker.auth``. See docs/trust.md.
"""

from fleet_server.trust.errors import (
    BrokerAuthError,
    KeyStoreError,
    RepositoryError,
    ThresholdError,
    TrustError,
)
from fleet_server.trust.keys import (
    InitSummary,
    KeyStore,
    init_keys,
    load_root_signers,
)
from fleet_server.trust.rotation import rotate_online_key, rotate_root
from fleet_server.trust.tuf_repo import TargetInfo, TufRepository

__all__ = [
    "BrokerAuthError",
    "InitSummary",
    "KeyStore",
    "KeyStoreError",
    "RepositoryError",
    "TargetInfo",
    "ThresholdError",
    "TrustError",
    "TufRepository",
    "init_keys",
    "load_root_signers",
    "rotate_online_key",
    "rotate_root",
]
