"""The fleet server's TUF repository: every bundle is a TUF target, signed with python-tuf.

Layout under ``repo_dir`` (served read-only under ``/tuf/``, see docs/contracts.md)::

    metadata/1.root.json, 2.root.json, ...   every root version: clients walk the chain
    metadata/N.targets.json, N.snapshot.json consistent snapshots (never overwritten once published)
    metadata/timestamp.json                  the one moving pointer
    targets/NAME/<sha256>.NAME-VERSION.tar.gz  content-addressed target files
    .lock                                    fcntl lock shared by server replicas

Why a crash leaves a consistent repository: a change writes the target file, then the new
targets, then the new snapshot, each under a fresh versioned name, and replaces
``timestamp.json`` last (each write via ``edgefleet.atomic``). Until the timestamp moves,
clients see only the previous, complete snapshot; an orphan written before a crash is simply
overwritten by the next change, which reads the state the timestamp names.

Every operation takes an exclusive ``fcntl.flock`` on ``repo_dir/.lock`` and re-reads the
state from disk, so several replicas may share the directory (on a filesystem whose locks
work across them). Time comes from the injected ``clock``.

This module does not verify clients' downloads (``tuf.ngclient`` does that on the device),
does not use delegations or hashed bins (one targets role is plenty for a model registry),
and never sees root private keys except when ``publish_root`` is handed signers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgefleet.atomic import atomic_write_bytes, file_lock, fsync_dir
from fleet_server.trust.errors import RepositoryError, ThresholdError
from fleet_server.trust.keys import ONLINE_ROLES, KeyStore, load_root_signers, read_root_threshold

if TYPE_CHECKING:
    from securesystemslib.signer import Key, Signer  # type: ignore[attr-defined]  # public API, not re-exported for mypy
    from tuf.api.metadata import Metadata

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
LOCK_FILE = ".lock"

TIMESTAMP_EXPIRY = timedelta(days=1)
SNAPSHOT_EXPIRY = timedelta(days=7)
TARGETS_EXPIRY = timedelta(days=90)
ROOT_EXPIRY = timedelta(days=365)

_ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json\Z")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_target_path(target_path: str) -> str:
    """A target path is relative, '/'-separated, and each segment is a plain file name."""
    segments = target_path.split("/") if isinstance(target_path, str) else []
    if not segments or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise RepositoryError(f"target path {target_path!r} is not a plain relative path",
                              fix="use NAME/NAME-VERSION.tar.gz (letters, digits, '.', '_', '+', '-')")
    return target_path


@dataclass(frozen=True)
class TargetInfo:
    """One TUF target as the targets metadata lists it.

    Unpacks as ``sha256, length = info`` for callers that only need the pair.
    """

    path: str
    sha256: str
    length: int

    def __post_init__(self) -> None:
        check_target_path(self.path)
        if not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if self.length < 0:
            raise ValueError("length must not be negative")

    @property
    def stored_name(self) -> str:
        """The consistent-snapshot file name under targets/: ``<dir>/<sha256>.<basename>``."""
        head, _, base = self.path.rpartition("/")
        return f"{head}/{self.sha256}.{base}" if head else f"{self.sha256}.{base}"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.sha256, self.length))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "length": self.length}


def _info(path: str, target: Any) -> TargetInfo:
    return TargetInfo(path, str(target.hashes["sha256"]), int(target.length))


class TufRepository:
    """A TUF repository on disk, signed with the online keys of a ``KeyStore``."""

    def __init__(
        self,
        repo_dir: Path,
        keys: KeyStore,
        clock: Callable[[], datetime] = utcnow,
        *,
        timestamp_expiry: timedelta = TIMESTAMP_EXPIRY,
        snapshot_expiry: timedelta = SNAPSHOT_EXPIRY,
        targets_expiry: timedelta = TARGETS_EXPIRY,
        root_expiry: timedelta = ROOT_EXPIRY,
    ) -> None:
        for name, value in (("timestamp", timestamp_expiry), ("snapshot", snapshot_expiry),
                            ("targets", targets_expiry), ("root", root_expiry)):
            if value <= timedelta(0):
                raise ValueError(f"{name}_expiry must be positive")
        self.repo_dir = Path(repo_dir)
        self.keys = keys
        self.clock = clock
        self.expiry = {"timestamp": timestamp_expiry, "snapshot": snapshot_expiry,
                       "targets": targets_expiry, "root": root_expiry}

    # ----------------------------------------------------------------- layout

    @property
    def metadata_dir(self) -> Path:
        return self.repo_dir / METADATA_DIR

    @property
    def targets_dir(self) -> Path:
        return self.repo_dir / TARGETS_DIR

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False, shared: bool = False) -> Iterator[None]:
        """Hold the repository lock (``shared`` for readers); disk failures inside become ``RepositoryError``."""
        if not create and not self.repo_dir.is_dir():
            raise RepositoryError(f"TUF repository {self.repo_dir} is missing",
                                  fix="create it first (`edgefleet keys init`), or check --data-dir")
        try:
            self.repo_dir.mkdir(parents=True, exist_ok=True)
            with file_lock(self.repo_dir / LOCK_FILE, shared=shared):
                yield
        except OSError as exc:
            raise RepositoryError(f"TUF repository {self.repo_dir}: {exc}",
                                  fix="check that the repository directory is writable and has space") from exc

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise RepositoryError("the repository clock returned a naive datetime", fix="return datetime.now(UTC)")
        return now.astimezone(UTC).replace(microsecond=0)

    # --------------------------------------------------------- read and write

    def _read(self, filename: str) -> Metadata[Any]:
        from tuf.api.metadata import Metadata
        from tuf.api.serialization import DeserializationError

        path = self.metadata_dir / filename
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as exc:
            raise RepositoryError(f"TUF metadata {path} is missing",
                                  fix="create it first (`edgefleet keys init`)") from exc
        except DeserializationError as exc:
            raise RepositoryError(f"TUF metadata {path} is corrupt: {exc}",
                                  fix="restore the metadata directory from backup") from exc

    def _write(self, md: Metadata[Any], filename: str) -> None:
        from tuf.api.serialization.json import JSONSerializer

        atomic_write_bytes(self.metadata_dir / filename, md.to_bytes(JSONSerializer(compact=False)))

    def _signer(self, role: str) -> Signer:
        """The signer for ``role``, checked against the newest root.

        After another replica rotated an online key (``rotation.rotate_online_key``) this one still
        holds the old key in memory; signing with it would publish metadata every updated
        client rejects, so reload the key store from disk once, and refuse if that is stale too.
        """
        allowed = self._read(f"{self._root_version()}.root.json").signed.roles[role].keyids
        signer = self.keys.signer(role)
        if signer.public_key.keyid not in allowed and self.keys.keys_dir is not None:
            self.keys = KeyStore.load(self.keys.keys_dir)
            signer = self.keys.signer(role)
        if signer.public_key.keyid not in allowed:
            raise RepositoryError(
                f"the {role} key {signer.public_key.keyid[:12]}... is not one root v{self._root_version()} names",
                fix=f"install the current {role}.pem in the key directory (a rotation may be half-finished: rerun it)")
        return signer

    def _sign(self, md: Metadata[Any], role: str) -> None:
        from tuf.api.exceptions import UnsignedMetadataError

        try:
            md.sign(self._signer(role))
        except UnsignedMetadataError as exc:
            raise RepositoryError(f"cannot sign {role} metadata: {exc}") from exc

    def _root_versions(self) -> list[int]:
        if not self.metadata_dir.is_dir():
            return []
        found = (_ROOT_FILE.match(p.name) for p in self.metadata_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _root_version(self) -> int:
        versions = self._root_versions()
        if not versions:
            raise RepositoryError(f"no root metadata in {self.metadata_dir}",
                                  fix="create it first (`edgefleet keys init`)")
        return versions[-1]

    def _current(self) -> tuple[Metadata[Any], Metadata[Any], Metadata[Any]]:
        """The published (timestamp, snapshot, targets): what the timestamp points at."""
        timestamp = self._read("timestamp.json")
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise RepositoryError("snapshot metadata does not list targets.json", fix="restore from backup")
        return timestamp, snapshot, self._read(f"{targets_meta.version}.targets.json")

    def _publish(self, now: datetime, timestamp: Metadata[Any], snapshot: Metadata[Any],
                 targets: Metadata[Any] | None) -> None:
        """Bump and sign ``targets`` (if given), then snapshot, then timestamp, in that order."""
        from tuf.api.metadata import MetaFile  # type: ignore[attr-defined]  # public API, not re-exported for mypy

        if targets is not None:
            targets.signed.version += 1
            targets.signed.expires = now + self.expiry["targets"]
            self._sign(targets, "targets")
            self._write(targets, f"{targets.signed.version}.targets.json")
            snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        snapshot.signed.version += 1
        snapshot.signed.expires = now + self.expiry["snapshot"]
        self._sign(snapshot, "snapshot")
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._publish_timestamp(now, timestamp)

    def _publish_timestamp(self, now: datetime, timestamp: Metadata[Any]) -> None:
        timestamp.signed.version += 1
        timestamp.signed.expires = now + self.expiry["timestamp"]
        self._sign(timestamp, "timestamp")
        # The commit point: until this rename, clients see the previous consistent snapshot.
        self._write(timestamp, "timestamp.json")

    # ---------------------------------------------------------------- create

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys: KeyStore,
        root_keys_dir: Path,
        *,
        clock: Callable[[], datetime] = utcnow,
        root_threshold: int | None = None,
        **expiries: timedelta,
    ) -> TufRepository:
        """Write root v1 (signed by every root key in ``root_keys_dir``), targets, snapshot, timestamp.

        ``root_threshold`` defaults to the one ``init_keys`` recorded, else 1. Refuses to touch
        a directory that already holds metadata. ``expiries`` are the constructor's ``*_expiry``.
        """
        from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp  # type: ignore[attr-defined]  # public API, not re-exported for mypy

        repo = cls(repo_dir, keys, clock, **expiries)
        root_signers = load_root_signers(root_keys_dir)
        if not root_signers:
            raise RepositoryError(f"no root keys (*.pem) in {root_keys_dir}",
                                  fix="run `edgefleet keys init` first, or mount the root key media")
        threshold = root_threshold or read_root_threshold(root_keys_dir) or 1
        if threshold > len(root_signers):
            raise ThresholdError(f"root threshold {threshold} needs more keys than the {len(root_signers)} found",
                                 fix="mount every root key, or lower the threshold")
        with repo._locked(create=True):
            if repo.metadata_dir.is_dir() and any(repo.metadata_dir.glob("*.json")):
                raise RepositoryError(f"{repo.metadata_dir} already holds TUF metadata; refusing to overwrite it",
                                      fix="open the existing repository with TufRepository(repo_dir, keys)")
            now = repo._now()
            root = Root(expires=now + repo.expiry["root"], consistent_snapshot=True)
            for signer in root_signers:
                root.add_key(signer.public_key, "root")
            root.roles["root"].threshold = threshold
            for role in ONLINE_ROLES:
                root.add_key(keys.public_key(role), role)
            root_md = Metadata(root)
            for signer in root_signers:
                root_md.sign(signer, append=True)
            repo._write(root_md, "1.root.json")
            targets = Metadata(Targets(version=1, expires=now + repo.expiry["targets"]))
            repo._sign(targets, "targets")
            repo._write(targets, "1.targets.json")
            snapshot = Metadata(Snapshot(version=1, expires=now + repo.expiry["snapshot"],
                                         meta={"targets.json": MetaFile(version=1)}))
            repo._sign(snapshot, "snapshot")
            repo._write(snapshot, "1.snapshot.json")
            timestamp = Metadata(Timestamp(version=1, expires=now + repo.expiry["timestamp"],
                                           snapshot_meta=MetaFile(version=1)))
            repo._sign(timestamp, "timestamp")
            repo._write(timestamp, "timestamp.json")
            repo.targets_dir.mkdir(parents=True, exist_ok=True)
        return repo

    # --------------------------------------------------------------- targets

    def _store(self, target_path: str, source: IO[bytes]) -> TargetInfo:
        """Copy ``source`` under its consistent-snapshot name, hashing in the same pass."""
        head, _, base = target_path.rpartition("/")
        directory = self.targets_dir / head if head else self.targets_dir
        directory.mkdir(parents=True, exist_ok=True)
        digest, length = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            info = TargetInfo(target_path, digest.hexdigest(), length)
            os.replace(tmp, self.targets_dir / info.stored_name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)
        return info

    def add_target(self, target_path: str, data: Path | bytes) -> TargetInfo:
        """Publish ``data`` (a file or bytes) as target ``target_path`` and return its info.

        Re-adding identical content is a no-op; new content for an existing path replaces
        the entry (the old file stays, so clients on the previous snapshot still find it).
        """
        from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]  # public API, not re-exported for mypy

        check_target_path(target_path)
        with self._locked():
            with (open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)) as source:
                info = self._store(target_path, source)
            timestamp, snapshot, targets = self._current()
            listed = targets.signed.targets.get(target_path)
            if listed is not None and _info(target_path, listed) == info:
                return info
            targets.signed.targets[target_path] = TargetFile(info.length, {"sha256": info.sha256}, target_path)
            self._publish(self._now(), timestamp, snapshot, targets)
            return info

    def target_info(self, target_path: str) -> TargetInfo | None:
        """The published info of one target, or None if the targets metadata does not list it."""
        with self._locked(shared=True):
            _, _, targets = self._current()
        listed = targets.signed.targets.get(target_path)
        return None if listed is None else _info(target_path, listed)

    def targets(self) -> list[TargetInfo]:
        """Every published target, sorted by path."""
        with self._locked(shared=True):
            _, _, targets = self._current()
        return [_info(p, t) for p, t in sorted(targets.signed.targets.items())]

    # -------------------------------------------------------------- freshness

    def refresh_timestamp(self, *, min_remaining: timedelta) -> bool:
        """Re-sign what expires within ``min_remaining``; True if anything was re-signed.

        A re-signed targets forces a new snapshot, and a new snapshot a new timestamp
        (each names the version of the one below). Root is not touched: its keys are offline.
        """
        with self._locked():
            now = self._now()
            timestamp, snapshot, targets = self._current()

            def due(md: Metadata[Any]) -> bool:
                return bool(md.signed.expires - now < min_remaining)

            targets_due = due(targets)
            if not (targets_due or due(snapshot) or due(timestamp)):
                return False
            if due(snapshot) or targets_due:
                self._publish(now, timestamp, snapshot, targets if targets_due else None)
            else:
                self._publish_timestamp(now, timestamp)
            return True

    def expires(self) -> dict[str, datetime]:
        """When each published role expires (root included, so the server can warn about it)."""
        with self._locked(shared=True):
            timestamp, snapshot, targets = self._current()
            root = self._read(f"{self._root_version()}.root.json")
        return {"root": root.signed.expires, "targets": targets.signed.expires,
                "snapshot": snapshot.signed.expires, "timestamp": timestamp.signed.expires}

    # ------------------------------------------------------------------ root

    def root_json(self) -> bytes:
        """The bytes of the newest root: what enrollment hands a device as its trust anchor."""
        with self._locked(shared=True):
            return (self.metadata_dir / f"{self._root_version()}.root.json").read_bytes()

    def root_version(self) -> int:
        with self._locked(shared=True):
            return self._root_version()

    def role_keyids(self, role: str) -> tuple[list[str], int]:
        """The key ids and threshold the newest root gives ``role``."""
        with self._locked(shared=True):
            root = self._read(f"{self._root_version()}.root.json")
        if role not in root.signed.roles:
            raise RepositoryError(f"unknown TUF role {role!r}", fix="use root, targets, snapshot or timestamp")
        entry = root.signed.roles[role]
        return list(entry.keyids), int(entry.threshold)

    def root_keyids(self) -> tuple[list[str], int]:
        """The current root role's key ids and threshold."""
        return self.role_keyids("root")

    def publish_root(self, new_keys: Sequence[Key] | None, threshold: int | None, *,
                     old_signers: Sequence[Signer], new_signers: Sequence[Signer] = (),
                     role_keys: Mapping[str, Key] | None = None) -> int:
        """Publish root N+1 and return N+1.

        ``new_keys``/``threshold`` replace the root role (None keeps it); ``role_keys`` replaces
        the single key of online roles. Root N+1 must verify with root N's threshold (so
        clients trust it) and with its own (TUF client workflow 5.3.5 checks both); otherwise
        nothing is written. Use ``rotation.rotate_root`` / ``rotation.rotate_online_key``.
        """
        from tuf.api.exceptions import UnsignedMetadataError
        from tuf.api.metadata import Metadata

        if new_keys is not None and (not new_keys or threshold is None or not 1 <= threshold <= len(new_keys)):
            raise ThresholdError(f"root threshold {threshold} of {len(new_keys)} keys is impossible",
                                 fix="use 1 <= threshold <= key count")
        for role in role_keys or {}:
            if role not in ONLINE_ROLES:
                raise RepositoryError(f"cannot swap the key of role {role!r} this way",
                                      fix=f"role_keys is for {', '.join(ONLINE_ROLES)}; root keys go in new_keys")
        with self._locked():
            version = self._root_version()
            current = self._read(f"{version}.root.json")
            new: Metadata[Any] = Metadata.from_bytes(current.to_bytes())
            root = new.signed
            swaps: list[tuple[str, Sequence[Key]]] = [(r, [k]) for r, k in sorted((role_keys or {}).items())]
            if new_keys is not None:
                swaps.append(("root", new_keys))
            for role, keys in swaps:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                for key in keys:
                    root.add_key(key, role)
            if new_keys is not None and threshold is not None:
                root.roles["root"].threshold = threshold
            root.version = version + 1
            root.expires = self._now() + self.expiry["root"]
            new.signatures.clear()
            for signer in [*old_signers, *new_signers]:
                new.sign(signer, append=True)
            try:
                current.signed.verify_delegate("root", new.signed_bytes, new.signatures)
                root.verify_delegate("root", new.signed_bytes, new.signatures)
            except UnsignedMetadataError as exc:
                raise ThresholdError(f"root v{version + 1} would not verify: {exc}",
                                     fix="provide enough of the current root keys and all the new ones") from exc
            self._write(new, f"{version + 1}.root.json")
            return version + 1

    def resign(self, role: str) -> None:
        """Sign ``role`` anew (and everything that names it), e.g. after its key was rotated."""
        if role not in ONLINE_ROLES:
            raise RepositoryError(f"only online roles can be re-signed, not {role!r}")
        with self._locked():
            timestamp, snapshot, targets = self._current()
            now = self._now()
            if role == "timestamp":
                self._publish_timestamp(now, timestamp)
            else:
                self._publish(now, timestamp, snapshot, targets if role == "targets" else None)
