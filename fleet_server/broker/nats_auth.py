"""Per-device permissions on a NATS cluster: NATS auth callout, served by the fleet server.

Why the callout and not a generated accounts config (docs/deployment.md "Scaling out"): a
config file lists every device, so each enrollment rewrites and reloads it on every node,
O(N) per enrollment, the very cost issue 13 removes from Mosquitto. With the callout, a node
asks the server at each CONNECT (MQTT or NATS) who the client is; the answer comes from the
registry, so enrolling costs the broker nothing and a revoked device is refused at its next
connect. Needs nats-server 2.10 or newer (Debian's 2.9 has no callout).

The exchange (nats-server's auth callout, non-operator mode): a node sends an authorization
request JWT, signed by the node's own nkey, on ``$SYS.REQ.USER.AUTH``; the server answers
with an authorization response JWT signed by the issuer key the nodes' config names, which
carries a user JWT for the account ``FLEET`` with the client's permissions, or an error. The
callout's own login (``auth_users``) bypasses the callout. Several replicas answer in one queue
group, so any of them serves a node.

Permissions, in NATS subjects (the MQTT gateway maps ``edgefleet/v1/devices/{id}/x`` to
``edgefleet.v1.devices.{id}.x``): a device may publish only its own ``reported``, ``events``
and ``telemetry`` and subscribe only to its own ``desired`` and ``commands``; an MQTT client
must use its device id as client id (else it could take over another device's session). The
server's own login gets everything in ``FLEET``.

Pure: nkey encoding, JWTs, permissions and ``authorize`` (request in, response out). I/O:
``Issuer`` (the key file), ``AuthCallout`` (the subscription) and ``NatsAccounts`` (the
``BrokerAccounts`` seam: nothing to write at enrollment; at revocation the device's live
connections are closed through the system account).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.atomic import atomic_write_bytes
from fleet_server.broker.access import Grant, Login, decide, device_grant, server_grant
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)
__all__ = ["AuthCallout", "CalloutError", "Grant", "Issuer", "Login", "NatsAccounts", "authorize", "decide",
           "device_grant", "parse_request", "server_grant"]

CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE_GROUP = "edgefleet-auth"
ACCOUNT = "FLEET"  # the account devices and the server land in (the nodes' config defines it)
# nkey version bytes (github.com/nats-io/nkeys): the first base32 letter names the kind.
PREFIX_ACCOUNT = 0  # 'A'
PREFIX_SERVER = 13 << 3  # 'N'
PREFIX_USER = 20 << 3  # 'U'
USER_JWT_TTL_S = 24 * 3600  # a connection outlives it; a reconnect asks again


class CalloutError(BrokerError):
    """An authorization request that is not one: bad JWT, bad signature, wrong kind."""


# ---- nkeys and JWTs (pure) ---------------------------------------------------------------------

def _crc16(data: bytes) -> int:
    crc = 0  # CRC-16/XMODEM, as nkeys computes it
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_nkey(prefix: int, raw: bytes) -> str:
    body = bytes([prefix]) + raw
    return base64.b32encode(body + _crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def decode_nkey(prefix: int, text: str) -> bytes:
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError) as exc:
        raise CalloutError(f"{text[:8]}... is not an nkey") from exc
    body, crc = data[:-2], int.from_bytes(data[-2:], "little")
    if len(body) != 33 or body[0] != prefix or _crc16(body) != crc:
        raise CalloutError(f"{text[:8]}... is not a valid nkey of the expected kind")
    return body[1:]


def public_nkey(key: Ed25519PrivateKey, prefix: int = PREFIX_ACCOUNT) -> str:
    return encode_nkey(prefix, key.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())


def sign_jwt(claims: Mapping[str, Any], key: Ed25519PrivateKey, now: float) -> str:
    """A NATS JWT (ed25519-nkey) of ``claims``, with ``iat`` and ``jti`` added."""
    body = {**claims, "iat": int(now)}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
                                   ).decode().rstrip("=")
    payload = f"{_HEADER}.{_b64(json.dumps(body).encode())}"
    return f"{payload}.{_b64(key.sign(payload.encode()))}"


def read_jwt(token: str, issuer_prefix: int = PREFIX_SERVER) -> dict[str, Any]:
    """The claims of a JWT whose signature checks against its own ``iss`` nkey (of ``issuer_prefix``)."""
    try:
        header, body, signature = token.strip().split(".")
        claims = json.loads(_unb64(body))
    except (ValueError, TypeError) as exc:
        raise CalloutError("the authorization request is not a JWT") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise CalloutError("the authorization request has no issuer")
    public = Ed25519PublicKey.from_public_bytes(decode_nkey(issuer_prefix, claims["iss"]))
    try:
        public.verify(_unb64(signature), f"{header}.{body}".encode())
    except InvalidSignature as exc:
        raise CalloutError("the authorization request's signature does not check") from exc
    return claims


# ---- who may do what (pure) --------------------------------------------------------------------

# Grants, logins and ``decide`` are shared with the HTTP broker-auth endpoint: fleet_server.broker.access.
GrantFor = Callable[[Login], Grant | None]


@dataclass(frozen=True)
class Request:
    server_id: str
    user_nkey: str
    login: Login


def parse_request(claims: Mapping[str, Any]) -> Request:
    nats = claims.get("nats")
    if not isinstance(nats, dict) or nats.get("type") != "authorization_request":
        raise CalloutError("not an authorization request")
    server, options, client = nats.get("server_id") or {}, nats.get("connect_opts") or {}, nats.get("client_info") or {}
    user_nkey = nats.get("user_nkey")
    if not isinstance(user_nkey, str) or not isinstance(server.get("id"), str):
        raise CalloutError("the authorization request names no user nkey or server")
    return Request(server["id"], user_nkey, Login(str(options.get("user") or ""), str(options.get("pass") or ""),
                                                  str(client.get("type") or "nats"),
                                                  client.get("mqtt_id"), str(client.get("host") or "")))


def authorize(request: Request, grant: Grant | None, why: str, issuer: Ed25519PrivateKey, now: float) -> str:
    """The authorization response JWT for ``request``: a user JWT with ``grant``'s permissions, or ``why``."""
    issuer_nkey = public_nkey(issuer)
    response: dict[str, Any] = {"aud": request.server_id, "sub": request.user_nkey, "iss": issuer_nkey,
                                "nats": {"type": "authorization_response", "version": 2}}
    if grant is None:
        response["nats"]["error"] = why
    else:
        user = {"sub": request.user_nkey, "iss": issuer_nkey, "aud": ACCOUNT, "name": grant.name,
                "exp": int(now + USER_JWT_TTL_S),
                "nats": {**grant.permissions(), "type": "user", "version": 2}}
        response["nats"]["jwt"] = sign_jwt(user, issuer, now)
    return sign_jwt(response, issuer, now)


# ---- the key and the service -------------------------------------------------------------------

class Issuer:
    """The callout's signing key: created once (0600), its public nkey goes in every node's config."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.public = public_nkey(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Issuer:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise BrokerError(f"{path} is not an Ed25519 key", fix="move it away; the server makes a new one")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), mode=0o600)
        issuer = cls(key)
        atomic_write_bytes(path.with_suffix(".pub"), (issuer.public + "\n").encode(), mode=0o644)
        log.warning("created the NATS auth callout issuer key %s: put issuer: %s in every node's auth_callout",
                    path, issuer.public)
        return issuer


@dataclass
class _Counts:
    granted: int = 0
    refused: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class AuthCallout:
    """Answers the nodes' authorization requests; a thread with its own event loop.

    ``grant_for(login)`` decides (the registry's lookup; called on a worker thread). ``start()``
    returns at once and retries an unreachable cluster; ``wait_ready`` waits for the subscription.
    """

    def __init__(self, servers: Sequence[str], *, user: str, password: str, issuer: Issuer,
                 grant_for: GrantFor, clock: Callable[[], float] = time.time) -> None:
        self.servers = list(servers)
        self.user, self.password = user, password
        self.issuer = issuer
        self.grant_for = grant_for
        self.clock = clock
        self.ready = threading.Event()
        self.counts = _Counts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="edgefleet-nats-auth",
                                        daemon=True)

    def start(self) -> AuthCallout:
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def answer(self, data: bytes) -> bytes:
        """The response to one request (its signature checked; a malformed one is refused in the log)."""
        request = parse_request(read_jwt(data.decode(errors="replace")))
        try:
            found = self.grant_for(request.login)
        except Exception:  # the registry is down: refuse this connect, not the whole service
            log.exception("looking up NATS login %r failed", request.login.user)
            found = None
        grant, why = decide(request.login, found)
        with self.counts.lock:
            if grant is None:
                self.counts.refused += 1
            else:
                self.counts.granted += 1
        if grant is None:
            log.info("refused NATS %s login %r from %s: %s", request.login.client_type, request.login.user,
                     request.login.host, why)
        return authorize(request, grant, why, self.issuer.key, self.clock()).encode()

    async def _main(self) -> None:
        import nats

        async def error(exc: Exception) -> None:
            log.debug("NATS auth callout client: %s", exc)

        while not self._stop.is_set():
            try:
                nc = await nats.connect(self.servers, user=self.user, password=self.password, name="edgefleet-auth",
                                        max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                                        error_cb=error)
            except Exception as exc:  # nats-py raises several kinds; all mean "not yet"
                log.warning("auth callout cannot connect to NATS at %s: %s; retrying", ", ".join(self.servers), exc)
                await asyncio.sleep(1.0)
                continue

            async def handle(message: Any) -> None:
                try:
                    reply = await asyncio.to_thread(self.answer, message.data)
                except CalloutError as exc:
                    with self.counts.lock:
                        self.counts.errors += 1
                    log.warning("ignored a malformed authorization request: %s", exc.message)
                    return
                await message.respond(reply)

            try:
                await nc.subscribe(CALLOUT_SUBJECT, queue=QUEUE_GROUP, cb=handle)
                await nc.flush(timeout=5)
            except Exception as exc:  # a node going away under us: start over
                log.warning("auth callout cannot subscribe: %s; retrying", exc)
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(1.0)
                continue
            try:
                self.ready.set()
                log.info("serving NATS auth callout for %s", ", ".join(self.servers))
                while not self._stop.is_set():
                    await asyncio.sleep(0.2)
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await nc.close()


# ---- revocation: the live connection closed at once --------------------------------------------

KICK_LISTEN_S = 0.3  # after the first node's CONNZ answer, how long the others have to answer


class NatsAccounts:
    """``BrokerAccounts`` for a cluster whose nodes ask the callout: nothing to write, ever.

    Enrolling and syncing cost the cluster nothing (the callout reads the registry at each
    CONNECT). Revoking refuses the next CONNECT by itself; with a system-account login
    (``system``: user, password in the nodes' ``SYS`` account) it also closes the device's live
    connections at once: ``$SYS.REQ.SERVER.PING.CONNZ`` finds them on every node (MQTT client id
    or NATS user), ``$SYS.REQ.SERVER.<id>.KICK`` closes each. Without it, a revoked device keeps
    its open connection until it reconnects (logged).
    """

    def __init__(self, servers: Sequence[str], system: tuple[str, str] | None = None) -> None:
        self.servers = list(servers)
        self.system = system

    def sync(self, read_users: Callable[[], Sequence[Any]]) -> None:
        log.debug("NATS accounts come from the auth callout; nothing to write")

    def enrolled(self, user: Any, password: str, read_users: Callable[[], Sequence[Any]]) -> None:
        log.debug("NATS accounts come from the auth callout; nothing to write for %s", user.username)

    def revoked(self, user: Any, read_users: Callable[[], Sequence[Any]]) -> None:
        if self.system is None:
            log.warning("device %s is refused at its next NATS connect; its open connection stays until then "
                        "(set nats_system_user to close it at once)", user.device_id)
            return
        try:
            kicked = asyncio.run(self._kick(user.device_id, user.username))
        except Exception as exc:  # the revocation itself stands (the callout refuses the next connect)
            raise BrokerError(f"device {user.device_id} revoked, but its live NATS connection was not closed: {exc}",
                              fix="check nats_system_user and the nodes' SYS account; it is refused at its "
                                  "next connect anyway") from exc
        log.info("closed %d live connection(s) of revoked device %s", kicked, user.device_id)

    async def _kick(self, device_id: str | None, username: str) -> int:
        import nats

        assert self.system is not None
        nc = await nats.connect(self.servers, user=self.system[0], password=self.system[1], connect_timeout=2,
                                max_reconnect_attempts=1, name="edgefleet-revoke")
        try:
            found: list[tuple[str, int]] = []
            answered = asyncio.Event()

            async def collect(message: Any) -> None:
                reply = json.loads(message.data)
                server_id = str((reply.get("server") or {}).get("id"))
                for conn in (reply.get("data") or {}).get("connections") or []:
                    found.append((server_id, int(conn["cid"])))
                answered.set()

            inbox = nc.new_inbox()
            await nc.subscribe(inbox, cb=collect)
            filters = [{"user": username}] + ([{"mqtt_client": device_id}] if device_id else [])
            for connz_filter in filters:
                await nc.publish("$SYS.REQ.SERVER.PING.CONNZ", json.dumps(connz_filter).encode(), reply=inbox)
            # Every node answers once per request; wait for the first, then a moment for the rest.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 2.0)
            await asyncio.sleep(KICK_LISTEN_S)
            for server_id, cid in set(found):
                await nc.request(f"$SYS.REQ.SERVER.{server_id}.KICK", json.dumps({"cid": cid}).encode(), timeout=2)
            return len(set(found))
        finally:
            await nc.close()
