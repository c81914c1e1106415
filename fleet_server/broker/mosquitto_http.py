"""Mosquitto asking the fleet server at each CONNECT: the ``mosquitto-http`` accounts backend.

The edgefleet Mosquitto plugin (``mosquitto_plugin/edgefleet_auth.c``, built on the broker host
with ``python -m fleet_server.broker.plugin build``) sends every CONNECT's username, password and
client id to the server's broker-auth endpoint (``fleet_server.broker.auth_api``) and decides each
publish and subscribe itself from the answer it remembered. So the broker holds no device
accounts: **enrolling a device costs the broker nothing**, whatever the fleet size (the
dynamic-security plugin rewrites its whole JSON file per enrollment; docs/benchmarks.md).

Revoking a device: the registry refuses its next CONNECT by itself; ``revoked`` also sends
``kickDevice`` on the plugin's control topic (``$CONTROL/edgefleet-auth/v1``, the server's
account only), which drops the plugin's grant and closes the live session at once. The
request/response shape is the dynamic-security plugin's, so ``dynsec.ControlClient`` carries it.

The trade-off: a new CONNECT needs a server replica to answer (unreachable: refused; sessions
already open carry on). This module does not start Mosquitto or write its mosquitto.conf
(``conf_lines`` gives the lines).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.brokers import BrokerAddress
from fleet_server.broker.accounts import BrokerUser, ReadUsers
from fleet_server.broker.dynsec import ControlClient
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/edgefleet-auth/v1"
PLUGIN_FILE = "edgefleet_auth.so"
AUTH_PATH = "/api/v1/broker/auth"
ACL_PATH = "/api/v1/broker/acl"
DEFAULT_TIMEOUT_MS = 2000
DEFAULT_TIMEOUT = 10.0


def conf_lines(plugin: Path | str, server_url: str, *, token_file: Path | str | None = None,
               token: str | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[str]:
    """The mosquitto.conf lines that load the plugin (global, with ``per_listener_settings false``).

    ``server_url`` is the fleet server's base URL as the broker reaches it (a load balancer in
    front of the replicas). Prefer ``token_file`` (mode 0640, group mosquitto) over ``token``:
    mosquitto.conf is often world-readable. ``timeout_ms`` bounds each CONNECT's call; Mosquitto
    handles clients on one thread, so a server that does not answer stalls the broker this long.
    """
    if (token_file is None) == (token is None):
        raise BrokerError("the plugin needs the broker-auth token: give token_file or token, not both",
                          fix="token_file: the file holding broker_auth_token (DATA_DIR/broker-auth-token)")
    if timeout_ms <= 0:
        raise BrokerError(f"timeout_ms {timeout_ms} must be positive", fix=f"e.g. {DEFAULT_TIMEOUT_MS}")
    secret = f"plugin_opt_token_file {token_file}" if token_file is not None else f"plugin_opt_token {token}"
    return [f"plugin {plugin}", f"plugin_opt_url {server_url.rstrip('/')}{AUTH_PATH}", secret,
            f"plugin_opt_timeout_ms {timeout_ms}", "allow_anonymous false",
            # The control answer is two small packets (PUBACK, then the response): see dynsec.conf_lines.
            "set_tcp_nodelay true"]


def kick_command(username: str) -> dict[str, str]:
    return {"command": "kickDevice", "username": username}


class MosquittoHttpAccounts:
    """``BrokerAccounts`` for Mosquitto nodes running the edgefleet plugin: only revocation talks to them.

    ``on_revoked(username)`` runs first (the endpoint's cache of verified logins forgets it). A
    kick that does not reach a node (the server cut off from it while devices are not) is kept
    and sent again when the control connection to that node comes back, and before every later
    revocation; a node that restarted has no sessions left to close, so a repeat is harmless.
    """

    def __init__(self, addresses: Sequence[BrokerAddress], username: str, password: str, *,
                 ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 on_revoked: Callable[[str], None] | None = None) -> None:
        if not addresses:
            raise BrokerError("no broker to send revocations to", fix="set broker_url")
        self.timeout = timeout
        self.on_revoked = on_revoked
        self._lock = threading.Lock()
        self.nodes = [ControlClient(a, username, password, ca_file=ca_file, control_topic=CONTROL_TOPIC,
                                    on_reconnect=self._reconnected) for a in addresses]
        self._pending: dict[int, set[str]] = {id(node): set() for node in self.nodes}  # kicks owed per node

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    def sync(self, read_users: ReadUsers) -> None:
        log.debug("Mosquitto asks the server at each CONNECT (mosquitto-http); nothing to write")

    def enrolled(self, user: BrokerUser, password: str, read_users: ReadUsers) -> None:
        log.debug("nothing to write at the broker for %s (mosquitto-http)", user.username)

    def revoked(self, user: BrokerUser, read_users: ReadUsers) -> None:
        if self.on_revoked is not None:
            self.on_revoked(user.username)
        failures: list[str] = []
        for node in self.nodes:
            with self._lock:
                self._pending[id(node)].add(user.username)
            failure = self._send_pending(node)
            if failure is not None:
                failures.append(failure)
        if failures:
            # The revocation stands: the registry refuses the device's next CONNECT anyway.
            raise BrokerError(f"device {user.device_id} revoked, but its live session was not closed: "
                              f"{'; '.join(failures)}",
                              fix="check that Mosquitto loads the edgefleet plugin and is reachable "
                                  "(docs/deployment.md); the kick is sent again when it is, and the device is "
                                  "refused at its next connect anyway")
        log.info("closed the live session of revoked device %s (mosquitto-http)", user.device_id)

    def _reconnected(self, node: ControlClient) -> None:
        failure = self._send_pending(node)
        if failure is not None:
            log.error("kicks owed to %s not sent after its reconnect: %s", node.address, failure)

    def _send_pending(self, node: ControlClient) -> str | None:
        """Send every kick ``node`` is owed; why one failed, or None."""
        with self._lock:
            owed = sorted(self._pending[id(node)])
        for username in owed:
            try:
                answer = node.call([kick_command(username)], self.timeout)[0]
            except BrokerError as exc:
                node.reconcile_pending = True  # its next connect sends them (dynsec.ControlClient)
                return exc.message
            if answer.error is not None:
                return f"the Mosquitto at {node.address} refused kickDevice: {answer.error}"
            with self._lock:
                self._pending[id(node)].discard(username)
        node.reconcile_pending = False
        if len(owed) > 1:
            log.info("closed the sessions of %d revoked device(s) on %s", len(owed), node.address)
        return None
