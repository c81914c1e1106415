"""Enrollment: redeem a one-time token for this device's identity and trust bundle.

``POST {server}/api/v1/enroll`` with ``{"token", "hostname", "agent_version"}`` (contract in
docs/contracts.md) answers the device id, its firmware profile, MQTT credentials, the API
token, the TUF root, the director's public key and the brokers (``broker_urls``, failover order). ``parse_enrollment`` checks that answer
(pure); ``enroll`` does the request with urllib (the device install carries no HTTP library)
and writes the state directory: secrets 0600, every file atomically, identity.json last, so
an interrupted enrollment never looks enrolled.

It does not talk MQTT or fetch models; ``edgefleet agent run`` does that afterwards.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import EnrollmentError, StateError
from agent.state import Credentials, Identity, StateDir, decode_director_key
from edgefleet import __version__
from edgefleet.brokers import join_broker_urls, parse_broker_urls
from edgefleet.errors import BrokerUrlError

ENROLL_PATH = "/api/v1/enroll"

Opener = Callable[..., Any]


@dataclass(frozen=True)
class Enrollment:
    """A checked enrollment answer."""

    identity: Identity
    credentials: Credentials
    profile_toml: str
    tuf_root: Mapping[str, Any]
    director_public_key: str


def parse_enrollment(document: Any, server_url: str) -> Enrollment:
    """Check the server's answer; every problem names the field."""
    if not isinstance(document, Mapping):
        raise EnrollmentError("the server's enrollment answer is not a JSON object",
                              fix="check that --server points at an edgefleet server")

    def text(key: str, required: bool = True) -> str:
        value = document.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            raise EnrollmentError(f"the server's enrollment answer lacks {key!r}",
                                  fix="upgrade the server or the agent so they speak the same contract")
        return value

    root = document.get("tuf_root")
    if not isinstance(root, Mapping) or "signed" not in root:
        raise EnrollmentError("the server's enrollment answer has no TUF root metadata ('tuf_root')")
    labels = document.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise EnrollmentError("the server's enrollment answer has malformed 'labels'")
    key = text("director_public_key")
    base = text("server_url", required=False) or server_url.rstrip("/")
    brokers = _brokers(document)
    try:
        decode_director_key(key, "director_public_key")
        identity = Identity(
            device_id=text("device_id"), server_url=base, broker_url=brokers,
            profile=text("profile"), labels={str(k): str(v) for k, v in labels.items()},
            tuf_metadata_url=text("tuf_metadata_url", required=False) or f"{base}/tuf/metadata/",
            tuf_targets_url=text("tuf_targets_url", required=False) or f"{base}/tuf/targets/")
    except StateError as exc:
        raise EnrollmentError(f"the server's enrollment answer is malformed: {exc.message}") from exc
    credentials = Credentials(mqtt_username=text("mqtt_username"), mqtt_password=text("mqtt_password", required=False),
                              api_token=text("api_token", required=False))
    return Enrollment(identity, credentials, text("profile_toml"), dict(root), key)


def _brokers(document: Mapping[str, Any]) -> str:
    """``broker_urls`` (every node, failover order) or, from a server before it, ``broker_url``;
    stored in identity.json's ``broker_url`` as one comma-separated string (``edgefleet.brokers``)."""
    listed = document.get("broker_urls")
    value: Any = listed if listed else document.get("broker_url")
    if value in (None, ""):
        return ""
    try:
        return join_broker_urls(parse_broker_urls(value))
    except BrokerUrlError as exc:
        raise EnrollmentError(f"the server's enrollment answer has a bad broker list: {exc.message}",
                              fix="set broker_public_url on the server (docs/deployment.md)") from exc


def _post_json(opener: Opener, url: str, body: Mapping[str, Any], timeout: float) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with opener(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail, fix = _error_detail(exc)
        if exc.code in (404, 409, 410, 401, 403):
            raise EnrollmentError(f"the server refused the enrollment token (HTTP {exc.code}: {detail})",
                                  fix=fix or "tokens are one-time and expire: get a new one with `edgefleet devices enroll`") from exc
        raise EnrollmentError(f"enrollment failed with HTTP {exc.code}: {detail}", fix=fix or "check the server's logs") from exc
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrollmentError(f"cannot reach the server at {url} ({reason})",
                              fix="check --server (e.g. http://HOST:8080) and the network") from exc
    except ValueError as exc:
        raise EnrollmentError(f"the server at {url} did not answer JSON", fix="check that --server points at an edgefleet server") from exc


def _error_detail(exc: urllib.error.HTTPError) -> tuple[str, str | None]:
    """The server's message and fix from an error answer (``{"detail", "fix"}``)."""
    try:
        document = json.loads(exc.read())
    except (ValueError, OSError):
        return (exc.reason if isinstance(exc.reason, str) else "no detail"), None
    if isinstance(document, Mapping):
        fix = document.get("fix")
        return str(document.get("detail") or document.get("error") or document), str(fix) if fix else None
    return str(document), None


def enroll(server_url: str, token: str, state: StateDir, *, hostname: str | None = None, force: bool = False,
           timeout: float = 30.0, opener: Opener = urllib.request.urlopen) -> Enrollment:
    """Redeem ``token`` at ``server_url`` and store the trust bundle in ``state``."""
    if state.is_enrolled() and not force:
        device = state.load_identity().device_id
        raise EnrollmentError(f"{state.path} is already enrolled as {device}",
                              fix="pass --force to enroll again (the old identity is replaced)")
    if not token:
        raise EnrollmentError("the enrollment token is empty", fix="pass the token printed by `edgefleet devices enroll`")
    url = server_url.rstrip("/") + ENROLL_PATH
    answer = _post_json(opener, url, {"token": token, "hostname": hostname or socket.gethostname(),
                                      "agent_version": __version__}, timeout)
    enrollment = parse_enrollment(answer, server_url)
    state.ensure()
    try:
        state.save_profile(enrollment.profile_toml)
    except StateError as exc:
        raise EnrollmentError(f"the server sent a firmware profile this agent cannot read: {exc.message}",
                              fix="upgrade the agent") from exc
    state.save_credentials(enrollment.credentials)
    state.save_director_public_key(enrollment.director_public_key)
    for stale in state.tuf_dir.glob("*.json"):
        # Metadata cached from a previous enrollment would not chain to the new root.
        stale.unlink()
    state.save_tuf_root(enrollment.tuf_root)
    state.save_identity(enrollment.identity)  # last: its presence means "enrolled"
    return enrollment
