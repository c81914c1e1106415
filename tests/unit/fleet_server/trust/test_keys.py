"""Key store: creation, refusal to overwrite, permissions, and the director key."""

from __future__ import annotations

import logging
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.assignment import Assignment, ModelTarget, verify_assignment
from fleet_server.trust.errors import KeyStoreError
from fleet_server.trust.keys import (
    DIRECTOR_FILE,
    ONLINE_ROLES,
    KeyStore,
    init_keys,
    load_root_signers,
    read_root_threshold,
)
from tests.unit.fleet_server.trust.support import START


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_private_keys_and_warns_to_move_root_keys_offline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        summary = init_keys(tmp_path / "keys", tmp_path / "root", root_key_count=3, root_threshold=2)
    for role in ONLINE_ROLES:
        assert _mode(tmp_path / "keys" / f"{role}.pem") == 0o600
    assert _mode(tmp_path / "keys" / DIRECTOR_FILE) == 0o600
    root_files = sorted(p.stem for p in (tmp_path / "root").glob("*.pem"))
    assert root_files == sorted(summary.root_keyids) and len(root_files) == 3
    assert not list((tmp_path / "keys").glob("root*"))
    assert read_root_threshold(tmp_path / "root") == 2
    assert "offline" in caplog.text and summary.warnings and "offline" in summary.warnings[0]
    assert len(set(summary.online_keyids.values())) == 3


def test_init_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.pem")}
    with pytest.raises(KeyStoreError, match="refusing to overwrite") as info:
        init_keys(tmp_path / "keys", tmp_path / "root")
    assert info.value.fix
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.pem")} == before


def test_init_refuses_when_only_the_root_store_exists(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        init_keys(tmp_path / "other-keys", tmp_path / "root")
    assert not (tmp_path / "other-keys" / "targets.pem").exists()


@pytest.mark.parametrize("root", ["keys", "keys/root"])
def test_root_keys_may_not_live_in_the_online_store(tmp_path: Path, root: str) -> None:
    with pytest.raises(KeyStoreError, match="must not overlap"):
        init_keys(tmp_path / "keys", tmp_path / root)


@pytest.mark.parametrize(("count", "threshold"), [(1, 2), (0, 0), (2, 0)])
def test_impossible_root_threshold_is_refused(tmp_path: Path, count: int, threshold: int) -> None:
    with pytest.raises(KeyStoreError, match="impossible"):
        init_keys(tmp_path / "keys", tmp_path / "root", root_key_count=count, root_threshold=threshold)


def test_load_refuses_a_key_other_users_can_read(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    (tmp_path / "keys" / "snapshot.pem").chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by other users") as info:
        KeyStore.load(tmp_path / "keys")
    assert info.value.fix == f"chmod 600 {tmp_path / 'keys' / 'snapshot.pem'}"


def test_load_names_the_missing_key(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    (tmp_path / "keys" / DIRECTOR_FILE).unlink()
    with pytest.raises(KeyStoreError, match="director.pem does not exist"):
        KeyStore.load(tmp_path / "keys")


def test_load_refuses_garbage_key(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    (tmp_path / "keys" / "targets.pem").write_bytes(b"not a key")
    with pytest.raises(KeyStoreError, match="not an unencrypted PKCS#8"):
        KeyStore.load(tmp_path / "keys")


def test_loaded_keys_match_what_init_reported(tmp_path: Path) -> None:
    summary = init_keys(tmp_path / "keys", tmp_path / "root")
    store = KeyStore.load(tmp_path / "keys")
    assert {r: store.public_key(r).keyid for r in ONLINE_ROLES} == dict(summary.online_keyids)
    assert store.director.keyid == summary.director_keyid
    assert [s.public_key.keyid for s in load_root_signers(tmp_path / "root")] == list(summary.root_keyids)


def test_no_online_signer_for_root(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    with pytest.raises(KeyStoreError, match="no online key for role 'root'"):
        KeyStore.load(tmp_path / "keys").signer("root")


def test_director_key_signs_assignments_a_device_accepts(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", tmp_path / "root")
    director = KeyStore.load(tmp_path / "keys").director
    target = ModelTarget("1.0.0", "digits/digits-1.0.0.tar.gz", "a" * 64, 10)
    assignment = Assignment("dev-1", 1, START, START + timedelta(days=1), None, {"digits": target})
    accepted = verify_assignment(director.sign(assignment), director_public_b64=director.public_b64,
                                 device_id="dev-1", last_counter=0, now=START)
    assert accepted == assignment
