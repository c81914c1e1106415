"""The local artifact store: atomic puts, safe keys, clear misses."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.registry.artifacts import (
    ArtifactError,
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactStore,
    LocalArtifactStore,
)

KEY = "digits/digits-1.0.0.tar.gz"


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_is_an_artifact_store(store: LocalArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)


def test_put_then_read_back(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "in.tar.gz"
    source.write_bytes(b"v1")
    store.put(KEY, source)
    assert store.exists(KEY)
    with store.open(KEY) as handle:
        assert handle.read() == b"v1"
    assert store.path(KEY) == store.root / KEY
    source.write_bytes(b"v2")
    store.put(KEY, source)
    assert store.open(KEY).read() == b"v2"
    assert [p.name for p in (store.root / "digits").iterdir()] == ["digits-1.0.0.tar.gz"]  # no temp left


def test_missing_artifact(store: LocalArtifactStore) -> None:
    assert not store.exists(KEY) and store.path(KEY) is None
    with pytest.raises(ArtifactNotFoundError, match="no artifact") as info:
        store.open(KEY)
    assert "no artifact" in str(info.value)


def test_missing_source_is_named(store: LocalArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        store.put(KEY, tmp_path / "nope")
    assert not store.exists(KEY)


@pytest.mark.parametrize("key", ["", "../x", "/etc/passwd", "a/../../x", "a//b", ".hidden", "a/b/", "a/b\n"])
def test_keys_cannot_leave_the_store(store: LocalArtifactStore, tmp_path: Path, key: str) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"x")
    with pytest.raises(ArtifactKeyError, match="not a plain relative name"):
        store.put(key, source)
    with pytest.raises(ArtifactKeyError):
        store.exists(key)
