"""Mosquitto's dynamic-security plugin: device accounts changed one at a time, over MQTT.

The server speaks the plugin's control API (``$CONTROL/dynamic-security/v1``, JSON commands,
answers on ``.../response``) as an admin client: enrolling a device is one message of two
commands (``createRole`` with the device's own ACLs, ``createClient`` with its password, its
client id pinned to its device id and that role); revoking is ``deleteClient`` +
``deleteRole``. ``deleteClient`` disconnects the device's live session at once (the plugin
kicks it by username). No file is rewritten by the server and nothing is signalled.

What was checked on Debian's Mosquitto 2.0.11 (tests/integration/broker/test_dynsec.py):

- **Passwords.** ``createClient`` takes the password in clear text and hashes it itself
  (PBKDF2-SHA512, 101 iterations, 12-byte salt, as ``mosquitto_passwd``); there is no command
  to set a hash. The plugin's JSON file stores ``password``/``salt``/``iterations`` base64,
  which is exactly what our ``$7$`` hashes hold, so ``render_config`` writes a file (bootstrap,
  or rebuilding the broker's accounts from the registry) with no password in clear. The clear
  password goes only over the admin connection (TLS in production) and is never logged; the
  plugin logs ``password=*****``.
- **No %u/%c in ACLs.** 2.0.11 matches ACL topics literally: a role with
  ``edgefleet/v1/devices/%u/telemetry`` denies the device its own topic. So every device gets a
  role of its own (``edgefleet-device-<id>``): still one message per enrollment, whatever the
  fleet size.
- **The plugin saves its whole JSON file after every command** (``dynsec__config_save``: the
  full client and role tree printed and written). The server does constant work per
  enrollment, but the broker's work grows with the fleet; ``scripts/bench accounts`` measures
  it against the password-file rewrite (docs/benchmarks.md).
- **Shared subscriptions** are checked with their ``$share/GROUP/`` prefix, so the server's
  role grants ``subscribePattern $share/edgefleet/edgefleet/v1/#`` besides ``edgefleet/v1/#``.
- ``mosquitto_ctrl dynsec init FILE USER PASSWORD`` exists on Debian (mosquitto-clients) and
  writes an admin client with a role that may use ``$CONTROL`` only; the server adds its own
  topic role to that client at start (``ensure_server``), so either recipe works
  (docs/deployment.md).

Mosquitto has no clustering: with several broker URLs (independent nodes, one a standby),
every change goes to every node, and a node that was unreachable is reconciled when the
server's control connection to it comes back (revoked devices deleted; devices missing there
are reported, since their clear passwords are gone).

This module does not start Mosquitto or write its mosquitto.conf (``conf_lines`` gives the
lines to add).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.atomic import atomic_write_bytes
from edgefleet.brokers import BrokerAddress
from edgefleet.topics import (
    DEVICE_TO_SERVER,
    PREFIX,
    SERVER_TO_DEVICE,
    SHARE_GROUP,
    check_device_id,
    device_topic,
)
from fleet_server.broker.accounts import BrokerUser, ReadUsers
from fleet_server.broker.auth import check_username
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)

PLUGIN_PATH = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "edgefleet-device-"
SERVER_ROLE = "edgefleet-server"
ADMIN_ROLE = "edgefleet-dynsec-admin"
FILE_MODE = 0o600  # the broker's own file: it holds password hashes
DEFAULT_TIMEOUT = 10.0
# Answers that mean "already as wanted": a retried enrollment or revocation is not an error.
_ALREADY = {"Role already exists", "Client not found", "Role not found"}


# ------------------------------------------------------------------ pure: roles, clients, files

def device_role_name(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + check_device_id(device_id)


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """The device's own topics (shared/design.md's ACL): read desired and commands, write the rest.

    ``subscribeLiteral``: the device may subscribe to exactly these topics, no wildcard over them.
    """
    acls: list[dict[str, Any]] = []
    for kind in SERVER_TO_DEVICE:
        topic = device_topic(device_id, kind)
        acls += [{"acltype": "subscribeLiteral", "topic": topic, "allow": True},
                 {"acltype": "publishClientReceive", "topic": topic, "allow": True}]
    acls += [{"acltype": "publishClientSend", "topic": device_topic(device_id, kind), "allow": True}
             for kind in DEVICE_TO_SERVER]
    return acls


def server_acls() -> list[dict[str, Any]]:
    """The fleet server: everything under the prefix, and the shared subscription replicas use."""
    everything = f"{PREFIX}/#"
    return [
        {"acltype": "publishClientSend", "topic": everything, "allow": True},
        {"acltype": "publishClientReceive", "topic": everything, "allow": True},
        {"acltype": "subscribePattern", "topic": everything, "allow": True},
        {"acltype": "subscribePattern", "topic": f"$share/{SHARE_GROUP}/{everything}", "allow": True},
        {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
    ]


def admin_acls() -> list[dict[str, Any]]:
    """The control API, as ``mosquitto_ctrl dynsec init``'s admin role has it (without its ``#`` read)."""
    control = "$CONTROL/dynamic-security/#"
    return [{"acltype": kind, "topic": control, "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]


def enroll_commands(username: str, password: str, device_id: str) -> list[dict[str, Any]]:
    """One device's account: its role, then its client (password, client id pinned, that role)."""
    role = device_role_name(device_id)
    return [
        {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
        {"command": "createClient", "username": check_username(username), "password": password,
         "clientid": device_id, "roles": [{"rolename": role}]},
    ]


def revoke_commands(username: str, device_id: str) -> list[dict[str, Any]]:
    """Delete the client first: that is what kicks the live session."""
    return [{"command": "deleteClient", "username": check_username(username)},
            {"command": "deleteRole", "rolename": device_role_name(device_id)}]


def _from_hash(password_hash: str) -> dict[str, Any]:
    """A ``$7$ITER$SALT$HASH`` (``fleet_server.broker.auth``) as the plugin's file stores it."""
    parts = password_hash.split("$")
    if len(parts) != 5 or parts[1] != "7":
        raise BrokerError("a broker password is not a Mosquitto $7$ hash",
                          fix="store mosquitto_password_hash(password), never the password itself")
    base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    return {"password": parts[4], "salt": parts[3], "iterations": int(parts[2])}


def render_config(server: BrokerUser, devices: Sequence[BrokerUser] = ()) -> dict[str, Any]:
    """The plugin's JSON file: the server (admin and topic roles) and each device with its role.

    Everything denied by default; a device is enrolled by role, not by default access.
    """
    clients = [{"username": check_username(server.username), "textname": "edgefleet server",
                **_from_hash(server.password_hash), "roles": [{"rolename": ADMIN_ROLE}, {"rolename": SERVER_ROLE}]}]
    roles = [{"rolename": ADMIN_ROLE, "acls": admin_acls()}, {"rolename": SERVER_ROLE, "acls": server_acls()}]
    for user in devices:
        if user.device_id is None:
            raise BrokerError(f"broker user {user.username!r} is not a device")
        role = device_role_name(user.device_id)
        clients.append({"username": check_username(user.username), "clientid": user.device_id,
                        **_from_hash(user.password_hash), "roles": [{"rolename": role}]})
        roles.append({"rolename": role, "acls": device_acls(user.device_id)})
    return {"clients": clients, "groups": [], "roles": roles,
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True}}


def write_config(path: Path, server: BrokerUser, devices: Sequence[BrokerUser] = (), *,
                 mode: int = FILE_MODE) -> Path:
    """Write ``render_config`` atomically, for Mosquitto to read when it (re)starts.

    Only while Mosquitto is stopped: the running plugin overwrites its file from memory at the
    next change.
    """
    text = json.dumps(render_config(server, devices), indent=1) + "\n"
    try:
        atomic_write_bytes(Path(path), text.encode(), mode=mode)
    except OSError as exc:
        raise BrokerError(f"cannot write the dynamic-security file {path}: {exc.strerror}",
                          fix="check that its directory exists and is writable") from exc
    return Path(path)


def conf_lines(config_file: Path, plugin: str = PLUGIN_PATH) -> list[str]:
    """The mosquitto.conf lines that turn the plugin on (with ``per_listener_settings false``).

    ``set_tcp_nodelay``: the broker sends a command's PUBACK and then its answer, two small
    packets; with Nagle on, the answer waits for the client's delayed ACK, about 40 ms per
    enrollment (measured on 2.0.11: 48 ms median per enrollment at 100 devices, 3.7 ms without).
    """
    return [f"plugin {plugin}", f"plugin_opt_config_file {config_file}", "set_tcp_nodelay true"]


# ------------------------------------------------------------------ I/O: the control connection

@dataclass(frozen=True)
class Answer:
    command: str
    error: str | None
    data: Mapping[str, Any]


class ControlClient:
    """One admin connection to one Mosquitto node; ``call`` sends commands and waits for their answers.

    paho runs the network on its own thread and reconnects by itself. Calls are serialized:
    the plugin answers one message at a time anyway. ``on_reconnect`` runs on a thread of its
    own after every connect but the first (the caller reconciles a node that was away).
    """

    def __init__(self, address: BrokerAddress, username: str, password: str, *, ca_file: str | None = None,
                 on_reconnect: Callable[[ControlClient], None] | None = None,
                 control_topic: str = CONTROL_TOPIC) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.address = address
        self.on_reconnect = on_reconnect
        # The edgefleet Mosquitto plugin speaks the same request/response shape on its own topic
        # (fleet_server.broker.mosquitto_http).
        self.control_topic, self.response_topic = control_topic, f"{control_topic}/response"
        self._answers: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._ready = False
        self._connects = 0
        self._call_lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-accounts-{secrets.token_hex(4)}",
                             protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        client.username_pw_set(username, password)
        if address.tls:
            client.tls_set(ca_certs=ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._started = False
        # Set when a reconcile could not run (the node was unreachable): done at the next connect.
        self.reconcile_pending = False

    def start(self) -> ControlClient:
        if not self._started:
            self._started = True
            self._client.connect_async(self.address.host, self.address.port, keepalive=30)
            self._client.loop_start()
        return self

    def stop(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def call(self, commands: Sequence[Mapping[str, Any]], timeout: float = DEFAULT_TIMEOUT) -> list[Answer]:
        """Send ``commands`` in one message; their answers, in order. BrokerError on no answer in time."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._call_lock:
            with self._changed:
                if not self._changed.wait_for(lambda: self._ready, timeout):
                    raise BrokerError(f"the Mosquitto at {self.address} did not accept the server's admin "
                                      f"connection within {timeout:g} s",
                                      fix=f"check that Mosquitto runs with the plugin that serves "
                                          f"{self.control_topic} and that it accepts the server's MQTT user "
                                          "(docs/deployment.md)")
            tag = secrets.token_hex(6)
            sent = [{**command, "correlationData": f"{tag}-{i}"} for i, command in enumerate(commands)]
            info = self._client.publish(self.control_topic, json.dumps({"commands": sent}), qos=1)
            keys = [c["correlationData"] for c in sent]
            with self._changed:
                got = self._changed.wait_for(lambda: all(k in self._answers for k in keys),
                                             max(0.0, deadline - time.monotonic()))
                answers = [self._answers.pop(k) for k in keys if k in self._answers]
            if not got:
                raise BrokerError(f"the Mosquitto at {self.address} did not answer the commands "
                                  f"{', '.join(str(c['command']) for c in commands)} on {self.control_topic} "
                                  f"within {timeout:g} s (published: {info.is_published()})",
                                  fix=f"check that Mosquitto loads the plugin that serves {self.control_topic} "
                                      "and is reachable")
        return [Answer(str(a.get("command")), a.get("error"), a.get("data") or {}) for a in answers]

    # paho's thread
    def _on_connect(self, client: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            log.error("the Mosquitto at %s refused the server's admin connection: %s", self.address, reason_code)
            return
        client.subscribe(self.response_topic, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("the Mosquitto at %s refused the server's subscription to %s: is the server's user "
                      "a dynamic-security admin?", self.address, self.response_topic)
            return
        with self._changed:
            self._ready = True
            self._connects += 1
            again = self._connects > 1 or self.reconcile_pending
            self._changed.notify_all()
        if again and self.on_reconnect is not None:
            hook = self.on_reconnect
            threading.Thread(target=hook, args=(self,), name="edgefleet-accounts-reconcile", daemon=True).start()

    def _on_disconnect(self, *_args: Any) -> None:
        with self._changed:
            self._ready = False

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        try:
            document = json.loads(message.payload)
            responses = document["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed dynamic-security answer from %s", self.address)
            return
        with self._changed:
            for response in responses:
                key = response.get("correlationData") if isinstance(response, dict) else None
                if isinstance(key, str):
                    self._answers[key] = response
            self._changed.notify_all()


def _check(answers: Sequence[Answer], address: BrokerAddress, *, ok: frozenset[str] = frozenset(_ALREADY)) -> None:
    for answer in answers:
        if answer.error is not None and answer.error not in ok:
            raise BrokerError(f"the Mosquitto at {address} refused {answer.command}: {answer.error}",
                              fix="check the broker's log; docs/deployment.md has the dynamic-security recipe")


class DynsecAccounts:
    """``BrokerAccounts`` on the dynamic-security plugin of one or more Mosquitto nodes."""

    def __init__(self, addresses: Sequence[BrokerAddress], username: str, password: str, *,
                 ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not addresses:
            raise BrokerError("no broker to manage accounts on", fix="set broker_url")
        self.username = check_username(username)
        self.timeout = timeout
        self._read_users: ReadUsers | None = None
        self._lock = threading.Lock()
        self.nodes = [ControlClient(a, username, password, ca_file=ca_file, on_reconnect=self._reconcile_node)
                      for a in addresses]

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    # -- the seam
    def sync(self, read_users: ReadUsers) -> None:
        """At start: the server's roles in place, then every node matching the registry.

        A node that cannot be reached is reconciled when it can (server and broker start in
        either order, as with the files): logged, never raised.
        """
        self._read_users = read_users
        for node in self.nodes:
            try:
                self._reconcile(node, read_users)
            except BrokerError as exc:
                node.reconcile_pending = True
                log.error("broker accounts on %s not reconciled yet (done when it answers): %s", node.address,
                          exc.message)

    def enrolled(self, user: BrokerUser, password: str, read_users: ReadUsers) -> None:
        if user.device_id is None:
            raise BrokerError("only devices are enrolled")
        self._read_users = read_users
        commands = enroll_commands(user.username, password, user.device_id)
        self._each(lambda node: self._create(node, commands, user.username))
        log.info("broker account of %s created (dynamic security)", user.username)

    def revoked(self, user: BrokerUser, read_users: ReadUsers) -> None:
        if user.device_id is None:
            raise BrokerError("only devices are revoked")
        self._read_users = read_users
        commands = revoke_commands(user.username, user.device_id)
        self._each(lambda node: _check(node.call(commands, self.timeout), node.address))
        log.info("broker account of %s deleted and its session closed (dynamic security)", user.username)

    # -- inside
    def _each(self, action: Callable[[ControlClient], None]) -> None:
        """Do ``action`` on every node; raise if any failed (the node is reconciled when it is back)."""
        failures: list[BrokerError] = []
        for node in self.nodes:
            try:
                action(node)
            except BrokerError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _create(self, node: ControlClient, commands: list[dict[str, Any]], username: str) -> None:
        answers = node.call(commands, self.timeout)
        if answers[-1].error == "Client already exists":
            # A retried enrollment (the first try's answer was lost): replace it, password included.
            _check(node.call([{"command": "deleteClient", "username": username}, commands[-1]], self.timeout),
                   node.address)
            return
        _check(answers, node.address)

    def ensure_server(self, node: ControlClient) -> None:
        """The server's topic role exists and its own client has it (after ``mosquitto_ctrl dynsec init``)."""
        created, own = node.call([{"command": "createRole", "rolename": SERVER_ROLE, "acls": server_acls()},
                                  {"command": "getClient", "username": self.username}], self.timeout)
        _check([created, own], node.address)
        roles = [r.get("rolename") for r in own.data.get("client", {}).get("roles", []) if isinstance(r, dict)]
        if SERVER_ROLE in roles:
            return
        # Adding a role kicks every session of that client (the plugin re-applies ACLs that way),
        # this admin connection included: the answer is lost and paho's resend of the QoS 1
        # command gets "Internal error" (2.0.11). So fire it, then read the client back.
        with contextlib.suppress(BrokerError):
            node.call([{"command": "addClientRole", "username": self.username, "rolename": SERVER_ROLE}],
                      min(self.timeout, 3.0))
        own = node.call([{"command": "getClient", "username": self.username}], self.timeout)[0]
        roles = [r.get("rolename") for r in own.data.get("client", {}).get("roles", []) if isinstance(r, dict)]
        if SERVER_ROLE not in roles:
            raise BrokerError(f"the Mosquitto at {node.address} did not give the server's user the {SERVER_ROLE} role",
                              fix=f"mosquitto_ctrl dynsec addClientRole {self.username} {SERVER_ROLE}")

    def _reconcile(self, node: ControlClient, read_users: ReadUsers) -> None:
        with self._lock:
            self.ensure_server(node)
            listed = node.call([{"command": "listClients", "verbose": True, "count": -1}], self.timeout)[0]
            _check([listed], node.address)
            on_broker = {}
            for client in listed.data.get("clients", []):
                roles = [r.get("rolename", "") for r in client.get("roles", []) if isinstance(r, dict)]
                device_roles = [r for r in roles if r.startswith(DEVICE_ROLE_PREFIX)]
                if device_roles:
                    on_broker[str(client.get("username"))] = device_roles[0][len(DEVICE_ROLE_PREFIX):]
            wanted = {u.username for u in read_users() if u.device_id is not None}
            stale = sorted(set(on_broker) - wanted)
            for username in stale:
                _check(node.call(revoke_commands(username, on_broker[username]), self.timeout), node.address)
            missing = len(wanted - set(on_broker))
        if stale:
            log.warning("deleted %d revoked device account(s) from %s", len(stale), node.address)
        if missing:
            log.error("%d enrolled device(s) have no account on the Mosquitto at %s (created while it was "
                      "unreachable, or its dynamic-security file was replaced); they cannot connect there",
                      missing, node.address)

    def _reconcile_node(self, node: ControlClient) -> None:
        read_users = self._read_users
        if read_users is None:
            return
        try:
            self._reconcile(node, read_users)
            node.reconcile_pending = False
        except BrokerError as exc:
            node.reconcile_pending = True
            log.error("broker accounts on %s not reconciled after a reconnect: %s", node.address, exc.message)
