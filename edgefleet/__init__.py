"""edgefleet core: the contracts every part of edgefleet shares.

Bundle manifest and reader, signed assignments, MQTT topics, firmware profiles, version
rules and the exception base. Imports nothing heavy: the device install builds on it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgefleet.errors import (
    AssignmentError,
    BundleError,
    EdgefleetError,
    ManifestError,
    ProfileError,
    VersionError,
)

__all__ = [
    "AssignmentError",
    "BundleError",
    "EdgefleetError",
    "ManifestError",
    "ProfileError",
    "VersionError",
    "__version__",
]
