"""The HTTP broker-auth endpoint: brokers ask the fleet server who may connect and what each login may do.

Called by the edgefleet Mosquitto plugin (``broker_accounts = "mosquitto-http"``) at each CONNECT,
and usable as is by EMQX's HTTP authenticator and authorizer, mosquitto-go-auth's HTTP backend
(``params_mode json``, ``response_mode json``), VerneMQ's webhooks (their own shape, below) and a
HiveMQ extension (docs/deployment.md, "Brokers that ask over HTTP"; the wire shape is in
docs/contracts.md):

    POST /api/v1/broker/auth   {"username", "password", "clientid"}
    POST /api/v1/broker/acl    {"username", "clientid", "topic", "access": read|write|subscribe|unsubscribe}
                               ("action": publish|subscribe and go-auth's numeric "acc" are read too)
    POST /api/v1/broker/vernemq  VerneMQ's webhooks (fleet_server.broker.vernemq), its own answers
    all need Authorization: Bearer <broker_auth_token> (or Basic with it as the password); the
    first two answer 200 with
    {"result": "allow"|"deny", "is_superuser": bool, "ok": bool, "error": str, "device_id": str|null}

A decision is always HTTP 200 (EMQX reads ``result``, go-auth ``ok``); 401 means the caller is
not a broker, 503 that the registry could not be read (both refuse the client). The checks are
``fleet_server.broker.access`` (the same as the NATS auth callout's) on the server's lookups:
one registry row per login through ``fleet_server.broker.logins.LoginChecker``, with its cache of
recent verifications and its per-username failure throttle.

Not here: the Mosquitto side (``mosquitto_plugin/edgefleet_auth.c``) and revocation's kick
(``fleet_server.broker.mosquitto_http``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fleet_server.broker.access import Grant, Login, decide, mqtt_allowed, parse_access
from fleet_server.credentials import same_secret
from fleet_server.errors import AuthError, ConfigError, NotFoundError, ServerError

log = logging.getLogger(__name__)
MIN_TOKEN_CHARS = 16


class BrokerUnavailableError(ServerError):
    """The registry could not be read: the broker refuses the client (and retries at its next CONNECT)."""

    status_code = 503


@dataclass(frozen=True)
class Answer:
    grant: Grant | None
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        allowed = self.grant is not None
        return {"result": "allow" if allowed else "deny", "ok": allowed, "error": self.why,
                "is_superuser": bool(self.grant is not None and self.grant.is_server),
                "device_id": None if self.grant is None else self.grant.device_id}


GrantFor = Callable[[Login], Grant | None]  # a login (password checked) -> its grant
UserGrant = Callable[[str], Grant | None]  # a username -> its grant (no password: the ACL check)


class BrokerAuth:
    """The endpoint's decisions on the server's lookups (``ServerContext.broker_grant``, ``user_grant``)."""

    def __init__(self, token: str, *, grant_for: GrantFor, user_grant: UserGrant) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"broker_auth_token is shorter than {MIN_TOKEN_CHARS} characters",
                              fix="use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        self.token = token
        self.grant_for, self.user_grant = grant_for, user_grant

    def caller_ok(self, authorization: str | None) -> bool:
        """``Bearer <token>``; or ``Basic`` with the token as password, for brokers that can only put
        credentials in the URL (VerneMQ's webhooks: ``http://broker:<token>@fleet/...``)."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(given.strip(), validate=True).decode().partition(":")[2]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return same_secret(given.strip(), self.token)

    def authenticate(self, username: str, password: str, clientid: str) -> Answer:
        login = Login(username, password, "mqtt", clientid)
        return Answer(*decide(login, self._registry(self.grant_for, login)))

    def authorize(self, username: str, clientid: str, topic: str, access: str) -> Answer:
        try:
            kind = parse_access(access)
        except ValueError as exc:
            return Answer(None, str(exc))
        granted, why = decide(Login(username, "", "mqtt", clientid), self._registry(self.user_grant, username))
        if granted is None:
            return Answer(None, why)
        if not mqtt_allowed(granted, topic, kind):
            return Answer(None, f"{username} may not {kind} {topic!r}")
        return Answer(granted)

    @staticmethod
    def _registry(lookup: Callable[[Any], Grant | None], key: Any) -> Grant | None:
        try:
            return lookup(key)
        except Exception as exc:  # the database is away: refuse this one, say so (the broker retries)
            log.exception("broker-auth lookup failed")
            raise BrokerUnavailableError("the registry could not be read", fix="check the database") from exc


# ---- the wire ----------------------------------------------------------------------------------

_CLIENT_ID = AliasChoices("clientid", "client_id", "clientId")


class AuthBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str = Field(default="", max_length=256)
    password: str = Field(default="", max_length=1024)
    clientid: str = Field(default="", max_length=256, validation_alias=_CLIENT_ID)


class AclBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str = Field(default="", max_length=256)
    clientid: str = Field(default="", max_length=256, validation_alias=_CLIENT_ID)
    topic: str = Field(max_length=65535)
    access: str | int = Field(validation_alias=AliasChoices("access", "action", "acc"))


class Decision(BaseModel):
    result: Literal["allow", "deny"]
    ok: bool
    error: str
    is_superuser: bool
    device_id: str | None


router = APIRouter(prefix="/api/v1/broker", tags=["broker-auth"])


def _count(request: Request, check: str, allowed: bool) -> None:
    metrics = getattr(request.app.state.ctx, "metrics", None)
    if metrics is not None:
        metrics.broker_auth.labels(check, "allow" if allowed else "deny").inc()


def _service(request: Request, authorization: str | None) -> BrokerAuth:
    service: BrokerAuth | None = getattr(request.app.state.ctx, "broker_auth", None)
    if service is None:
        raise NotFoundError("the broker-auth endpoint is off on this server",
                            fix="set broker_auth_token (or broker_accounts = \"mosquitto-http\") in the server config")
    if not service.caller_ok(authorization):
        raise AuthError("the broker-auth endpoint needs the broker token: 'Authorization: Bearer <broker_auth_token>'",
                        fix="configure the broker's HTTP auth with the server's broker_auth_token")
    return service


@router.post("/auth", response_model=Decision, summary="may this login connect? (brokers only)")
def broker_auth(request: Request, body: AuthBody,
                authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    answer = _service(request, authorization).authenticate(body.username, body.password, body.clientid)
    _count(request, "auth", answer.grant is not None)
    if answer.grant is None:
        log.info("broker login %r (client id %r) refused: %s", body.username, body.clientid, answer.why)
    return answer.to_dict()


@router.post("/acl", response_model=Decision, summary="may this login use this topic? (brokers only)")
def broker_acl(request: Request, body: AclBody,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    answer = _service(request, authorization).authorize(body.username, body.clientid, body.topic, str(body.access))
    _count(request, "acl", answer.grant is not None)
    return answer.to_dict()


@router.post("/vernemq", summary="VerneMQ's auth_on_register/publish/subscribe webhooks (brokers only)")
def broker_vernemq(request: Request, body: Annotated[dict[str, Any], Body()],
                   vernemq_hook: Annotated[str, Header()] = "",
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    from fleet_server.broker.vernemq import answer

    reply, why = answer(_service(request, authorization), vernemq_hook, body)
    _count(request, "vernemq", not why)
    if why:
        log.info("VerneMQ %s for %r refused: %s", vernemq_hook, body.get("username"), why)
    return reply
