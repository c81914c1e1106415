"""The model registry: validated bundles in, TUF targets and database rows out.

``Registry.push`` is the one way a model version enters the fleet: the bytes pass
``edgefleet.bundle.verify_bundle`` (manifest schema, every member's hash), a name+version can
hold one set of bytes forever (a second upload with different bytes is a conflict, the same
bytes again are an idempotent success), the archive is kept in the ``ArtifactStore`` and
published as TUF target ``NAME/NAME-VERSION.tar.gz``. Yanking marks a version so it can never
be assigned again; its target stays published, because devices already running it must still
be able to verify it.

This module does not sign anything itself (``TufRepository`` does), and knows nothing of HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from edgefleet.bundle import bundle_filename, verify_bundle
from edgefleet.errors import BundleError
from edgefleet.profiles import profile_names
from edgefleet.version import ModelVersion
from fleet_server.db import Database
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.tables import ModelRow


class Published(Protocol):
    @property
    def sha256(self) -> str: ...


class TargetPublisher(Protocol):
    """The slice of ``fleet_server.trust.tuf_repo.TufRepository`` the registry uses."""

    def add_target(self, target_path: str, data: Path | bytes) -> Published: ...

    def target_info(self, target_path: str) -> Published | None: ...

    def refresh_timestamp(self, *, min_remaining: timedelta) -> bool: ...


class BlobStore(Protocol):
    """The slice of ``fleet_server.registry.artifacts.ArtifactStore`` the registry uses (keeps the upload)."""

    def put(self, key: str, source: Path) -> None: ...


def target_path(name: str, version: str) -> str:
    return f"{name}/{bundle_filename(name, version)}"


@dataclass(frozen=True)
class ModelInfo:
    """A published model version as the API shows it."""

    name: str
    version: str
    sha256: str
    length: int
    target_path: str
    profiles: tuple[str, ...]
    yanked: bool
    created_at: datetime
    manifest: dict[str, Any]

    @classmethod
    def from_row(cls, row: ModelRow) -> ModelInfo:
        return cls(row.name, row.version, row.sha256, row.length, row.target_path, tuple(row.profiles),
                   row.yanked, row.created_at, dict(row.manifest))

    def to_dict(self, *, manifest: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "version": self.version, "sha256": self.sha256, "length": self.length,
            "target_path": self.target_path, "profiles": list(self.profiles), "yanked": self.yanked,
            "created_at": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if manifest:
            data["manifest"] = self.manifest
        return data


def _check_profiles(profiles: Sequence[str]) -> None:
    """Refuse a bundle no device of this server could ever be assigned: it names no known profile."""
    known = profile_names()
    if not set(profiles) & set(known):
        shown = ", ".join(repr(p[:64]) for p in list(profiles)[:5]) or "none"
        raise InvalidInputError(f"profiles: this server knows none of the bundle's firmware profiles ({shown}), "
                                "so no device could be assigned it",
                                fix=f"convert the model for one of: {', '.join(known)} (or add the profile's TOML "
                                    "to firmware_profiles/ on the server)")


def _sort_key(info: ModelInfo) -> tuple[str, ModelVersion]:
    return info.name, ModelVersion.parse(info.version)


class Registry:
    def __init__(self, db: Database, repo: TargetPublisher, artifacts: BlobStore, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), max_bundle_bytes: int) -> None:
        self.db = db
        self.repo = repo
        self.artifacts = artifacts
        self.clock = clock
        self.max_bundle_bytes = max_bundle_bytes
        # One push at a time per process: the check-then-publish below must not interleave.
        # Across replicas the unique (name, version) constraint is the final arbiter.
        self._lock = threading.Lock()

    def push(self, source: Path) -> tuple[ModelInfo, bool]:
        """Validate and publish the bundle in file ``source``; return (info, created).

        ``created`` is False when the same bytes were already published under this name+version.
        The database row is claimed BEFORE the TUF target is written: the unique (name, version)
        constraint then decides between replicas racing with different bytes, and the loser
        never touches the repository. A crash between the two leaves a row without a target,
        which the next push of the same bytes repairs.
        """
        try:
            bundle = verify_bundle(source, max_bytes=self.max_bundle_bytes)  # streams; keeps no file
        except BundleError as exc:
            raise InvalidInputError(f"bundle: {exc.message}".replace(str(source), "upload"),
                                    fix=exc.fix or "rebuild it with `edgefleet convert`") from exc
        manifest = bundle.manifest
        path = target_path(manifest.name, manifest.version)
        row = ModelRow(name=manifest.name, version=manifest.version, sha256=bundle.sha256, length=bundle.size,
                       target_path=path, manifest=manifest.to_dict(), profiles=list(manifest.profiles),
                       yanked=False, created_at=self.clock().replace(microsecond=0))
        with self._lock:
            existing = self._find(manifest.name, manifest.version)
            if existing is None:
                _check_profiles(manifest.profiles)  # an identical bundle published before stays idempotent
                try:
                    with self.db.session() as session:
                        session.add(row)
                except IntegrityError:
                    existing = self._find(manifest.name, manifest.version)  # another replica won the race
                    if existing is None:
                        raise
            if existing is not None:
                self._same_or_conflict(existing, bundle.sha256)
                self._publish(existing, source)
                return existing, False
            info = ModelInfo.from_row(row)
            try:
                self._publish(info, source)
            except BaseException:
                with self.db.session() as session:
                    session.execute(delete(ModelRow).where(ModelRow.id == row.id))
                raise
            return info, True

    def _publish(self, info: ModelInfo, source: Path) -> None:
        """Make the TUF target match the row (a no-op when it already does)."""
        listed = self.repo.target_info(info.target_path)
        if listed is not None and listed.sha256 == info.sha256:
            return
        self.artifacts.put(info.target_path, source)
        published = self.repo.add_target(info.target_path, source)
        if published.sha256 != info.sha256:
            raise ConflictError(f"TUF target {info.target_path} holds different bytes than the registry",
                                fix="publish this model under a new version")

    @staticmethod
    def _same_or_conflict(existing: ModelInfo, sha: str) -> None:
        if existing.sha256 == sha:
            return
        raise ConflictError(
            f"{existing.name}@{existing.version} is already published with different bytes "
            f"(sha256 {existing.sha256[:12]}…, this upload {sha[:12]}…)",
            fix="a published version never changes: bump the version and convert again")

    def _find(self, name: str, version: str) -> ModelInfo | None:
        with self.db.session() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)).first()
            return None if row is None else ModelInfo.from_row(row)

    def get(self, name: str, version: str) -> ModelInfo:
        info = self._find(name, version)
        if info is None:
            raise NotFoundError(f"model {name}@{version} is not in the registry",
                                fix="see `edgefleet models list`, or push it with `edgefleet models push`")
        return info

    def list(self, name: str | None = None) -> list[ModelInfo]:
        with self.db.session() as session:
            query = select(ModelRow)
            if name is not None:
                query = query.where(ModelRow.name == name)
            infos = [ModelInfo.from_row(r) for r in session.scalars(query)]
        return sorted(infos, key=_sort_key)

    def yank(self, name: str, version: str) -> ModelInfo:
        """Mark a version as never assignable again (idempotent)."""
        with self.db.session() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)).first()
            if row is None:
                raise NotFoundError(f"model {name}@{version} is not in the registry", fix="see `edgefleet models list`")
            if not row.yanked:
                row.yanked = True
                row.yanked_at = self.clock().replace(microsecond=0)
            return ModelInfo.from_row(row)

    def refresh_timestamp(self, min_remaining: timedelta) -> bool:
        return self.repo.refresh_timestamp(min_remaining=min_remaining)
