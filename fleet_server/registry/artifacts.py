"""Where the fleet server keeps uploaded artifacts (bundles, conversion reports) by key.

``ArtifactStore`` is the seam: four methods, keys are '/'-separated relative names such as
``digits/digits-1.2.0.tar.gz``. ``LocalArtifactStore`` is the default, a directory on disk
with atomic puts (temp file, fsync, rename), so a reader never sees half a bundle.

An S3-compatible store (MinIO, Ceph RGW, AWS S3) can implement the same protocol later:
``put`` = a single PutObject (atomic on S3), ``open`` = GetObject's streaming body,
``exists`` = HeadObject, and ``path`` returns None because objects have no local path (so
callers needing a file must stream ``open`` into a temporary one). Nothing here talks to a
network, and the TUF repository's target files are NOT stored here: TUF names them by hash
under its own directory (fleet_server.trust.tuf_repo).

    EdgefleetError
    └── ArtifactError              base of this module's errors
        ├── ArtifactKeyError       a key is not a plain relative name
        └── ArtifactNotFoundError  no artifact under that key
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from edgefleet.atomic import atomic_copy
from edgefleet.errors import EdgefleetError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


class ArtifactError(EdgefleetError):
    """An artifact cannot be stored or read."""


class ArtifactKeyError(ArtifactError, ValueError):
    """A key is not a plain relative name."""


class ArtifactNotFoundError(ArtifactError, KeyError):
    """No artifact is stored under a key."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0] if self.args else ""


def check_key(key: str) -> str:
    """Keys are relative '/'-separated names; each segment starts with a letter or digit."""
    segments = key.split("/") if isinstance(key, str) else []
    if not segments or any(not _SEGMENT.match(s) for s in segments):
        raise ArtifactKeyError(f"artifact key {key!r} is not a plain relative name",
                               fix="use names like NAME/NAME-VERSION.tar.gz (letters, digits, '.', '_', '+', '-')")
    return key


@runtime_checkable
class ArtifactStore(Protocol):
    """Stores immutable artifacts by key."""

    def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``, replacing any previous artifact atomically."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the artifact for reading; raise ``ArtifactNotFoundError`` if absent."""
        ...

    def exists(self, key: str) -> bool:
        ...

    def path(self, key: str) -> Path | None:
        """A local file holding the artifact, if the store has one (None otherwise or if absent)."""
        ...


class LocalArtifactStore:
    """An ``ArtifactStore`` in a local directory (``data_dir/artifacts``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: Path) -> None:
        target = self._file(key)
        try:
            atomic_copy(source, target)
        except FileNotFoundError as exc:
            raise ArtifactError(f"cannot store {key}: source {source} does not exist",
                                fix="pass the path of an existing file") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot store {key} in {self.root}: {exc.strerror}",
                                fix="check that the artifact directory is writable and has space") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self._file(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ArtifactNotFoundError(f"no artifact {key!r} in {self.root}",
                                        fix="upload it first (edgefleet models push)") from exc

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def path(self, key: str) -> Path | None:
        file = self._file(key)
        return file if file.is_file() else None
