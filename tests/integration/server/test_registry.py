"""The registry claims name+version in the database before signing, so races and crashes stay consistent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet_server.context import ServerContext
from fleet_server.errors import ConflictError
from fleet_server.registry.models import target_path
from fleet_server.tables import ModelRow
from tests.integration.server.harness import make_bundle, server_config


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[ServerContext]:
    context = ServerContext.open(server_config(tmp_path / "data", database_url))
    yield context
    context.close()


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"{hashlib.sha256(data).hexdigest()[:8]}.tar.gz"
    path.write_bytes(data)
    return path


def _claim(ctx: ServerContext, data: bytes) -> None:
    """What another replica (or a crash right after the claim) leaves: a row and no TUF target yet."""
    with ctx.db.session() as session:
        session.add(ModelRow(name="digits", version="1.0.0", sha256=hashlib.sha256(data).hexdigest(),
                             length=len(data), target_path=target_path("digits", "1.0.0"), manifest={},
                             profiles=["rpi4-64"], yanked=False, created_at=datetime.now(UTC)))


def test_a_claimed_version_with_other_bytes_never_reaches_tuf(ctx: ServerContext, tmp_path: Path) -> None:
    _claim(ctx, make_bundle("digits", "1.0.0", seed=0))
    with pytest.raises(ConflictError):
        ctx.registry.push(_file(tmp_path, make_bundle("digits", "1.0.0", seed=1)))
    assert ctx.repo.target_info("digits/digits-1.0.0.tar.gz") is None


def test_repushing_identical_bytes_repairs_a_missing_target(ctx: ServerContext, tmp_path: Path) -> None:
    data = make_bundle("digits", "1.0.0")
    _claim(ctx, data)
    info, created = ctx.registry.push(_file(tmp_path, data))
    assert not created
    published = ctx.repo.target_info(info.target_path)
    assert published is not None and published.sha256 == hashlib.sha256(data).hexdigest()
    assert ctx.artifacts.exists(info.target_path)


def test_failed_publish_releases_the_claim(ctx: ServerContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctx.artifacts, "put", full_disk)
    with pytest.raises(OSError):
        ctx.registry.push(_file(tmp_path, make_bundle("digits", "1.0.0")))
    assert ctx.registry.list() == []
