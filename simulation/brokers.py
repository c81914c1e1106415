"""A Mosquitto with the dynamic-security plugin, configured by the server's own recipe (tests and bench).

``DynsecMosquitto`` is ``simulation.fleet.MosquittoProcess`` whose mosquitto.conf loads the
plugin (``fleet_server.broker.dynsec.conf_lines``) and whose plugin file is written by
``fleet_server.broker.dynsec.write_config`` with the server's account (hashed) and any
devices given, as docs/deployment.md tells an operator to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleet_server.broker.accounts import BrokerUser
from fleet_server.broker.auth import mosquitto_password_hash
from fleet_server.broker.dynsec import conf_lines, write_config
from simulation.fleet import MosquittoProcess, Supervisor

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
