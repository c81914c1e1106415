"""Mosquittos with an accounts plugin, configured by the server's own recipes (tests and bench).

``DynsecMosquitto`` is ``simulation.fleet.MosquittoProcess`` whose mosquitto.conf loads the
dynamic-security plugin (``fleet_server.broker.dynsec.conf_lines``) and whose plugin file is
written by ``fleet_server.broker.dynsec.write_config`` with the server's account (hashed) and any
devices given, as docs/deployment.md tells an operator to do.

``PluginMosquitto`` loads the edgefleet plugin (``fleet_server.broker.mosquitto_http.conf_lines``),
which asks a fleet server's broker-auth endpoint at each CONNECT; ``ServedApp`` serves such an
app (uvicorn, in a thread of this process) on a port that survives ``stop``/``start``, so a test
can take the server away under a running broker.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from fleet_server.broker.accounts import BrokerUser
from fleet_server.broker.auth import mosquitto_password_hash
from fleet_server.broker.dynsec import conf_lines, write_config
from fleet_server.broker.mosquitto_http import conf_lines as plugin_conf_lines
from simulation.fleet import MosquittoProcess, Supervisor, free_port, wait_until

SERVER_USER = "edgefleet-server"
SERVER_PASSWORD = "server-password-for-tests"


class DynsecMosquitto(MosquittoProcess):
    def __init__(self, directory: Path, *, devices: Sequence[BrokerUser] = (), port: int | None = None,
                 server_user: str = SERVER_USER, server_password: str = SERVER_PASSWORD,
                 supervisor: Supervisor | None = None) -> None:
        super().__init__(supervisor, directory, auth=False, persistence=False, port=port)
        self.dynsec_file = self.directory / "dynsec.json"
        self.devices = list(devices)
        self.server_user, self.server_password = server_user, server_password

    def _write_config(self) -> Path:
        config = super()._write_config()
        if not self.dynsec_file.exists():  # a restart keeps what the plugin saved
            write_config(self.dynsec_file,
                         BrokerUser(self.server_user, mosquitto_password_hash(self.server_password), None), self.devices)
        lines = [line for line in config.read_text().splitlines() if line != "allow_anonymous true"]
        config.write_text("\n".join([*lines, *conf_lines(self.dynsec_file)]) + "\n")
        return config


class PluginMosquitto(MosquittoProcess):
    """Mosquitto with the edgefleet plugin (``plugin``: the built .so) asking ``server_url``."""

    def __init__(self, directory: Path, *, plugin: Path, server_url: str, token: str, port: int | None = None,
                 timeout_ms: int = 2000, supervisor: Supervisor | None = None) -> None:
        super().__init__(supervisor, directory, auth=False, persistence=False, port=port)
        self.plugin, self.server_url, self.timeout_ms = plugin, server_url, timeout_ms
        self.token_file = self.directory / "broker-auth-token"
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)

    def _write_config(self) -> Path:
        config = super()._write_config()
        lines = [line for line in config.read_text().splitlines() if line != "allow_anonymous true"]
        config.write_text("\n".join([*lines, *plugin_conf_lines(self.plugin, self.server_url, token_file=self.token_file,
                                                                timeout_ms=self.timeout_ms)]) + "\n")
        return config


class ServedApp:
    """An ASGI app on 127.0.0.1:``port`` (uvicorn in a thread); ``stop`` and ``start`` again on the same port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app, self.port = app, port or free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        import uvicorn

        # lifespan off: the caller owns the app's context (its database, its broker connections).
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="edgefleet-served-app", daemon=True)
        self._thread.start()
        wait_until(lambda: bool(self._server.started), 20, f"the app to serve on {self.url}", every=0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
