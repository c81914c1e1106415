"""Server and Mosquitto start in either order on a fresh install (issue 17), as real processes.

Mosquitto gets the configuration docs/deployment.md gives it (password_file, acl_file and
pid_file in the directory the server writes); the server is ``edgefleet server`` with
``--mosquitto-dir`` and ``--mosquitto-pid-file``, as its systemd unit runs it.

- Server first: it writes the two files (0640, for Mosquitto's group) before it needs the
  broker, keeps running and serving /healthz while the broker is down, logs one warning line
  (no traceback) for the missing pid file, and connects once Mosquitto is started.
- Mosquitto first: on a fresh install Mosquitto cannot start without the files, so the
  install step ``edgefleet server --init-only`` writes them; then Mosquitto, then the server.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from simulation.fleet import (
    Supervisor,
    edgefleet_argv,
    edgefleet_run,
    free_port,
    mosquitto_binary,
    wait_until,
)

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


class Install:
    """A fresh install: an empty data directory, the Mosquitto directory and mosquitto.conf."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.broker_dir = root / "mosquitto-edgefleet"
        self.broker_dir.mkdir(mode=0o750)
        self.pid_file = self.broker_dir / "mosquitto.pid"
        self.broker_port = free_port()
        self.http_port = free_port()
        self.supervisor = Supervisor(root / "logs")
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.broker_port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.broker_dir / 'passwd'}",
            f"acl_file {self.broker_dir / 'acl'}",
            f"pid_file {self.pid_file}",
            "persistence false",
            *(["user root"] if _root() else []),
        ]) + "\n")

    def server_args(self) -> list[str]:
        return ["server", "--data-dir", str(self.data_dir), "--port", str(self.http_port),
                "--broker", f"mqtt://127.0.0.1:{self.broker_port}", "--mosquitto-dir", str(self.broker_dir),
                "--mosquitto-pid-file", str(self.pid_file)]

    def start_server(self) -> None:
        self.server = self.supervisor.spawn("server", edgefleet_argv(*self.server_args()),
                                            env={"EDGEFLEET_ROLLOUT_INTERVAL_SECONDS": "1"})

    def start_mosquitto(self) -> None:
        binary = mosquitto_binary()
        assert binary is not None
        self.mosquitto = self.supervisor.spawn("mosquitto", [binary, "-c", str(self.conf)])
        wait_until(self._listening, 20, "mosquitto to listen", explain=lambda: self.mosquitto.log_tail())

    def _listening(self) -> bool:
        assert self.mosquitto.alive(), self.mosquitto.log_tail()
        try:
            with socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.2):
                return True
        except OSError:
            return False

    def health(self) -> dict[str, object] | None:
        assert self.server.alive(), f"the server exited:\n{self.server.log_tail(80)}"
        try:
            response = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2)
        except httpx.TransportError:
            return None
        return dict(response.json()) if response.status_code == 200 else None


def _root() -> bool:
    import os

    return os.geteuid() == 0


@pytest.fixture
def install(tmp_path: Path) -> Iterator[Install]:
    fresh = Install(tmp_path)
    yield fresh
    fresh.supervisor.stop_all()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_first_keeps_running_until_mosquitto_starts(install: Install) -> None:
    install.start_server()
    health = wait_until(install.health, 90, "the server to answer /healthz without a broker",
                        explain=lambda: install.server.log_tail(60))
    assert health["mqtt_connected"] is False
    # What Mosquitto needs to start was written before the server needed the broker.
    for name in ("passwd", "acl"):
        assert _mode(install.broker_dir / name) == 0o640
    assert "edgefleet-server" in (install.broker_dir / "acl").read_text()
    log = install.server.log()
    assert "Traceback" not in log
    assert "Mosquitto is not running" in log and "reads them when it starts" in log

    install.start_mosquitto()
    wait_until(lambda: (install.health() or {}).get("mqtt_connected"), 60, "the server to connect to Mosquitto",
               explain=lambda: install.server.log_tail(40))
    assert install.server.alive() and "Traceback" not in install.server.log()


def test_mosquitto_first_after_the_install_step(install: Install) -> None:
    # Without the files Mosquitto cannot start: this is why the install step exists.
    binary = mosquitto_binary()
    assert binary is not None
    refused = install.supervisor.spawn("mosquitto-too-early", [binary, "-c", str(install.conf)])
    assert refused.proc.wait(20) != 0
    assert "pwfile" in refused.log() or "password" in refused.log().lower()

    init = edgefleet_run(*install.server_args(), "--init-only", timeout=120)
    assert init.returncode == 0, init.stderr
    assert "Traceback" not in init.stderr
    assert "admin token" in init.stderr  # a first start: the token is shown once, here
    for name in ("passwd", "acl"):
        assert _mode(install.broker_dir / name) == 0o640

    install.start_mosquitto()
    install.start_server()
    wait_until(lambda: (install.health() or {}).get("mqtt_connected"), 90, "the server to connect to Mosquitto",
               explain=lambda: install.server.log_tail(40))
    log = install.server.log()
    assert "Traceback" not in log and "admin token (shown once" not in log  # not a second first start
