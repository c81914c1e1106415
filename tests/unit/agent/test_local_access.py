"""Who on the device may call the agent's local API: the socket directory's group, and TCP only when asked for.

The daemon runs for real (its event loop in a thread, no MQTT) and clients connect as other
users: as root, the test forks children that drop to uid ``nobody`` with or without the socket
directory's group, so the kernel's permission checks are what is tested. Where the test does not
run as root, the modes and groups that those checks rely on are asserted instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.client import request_json
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.state import StateDir
from edgefleet.profiles import Profile

NOBODY = 65534
AGENT_GROUP = 54_321  # a group of its own: no user of this machine is in it by accident
ROOT = os.geteuid() == 0


@contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """The daemon's loop in a thread until the block ends (SIGTERM's path: ``stop`` on its loop)."""
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    failures: list[BaseException] = []

    def on_ready(_: Daemon) -> None:
        loops.append(asyncio.get_running_loop())
        ready.set()

    def main() -> None:
        try:
            asyncio.run(daemon.run_async(ready=on_ready))
        except BaseException as exc:  # surfaced below rather than lost in the thread
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(30), "the daemon did not start within 30 s"
    if failures:
        raise failures[0]
    try:
        yield daemon
    finally:
        loops[0].call_soon_threadsafe(daemon.stop)
        thread.join(30)


def _connect_as(uid: int, groups: list[int], path: Path) -> str:
    """GET /healthz over the socket at ``path`` from a child process running as ``uid`` in ``groups``."""
    pid = os.fork()
    if pid == 0:  # the child: only syscalls, then _exit (no cleanup of the parent's state)
        code = 9
        try:
            os.setgroups(groups)
            os.setgid(groups[0] if groups else NOBODY)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
                code = 0 if sock.recv(64).startswith(b"HTTP/1.1 200") else 3
        except PermissionError:
            code = 1
        except OSError:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "200", 1: "permission denied", 2: "other OS error", 3: "not a 200"}.get(
        os.waitstatus_to_exitcode(status), "crashed")


@pytest.fixture
def device(profile: Profile) -> Iterator[tuple[StateDir, Path]]:
    """A state directory (0700, as enrollment makes it) and, beside it, a runtime directory for the
    socket: 0750 with the agent's group, as systemd's RuntimeDirectory= makes /run/edgefleet."""
    base = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))  # short: AF_UNIX paths stay under 108 bytes
    os.chmod(base, 0o755)  # other users may reach what is below, if its own modes let them
    state = StateDir(base / "state").ensure()
    state.save_profile(profile.to_toml())
    run = base / "run"
    run.mkdir(mode=0o750)
    os.chmod(run, 0o750)
    if ROOT:
        os.chown(run, 0, AGENT_GROUP)
    yield state, run
    shutil.rmtree(base)


def test_tcp_is_off_unless_asked_for() -> None:
    assert AgentConfig().tcp_host is None
    assert AgentConfig.from_dict({"tcp": True}).tcp_host == "127.0.0.1"
    # Naming an address or a port asks for TCP, in agent.toml as on the command line.
    assert AgentConfig.from_dict({"http_port": 9000}).tcp_host == "127.0.0.1"
    assert AgentConfig().with_overrides(http_port=0, http_host=None).tcp_host == "127.0.0.1"
    assert AgentConfig().with_overrides(http_host="0.0.0.0").tcp_host == "0.0.0.0"
    # ... unless the address is empty, or the file says tcp = false beside it.
    assert AgentConfig.from_dict({"tcp": True}).with_overrides(http_host="").tcp_host is None
    assert AgentConfig.from_dict({"tcp": False, "http_port": 9000}).tcp_host is None
    assert AgentConfig.from_dict({"http_host": ""}).tcp_host is None


def test_a_default_daemon_opens_no_tcp_port_and_one_asked_for_does(state: StateDir, profile: Profile) -> None:
    with running(Daemon(state, AgentConfig(mqtt=False), profile=profile)) as daemon:
        assert daemon.api is not None and daemon.api.tcp_address is None
        assert daemon.status()["api"] == {"tcp": None, "socket": str(state.socket_path)}
        assert request_json(state.socket_path, "GET", "/healthz")[0] == 200
    with running(Daemon(state, AgentConfig(mqtt=False).with_overrides(http_port=0), profile=profile)) as daemon:
        assert daemon.api is not None and daemon.api.tcp_address is not None
        host, port = daemon.api.tcp_address
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")


def test_the_socket_directory_group_may_call_the_api_and_other_users_may_not(
        device: tuple[StateDir, Path], profile: Profile) -> None:
    state, run = device
    config = AgentConfig(mqtt=False, socket_dir=str(run))
    with running(Daemon(state, config, profile=profile)):
        sock = run / "agent.sock"
        mode = sock.stat()
        assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
        assert mode.st_gid == run.stat().st_gid  # the directory's group, not the agent's own
        # STATE_DIR/agent.sock leads to it, so `agent status` and `agent install` find the daemon.
        assert state.socket_path.is_symlink() and state.socket_path.resolve() == sock.resolve()
        assert request_json(state.socket_path, "GET", "/healthz")[0] == 200
        if ROOT:
            assert _connect_as(NOBODY, [AGENT_GROUP], sock) == "200"
            assert _connect_as(NOBODY, [NOBODY], sock) == "permission denied"
            # What the issue found: inside the 0700 state directory even the group is kept out.
            assert _connect_as(NOBODY, [AGENT_GROUP], state.socket_path) == "permission denied"
        else:
            assert stat.S_IMODE(run.stat().st_mode) == 0o750 and stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert not sock.exists() and not state.socket_path.is_symlink()  # both gone at shutdown


def test_a_missing_socket_directory_is_made_0750(device: tuple[StateDir, Path], profile: Profile) -> None:
    state, run = device
    fresh = run.parent / "fresh" / "edgefleet"
    with running(Daemon(state, AgentConfig(mqtt=False, socket_dir=str(fresh)), profile=profile)):
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o750
        assert request_json(state.socket_path, "GET", "/healthz")[0] == 200
