"""The TUF repository: metadata python-tuf accepts, targets, expiry refresh, crashes, replicas, root rotation."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signature, Signer
from tuf.api.metadata import Metadata

from fleet_server.trust.errors import KeyStoreError, RepositoryError, ThresholdError
from fleet_server.trust.keys import KeyStore, load_root_signers
from fleet_server.trust.rotation import rotate_online_key, rotate_root
from fleet_server.trust.tuf_repo import TargetInfo, TufRepository
from tests.unit.fleet_server.trust.support import Fixture, make_repo, make_updater

BUNDLE = b"bundle bytes " * 100
PATH = "digits/digits-1.0.0.tar.gz"


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return make_repo(tmp_path)


def _md(repo: TufRepository, name: str) -> Metadata[Any]:
    return Metadata.from_bytes((repo.metadata_dir / name).read_bytes())


def _versions(repo: TufRepository) -> tuple[int, int, int]:
    ts = _md(repo, "timestamp.json")
    snap = _md(repo, f"{ts.signed.snapshot_meta.version}.snapshot.json")
    return ts.signed.version, snap.signed.version, snap.signed.meta["targets.json"].version


def test_created_metadata_verifies_with_python_tuf(fx: Fixture) -> None:
    root = _md(fx.repo, "1.root.json")
    assert root.signed.consistent_snapshot is True
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    for role, name in (("targets", "1.targets.json"), ("snapshot", "1.snapshot.json"),
                       ("timestamp", "timestamp.json")):
        md = _md(fx.repo, name)
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        key = root.signed.get_key(root.signed.roles[role].keyids[0])
        assert key.keytype == "ed25519"
        assert md.signed.expires == fx.clock.now + fx.repo.expiry[role]
    assert root.signed.expires == fx.clock.now + timedelta(days=365)


def test_a_tuf_client_downloads_an_added_target(fx: Fixture, tmp_path: Path) -> None:
    info = fx.repo.add_target(PATH, BUNDLE)
    assert info.sha256 == hashlib.sha256(BUNDLE).hexdigest() and info.length == len(BUNDLE)
    updater = make_updater(fx.repo, tmp_path / "client", fx.repo.root_json())
    updater.refresh()
    target = updater.get_targetinfo(PATH)
    assert target is not None
    downloaded = updater.download_target(target)
    assert Path(downloaded).read_bytes() == BUNDLE


def test_target_is_stored_under_its_consistent_snapshot_name(fx: Fixture) -> None:
    info = fx.repo.add_target(PATH, BUNDLE)
    stored = fx.repo.targets_dir / "digits" / f"{info.sha256}.digits-1.0.0.tar.gz"
    assert stored.read_bytes() == BUNDLE
    assert info.stored_name == f"digits/{info.sha256}.digits-1.0.0.tar.gz"
    sha, length = info
    assert (sha, length) == (info.sha256, len(BUNDLE))


def test_add_target_from_a_file(fx: Fixture, tmp_path: Path) -> None:
    source = tmp_path / "digits-1.0.0.tar.gz"
    source.write_bytes(BUNDLE)
    expected = TargetInfo(PATH, hashlib.sha256(BUNDLE).hexdigest(), len(BUNDLE))
    assert fx.repo.add_target(PATH, source) == expected
    assert fx.repo.target_info(PATH) == expected


def test_each_change_bumps_targets_snapshot_and_timestamp(fx: Fixture) -> None:
    assert _versions(fx.repo) == (1, 1, 1)
    fx.repo.add_target(PATH, BUNDLE)
    assert _versions(fx.repo) == (2, 2, 2)
    fx.repo.add_target("digits/digits-1.1.0.tar.gz", b"other")
    assert _versions(fx.repo) == (3, 3, 3)
    assert [t.path for t in fx.repo.targets()] == [PATH, "digits/digits-1.1.0.tar.gz"]


def test_readding_identical_content_changes_nothing(fx: Fixture) -> None:
    fx.repo.add_target(PATH, BUNDLE)
    fx.repo.add_target(PATH, BUNDLE)
    assert _versions(fx.repo) == (2, 2, 2)


def test_new_content_replaces_the_entry_but_keeps_the_old_file(fx: Fixture) -> None:
    old = fx.repo.add_target(PATH, BUNDLE)
    new = fx.repo.add_target(PATH, b"rebuilt")
    assert fx.repo.target_info(PATH) == new != old
    assert (fx.repo.targets_dir / old.stored_name).exists()  # clients on the older snapshot still find it


def test_unknown_target_has_no_info(fx: Fixture) -> None:
    assert fx.repo.target_info(PATH) is None
    assert fx.repo.targets() == []


@pytest.mark.parametrize("bad", ["", "/abs/x.tar.gz", "a/../x.tar.gz", "a//x", "./x", "a/.hidden", "a\\b", "a/ b", "a/b.tar.gz\n"])
def test_target_paths_that_escape_or_hide_are_refused(fx: Fixture, bad: str) -> None:
    with pytest.raises(RepositoryError, match="not a plain relative path"):
        fx.repo.add_target(bad, BUNDLE)
    assert _versions(fx.repo) == (1, 1, 1)


def test_create_refuses_an_existing_repository(fx: Fixture) -> None:
    fx.repo.add_target(PATH, BUNDLE)
    with pytest.raises(RepositoryError, match="refusing to overwrite"):
        TufRepository.create(fx.repo.repo_dir, fx.keys, fx.root_keys_dir)
    assert fx.repo.target_info(PATH) is not None


def test_opening_a_missing_repository_names_the_fix(tmp_path: Path, fx: Fixture) -> None:
    with pytest.raises(RepositoryError, match="missing") as info:
        TufRepository(tmp_path / "nowhere", fx.keys).targets()
    assert not (tmp_path / "nowhere").exists()
    assert info.value.fix and "init" in info.value.fix


def test_refresh_resigns_only_what_is_about_to_expire(fx: Fixture) -> None:
    margin = timedelta(hours=6)
    assert fx.repo.refresh_timestamp(min_remaining=margin) is False
    assert _versions(fx.repo) == (1, 1, 1)

    fx.clock.advance(timedelta(hours=20))  # timestamp has 4 h left
    assert fx.repo.refresh_timestamp(min_remaining=margin) is True
    assert _versions(fx.repo) == (2, 1, 1)
    assert _md(fx.repo, "timestamp.json").signed.expires == fx.clock.now + timedelta(days=1)
    assert fx.repo.refresh_timestamp(min_remaining=margin) is False

    fx.clock.advance(timedelta(days=6, hours=1))  # snapshot has 3 h left
    assert fx.repo.refresh_timestamp(min_remaining=margin) is True
    assert _versions(fx.repo) == (3, 2, 1)

    fx.clock.advance(timedelta(days=83))  # targets: 90 d - (20 h + 6 d 1 h + 83 d) = 3 h left
    assert fx.repo.refresh_timestamp(min_remaining=margin) is True
    assert _versions(fx.repo) == (4, 3, 2)
    expires = fx.repo.expires()
    assert expires["targets"] == fx.clock.now + timedelta(days=90)
    assert expires["root"] < fx.clock.now + timedelta(days=300)  # root is never re-signed online


def test_refreshed_metadata_still_verifies(fx: Fixture, tmp_path: Path) -> None:
    fx.repo.add_target(PATH, BUNDLE)
    fx.clock.advance(timedelta(days=89, hours=23))
    fx.repo.refresh_timestamp(min_remaining=timedelta(hours=2))
    root = _md(fx.repo, "1.root.json").signed
    ts = _md(fx.repo, "timestamp.json")
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap = _md(fx.repo, f"{ts.signed.snapshot_meta.version}.snapshot.json")
    root.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    targets = _md(fx.repo, f"{snap.signed.meta['targets.json'].version}.targets.json")
    root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    assert PATH in targets.signed.targets


class _FailingSigner(Signer):
    """Stands in for a crash right before the timestamp is signed."""

    def __init__(self, real: Signer) -> None:
        self._public = real.public_key

    @property
    def public_key(self) -> Any:
        return self._public

    def sign(self, payload: bytes) -> Signature:
        raise OSError("power cut")

    @classmethod
    def from_priv_key_uri(cls, *args: Any, **kwargs: Any) -> Signer:
        raise NotImplementedError


def test_a_crash_before_the_timestamp_moves_leaves_the_old_snapshot_published(fx: Fixture, tmp_path: Path) -> None:
    fx.repo.add_target(PATH, BUNDLE)
    signers = {r: fx.keys.signer(r) for r in ("targets", "snapshot")}
    signers["timestamp"] = _FailingSigner(fx.keys.signer("timestamp"))
    crashing = TufRepository(fx.repo.repo_dir, KeyStore(signers, fx.keys.director), fx.clock)
    with pytest.raises(RepositoryError, match="cannot sign timestamp"):
        crashing.add_target("digits/digits-2.0.0.tar.gz", b"new")
    assert [t.path for t in fx.repo.targets()] == [PATH]
    updater = make_updater(fx.repo, tmp_path / "client", fx.repo.root_json())
    updater.refresh()
    assert updater.get_targetinfo("digits/digits-2.0.0.tar.gz") is None
    # The next writer overwrites the orphaned versions and publishes a consistent state.
    fx.repo.add_target("digits/digits-2.0.0.tar.gz", b"new")
    updater = make_updater(fx.repo, tmp_path / "client2", fx.repo.root_json())
    updater.refresh()
    assert updater.get_targetinfo("digits/digits-2.0.0.tar.gz") is not None


def test_two_replicas_adding_at_once_lose_nothing(fx: Fixture) -> None:
    other = TufRepository(fx.repo.repo_dir, KeyStore.load(fx.keys_dir), fx.clock)
    errors: list[BaseException] = []

    def add(repo: TufRepository, prefix: str) -> None:
        try:
            for i in range(4):
                repo.add_target(f"{prefix}/{prefix}-{i}.0.0.tar.gz", f"{prefix}{i}".encode())
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(fx.repo, "a")), threading.Thread(target=add, args=(other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fx.repo.targets()) == 8
    assert _versions(fx.repo) == (9, 9, 9)


def test_root_json_is_the_newest_root(fx: Fixture) -> None:
    assert json.loads(fx.repo.root_json())["signed"]["version"] == 1
    rotate_root(fx.keys_dir, fx.root_keys_dir, fx.repo)
    assert json.loads(fx.repo.root_json())["signed"]["version"] == 2
    assert fx.repo.root_version() == 2


def test_rotated_root_is_signed_by_old_and_new_keys(fx: Fixture) -> None:
    old_keyids, _ = fx.repo.root_keyids()
    assert rotate_root(fx.keys_dir, fx.root_keys_dir, fx.repo, new_root_key_count=3, new_threshold=2) == 2
    v1, v2 = _md(fx.repo, "1.root.json"), _md(fx.repo, "2.root.json")
    v1.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    v2.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    new_keyids, threshold = fx.repo.root_keyids()
    assert threshold == 2 and len(new_keyids) == 3 and not set(new_keyids) & set(old_keyids)
    # Old root keys are retired, the new ones are where the next rotation will look.
    assert sorted(p.stem for p in fx.root_keys_dir.glob("*.pem")) == sorted(new_keyids)
    assert [p.stem for p in (fx.root_keys_dir / "retired").glob("*.pem")] == old_keyids
    # Online keys did not change.
    for role in ("targets", "snapshot", "timestamp"):
        assert v1.signed.roles[role].keyids == v2.signed.roles[role].keyids


def test_a_client_follows_two_rotations(fx: Fixture, tmp_path: Path) -> None:
    bootstrap = fx.repo.root_json()
    rotate_root(fx.keys_dir, fx.root_keys_dir, fx.repo, new_root_key_count=2, new_threshold=2)
    rotate_root(fx.keys_dir, fx.root_keys_dir, fx.repo)
    fx.repo.add_target(PATH, BUNDLE)
    updater = make_updater(fx.repo, tmp_path / "client", bootstrap)
    updater.refresh()
    assert json.loads((tmp_path / "client" / "metadata" / "root.json").read_bytes())["signed"]["version"] == 3
    assert updater.get_targetinfo(PATH) is not None


def test_rotation_without_enough_current_root_keys_changes_nothing(tmp_path: Path) -> None:
    fx = make_repo(tmp_path, root_key_count=2, root_threshold=2)
    sorted(fx.root_keys_dir.glob("*.pem"))[0].unlink()  # one key's media is missing
    before = sorted(p.name for p in fx.root_keys_dir.iterdir())
    with pytest.raises(ThresholdError, match="needs 2 of the current root keys but only 1"):
        rotate_root(fx.keys_dir, fx.root_keys_dir, fx.repo)
    assert fx.repo.root_version() == 1
    assert sorted(p.name for p in fx.root_keys_dir.iterdir()) == before


def test_publish_root_refuses_a_root_the_old_keys_did_not_sign(fx: Fixture) -> None:
    from securesystemslib.signer import CryptoSigner

    intruder = CryptoSigner.generate_ed25519()
    with pytest.raises(ThresholdError, match="would not verify"):
        fx.repo.publish_root([intruder.public_key], 1, old_signers=[], new_signers=[intruder])
    assert fx.repo.root_version() == 1


def test_a_missing_source_file_is_a_repository_error(fx: Fixture, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="No such file"):
        fx.repo.add_target(PATH, tmp_path / "not-there.tar.gz")
    assert _versions(fx.repo) == (1, 1, 1)


def test_rotating_a_leaked_timestamp_key(fx: Fixture, tmp_path: Path) -> None:
    fx.repo.add_target(PATH, BUNDLE)
    bootstrap = fx.repo.root_json()
    old_keyid = fx.keys.public_key("timestamp").keyid
    rotator = TufRepository(fx.repo.repo_dir, KeyStore.load(fx.keys_dir), fx.clock)  # another replica
    assert rotate_online_key(fx.keys_dir, fx.root_keys_dir, rotator, "timestamp") == 2
    v2 = _md(fx.repo, "2.root.json").signed
    new_keyid = v2.roles["timestamp"].keyids[0]
    assert new_keyid != old_keyid
    assert v2.roles["root"].keyids == _md(fx.repo, "1.root.json").signed.roles["root"].keyids
    assert (fx.keys_dir / "retired" / f"timestamp-{old_keyid}.pem").exists()
    assert not (fx.keys_dir / "timestamp.pem.next").exists()
    ts = _md(fx.repo, "timestamp.json")
    v2.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    # This replica still holds the leaked key in memory: it must switch, not publish with it.
    fx.repo.add_target("digits/digits-2.0.0.tar.gz", b"after rotation")
    assert fx.repo.keys.public_key("timestamp").keyid == new_keyid
    updater = make_updater(fx.repo, tmp_path / "client", bootstrap)
    updater.refresh()
    assert updater.get_targetinfo("digits/digits-2.0.0.tar.gz") is not None


def test_an_interrupted_online_rotation_finishes_when_rerun(fx: Fixture) -> None:
    from securesystemslib.signer import CryptoSigner

    # What a run that crashed after publishing root v2 leaves behind.
    new = CryptoSigner.generate_ed25519()
    pending = fx.keys_dir / "snapshot.pem.next"
    pending.write_bytes(new.private_bytes)
    pending.chmod(0o600)
    fx.repo.publish_root(None, None, old_signers=load_root_signers(fx.root_keys_dir),
                         role_keys={"snapshot": new.public_key})
    with pytest.raises(RepositoryError, match="is not one root v2 names") as info:
        fx.repo.refresh_timestamp(min_remaining=timedelta(days=30))
    assert info.value.fix and "rerun" in info.value.fix
    assert rotate_online_key(fx.keys_dir, fx.root_keys_dir, fx.repo, "snapshot") == 2  # no third root
    assert KeyStore.load(fx.keys_dir).public_key("snapshot").keyid == new.public_key.keyid
    assert fx.repo.refresh_timestamp(min_remaining=timedelta(days=30)) is True


def test_root_is_not_an_online_role(fx: Fixture) -> None:
    with pytest.raises(KeyStoreError, match="not an online role"):
        rotate_online_key(fx.keys_dir, fx.root_keys_dir, fx.repo, "root")
    assert fx.repo.root_version() == 1
