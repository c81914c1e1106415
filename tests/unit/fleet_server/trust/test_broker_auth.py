"""Mosquitto password hashes, password file and ACL rendering, atomic writes, reload safety."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet import topics
from fleet_server.broker.auth import (
    mosquitto_password_hash,
    reload_mosquitto,
    render_acl,
    render_password_file,
    verify_mosquitto_password,
    write_broker_files,
)
from fleet_server.trust.errors import BrokerAuthError

device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)


def test_hash_matches_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        pytest.fail("mosquitto_passwd is not installed: apt-get install -y mosquitto")
    subprocess.run([tool, "-c", "-b", str(tmp_path / "pw"), "alice", "s3cret pass"], check=True)
    line = (tmp_path / "pw").read_text().strip()
    user, hashed = line.split(":", 1)
    _, seven, iterations, salt, _ = hashed.split("$")
    assert (user, seven) == ("alice", "7")
    ours = mosquitto_password_hash("s3cret pass", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == hashed
    assert verify_mosquitto_password("s3cret pass", hashed)
    assert not verify_mosquitto_password("wrong", hashed)


def test_hash_format_and_fresh_salt() -> None:
    first, second = mosquitto_password_hash("pw"), mosquitto_password_hash("pw")
    assert first != second  # a fresh 12-byte salt each time
    parts = first.split("$")
    assert parts[1:3] == ["7", "101"] and len(base64.b64decode(parts[3])) == 12
    assert len(base64.b64decode(parts[4])) == 64  # SHA-512 output
    assert verify_mosquitto_password("pw", first) and verify_mosquitto_password("pw", second)


def test_empty_password_is_refused() -> None:
    with pytest.raises(BrokerAuthError, match="must not be empty"):
        mosquitto_password_hash("")


def test_password_file_is_sorted_and_refuses_plaintext() -> None:
    h = mosquitto_password_hash("x", salt=b"0" * 12)
    assert render_password_file({"b": h, "a": h}) == f"a:{h}\nb:{h}\n"
    with pytest.raises(BrokerAuthError, match="not a Mosquitto \\$7\\$ hash"):
        render_password_file({"a": "plaintext"})
    for bad in ("a:b", "a\n", "a b"):
        with pytest.raises(BrokerAuthError, match="not valid"):
            render_password_file({bad: h})
    with pytest.raises(BrokerAuthError, match="not a Mosquitto"):
        render_password_file({"a": h + "\n"})


def test_acl_gives_servers_the_prefix_and_devices_their_own_topics() -> None:
    acl = render_acl([("dev-a", "dev-a")], ["server-1"])
    assert acl == (
        "user server-1\ntopic readwrite edgefleet/v1/#\n\n"
        "user dev-a\n"
        "topic read edgefleet/v1/devices/dev-a/desired\n"
        "topic read edgefleet/v1/devices/dev-a/commands\n"
        "topic write edgefleet/v1/devices/dev-a/reported\n"
        "topic write edgefleet/v1/devices/dev-a/events\n"
        "topic write edgefleet/v1/devices/dev-a/telemetry\n\n"
    )


def _blocks(acl: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    user = ""
    for line in acl.splitlines():
        if line.startswith("user "):
            user = line.removeprefix("user ")
            out[user] = []
        elif line:
            out[user].append(line)
    return out


@settings(deadline=None)  # the machine is shared: wall-clock deadlines would flake, not find bugs
@given(st.lists(device_ids, min_size=1, max_size=8, unique=True))
def test_every_device_gets_exactly_its_own_five_topics(ids: list[str]) -> None:
    blocks = _blocks(render_acl([(f"u-{d}", d) for d in ids], ["srv"]))
    assert blocks.pop("srv") == ["topic readwrite edgefleet/v1/#"]
    assert set(blocks) == {f"u-{d}" for d in ids}
    for device_id in ids:
        lines = blocks[f"u-{device_id}"]
        assert len(lines) == 5
        for line in lines:
            access, topic = line.split()[1:]
            assert topics.parse_device_topic(topic)[0] == device_id
            assert "#" not in topic and "+" not in topic
            kind = topic.rsplit("/", 1)[1]
            assert access == ("read" if kind in topics.SERVER_TO_DEVICE else "write")


@pytest.mark.parametrize("device_id", ["a/b", "+", "#", "dev a", "", "dev-a\n", "dev-a\ntopic readwrite #"])
def test_device_ids_that_could_escape_their_subtree_are_refused(device_id: str) -> None:
    with pytest.raises(BrokerAuthError, match="not valid"):
        render_acl([("user1", device_id)], [])


def test_one_username_cannot_serve_two_identities() -> None:
    with pytest.raises(BrokerAuthError, match="listed for both"):
        render_acl([("shared", "dev-a"), ("shared", "dev-b")], [])
    with pytest.raises(BrokerAuthError, match="listed for both the server"):
        render_acl([("srv", "dev-a")], ["srv"])


def test_write_broker_files_writes_both_privately(tmp_path: Path) -> None:
    h = mosquitto_password_hash("pw")
    files = write_broker_files(tmp_path, passwords={"dev-a": h, "srv": h}, devices=[("dev-a", "dev-a")],
                               server_users=["srv"])
    assert files.password_file.read_text() == render_password_file({"dev-a": h, "srv": h})
    assert files.acl_file.read_text() == render_acl([("dev-a", "dev-a")], ["srv"])
    # Readable by the broker's group (it may run as another user), never by others.
    for path in (files.password_file, files.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_user_in_only_one_file_is_refused(tmp_path: Path) -> None:
    h = mosquitto_password_hash("pw")
    with pytest.raises(BrokerAuthError, match="dev-b"):
        write_broker_files(tmp_path, passwords={"dev-a": h, "dev-b": h}, devices=[("dev-a", "dev-a")], server_users=[])
    assert list(tmp_path.iterdir()) == []


def test_reload_refuses_to_hang_up_a_process_that_is_not_mosquitto() -> None:
    with pytest.raises(BrokerAuthError, match="not Mosquitto"):
        reload_mosquitto(os.getpid())


def test_reload_names_a_missing_pid_file(tmp_path: Path) -> None:
    with pytest.raises(BrokerAuthError, match="does not exist"):
        reload_mosquitto(tmp_path / "mosquitto.pid")
    (tmp_path / "garbage.pid").write_text("nope")
    with pytest.raises(BrokerAuthError, match="does not hold a pid"):
        reload_mosquitto(tmp_path / "garbage.pid")


@settings(deadline=None)
@given(st.text(max_size=30))
def test_any_device_id_is_either_refused_or_confined(device_id: str) -> None:
    try:
        acl = render_acl([("u", device_id)], [])
    except BrokerAuthError:
        return
    for line in acl.splitlines()[1:]:
        if line:
            topic = line.split()[2]
            assert topics.parse_device_topic(topic)[0] == device_id
            assert not set("#+/") & set(device_id)
