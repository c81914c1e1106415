"""The state directory: layout, secrets written 0600, and errors that say how to enroll."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.state import Credentials, Identity, StateDir
from edgefleet.profiles import Profile

IDENTITY = Identity("dev-1", "http://fleet:8080", "mqtt://fleet:1883", "generic-x86_64", {"site": "a"},
                    "http://fleet:8080/tuf/metadata/", "http://fleet:8080/tuf/targets/")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_matches_the_contract(tmp_path: Path) -> None:
    s = StateDir(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in (
        s.identity_file, s.credentials_file, s.director_key_file, s.profile_file, s.tuf_dir / "root.json",
        s.models_dir, s.update_file, s.assignment_file, s.downloads_dir, s.outbox_file, s.socket_path)] == [
        "identity.json", "credentials.json", "director.pub", "profile.toml", "tuf/root.json", "models",
        "update.json", "assignment.json", "downloads", "outbox.sqlite", "agent.sock"]
    s.ensure()
    assert s.tuf_dir.is_dir() and s.models_dir.is_dir() and s.downloads_dir.is_dir()
    assert mode(s.path) == 0o700


def test_identity_and_credentials_round_trip_with_private_modes(state: StateDir) -> None:
    assert not state.is_enrolled() and state.load_credentials() is None
    state.save_identity(IDENTITY)
    state.save_credentials(Credentials("dev-1", "s3cret", "tok"))
    assert state.is_enrolled() and state.load_identity() == IDENTITY
    creds = state.load_credentials()
    assert creds == Credentials("dev-1", "s3cret", "tok")
    assert "s3cret" not in repr(creds) and "tok" not in repr(creds)
    assert mode(state.identity_file) == 0o600 and mode(state.credentials_file) == 0o600


def test_director_key_round_trip_and_refuses_a_bad_key(state: StateDir) -> None:
    raw = bytes(range(32))
    state.save_director_public_key(base64.b64encode(raw).decode())
    assert state.director_public_key() == raw
    with pytest.raises(StateError, match="not a 32-byte Ed25519"):
        state.save_director_public_key(base64.b64encode(b"short").decode())
    with pytest.raises(StateError, match="not base64"):
        state.save_director_public_key("!!!")


def test_profile_is_stored_and_validated(state: StateDir, profile: Profile) -> None:
    with pytest.raises(StateError) as caught:
        state.profile()
    assert "edgefleet agent enroll" in str(caught.value) and "--profile" in str(caught.value)
    state.save_profile(profile.to_toml())
    assert state.profile().to_dict() == profile.to_dict()
    with pytest.raises(StateError, match="cores"):
        state.save_profile(profile.to_toml().replace("cores = 2", "cores = 0"))
    assert state.profile().cores == 2  # the bad profile was not written


def test_not_enrolled_errors_name_the_enroll_command(state: StateDir) -> None:
    with pytest.raises(StateError) as caught:
        state.load_identity()
    assert "edgefleet agent enroll" in str(caught.value)


def test_corrupt_identity_is_an_error_not_a_crash(state: StateDir) -> None:
    state.identity_file.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        state.load_identity()
    state.identity_file.write_text('{"device_id": "bad/id", "profile": "x"}')
    with pytest.raises(StateError, match="not valid"):
        state.load_identity()
