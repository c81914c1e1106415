"""A real Mosquitto broker for tests: its own process, free port, config, password file and ACL.

``MosquittoBroker`` writes a config into a temporary directory and starts ``mosquitto -c``
on a free loopback port. With ``auth=True`` anonymous clients are refused and the
password/ACL files given (or written later with ``write_auth``) are enforced; ``reload()``
sends SIGHUP so Mosquitto re-reads them, as the fleet server does in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from simulation.fleet import free_port, mosquitto_binary

__all__ = ["MosquittoBroker", "free_port", "mosquitto_binary"]


class MosquittoBroker:
    def __init__(self, workdir: Path, *, auth: bool = False, port: int | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.auth = auth
        self.password_file = self.workdir / "passwd"
        self.acl_file = self.workdir / "acl"
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type subscribe",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot read the
            # 0600 password/ACL files in pytest's private tmp dir; stay the invoking user.
            lines.append("user root")
        if self.auth:
            if not self.password_file.exists():
                self.password_file.write_text("")
            if not self.acl_file.exists():
                self.acl_file.write_text("")
            lines += ["allow_anonymous false", f"password_file {self.password_file}", f"acl_file {self.acl_file}"]
        else:
            lines += ["allow_anonymous true"]
        self.config_file.write_text("\n".join(lines) + "\n")
        # Mosquitto 2 refuses world-readable password files in some builds; keep them private.
        for path in (self.password_file, self.acl_file):
            if path.exists():
                path.chmod(0o600)

    def start(self) -> MosquittoBroker:
        self._write_config()
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port}")

    def reload(self) -> None:
        """Make Mosquitto re-read its password and ACL files (SIGHUP)."""
        assert self.proc is not None
        for path in (self.password_file, self.acl_file):
            if path.exists():
                path.chmod(0o600)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
