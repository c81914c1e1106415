"""The REST API (FastAPI routers): admin, device and TUF endpoints, and their wire schemas.

Routes are thin: they validate input with Pydantic, call ``Registry`` / ``Devices`` and turn
results into JSON. Services raise ``ServerError`` subclasses, which ``fleet_server.app`` maps
to one HTTP status each, with problem details bodies (``edgefleet.problems``); bad input never reaches
a service unchecked, so it gets a 4xx naming the field, not a 500.

    admin  (Authorization: Bearer <admin token>)
      POST   /api/v1/models                               upload a bundle (multipart field "bundle")
      GET    /api/v1/models                               list (?name=)
      GET    /api/v1/models/{name}/{version}              one version with its manifest
      POST   /api/v1/models/{name}/{version}/yank         never assign it again
      POST   /api/v1/devices/enrollment-tokens            one-time, expiring token
      GET    /api/v1/devices                              list (?status=), with the fleet view's columns
      GET    /api/v1/devices/{id}
      PATCH  /api/v1/devices/{id}/labels                  {"labels": {k: v or null}}
      POST   /api/v1/devices/{id}/revoke
    device
      POST   /api/v1/enroll                               token in the body (docs/contracts.md)
      GET    /api/v1/device/self                          Authorization: Bearer <api token>
    public, read-only
      GET    /tuf/metadata/{file}, /tuf/targets/{path}    the TUF repository (Range supported);
                                                          with private_targets, targets need a device's
                                                          API token (Bearer)
      GET    /healthz

Fleet drift, server-side predict and /metrics are in ``fleet_server.telemetry.api``. This module
does not start anything; ``fleet_server.app.create_app`` assembles the app.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.errors import VersionError
from edgefleet.version import SEMVER_PATTERN, ModelVersion
from fleet_server.context import ServerContext
from fleet_server.credentials import same_secret
from fleet_server.errors import AuthError, InvalidInputError, NotFoundError
from fleet_server.registry.devices import DeviceRecord

MODEL_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_METADATA_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")

_bearer = HTTPBearer(auto_error=False, description="the admin token, or a device's API token")


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(context)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_admin(ctx: Ctx, credentials: Bearer) -> None:
    if credentials is None:
        raise AuthError("this call needs the admin token: send 'Authorization: Bearer <token>'",
                        fix="set EDGEFLEET_TOKEN or pass --token (the token is in DATA_DIR/admin-token)")
    if not same_secret(credentials.credentials, ctx.admin_token.value):
        raise AuthError("the admin token is wrong", fix="use the token from DATA_DIR/admin-token or the server config")


def require_device(ctx: Ctx, credentials: Bearer) -> DeviceRecord:
    if credentials is None:
        raise AuthError("this call needs the device's API token: send 'Authorization: Bearer <api_token>'",
                        fix="the agent reads it from its credentials.json")
    return ctx.devices.authenticate(credentials.credentials)


def checked_version(version: str) -> str:
    try:
        ModelVersion.parse(version)
    except VersionError as exc:
        raise InvalidInputError(f"version: {exc.message}", fix=exc.fix) from exc
    return version


Admin = [Depends(require_admin)]
ModelName = Annotated[str, PathParam(pattern=MODEL_NAME, description="model name")]
Version = Annotated[str, PathParam(max_length=128, pattern=SEMVER_PATTERN, description="semantic version, e.g. 1.2.0")]
DeviceId = Annotated[str, PathParam(pattern=DEVICE_ID, description="device id, e.g. dev-3f2a9c01b2d4")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Strict):
    profile: str = Field(min_length=1, max_length=64, description="firmware profile, e.g. rpi4-64")
    labels: dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=128)]] = Field(
        default_factory=dict, max_length=32)
    ttl_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600,
                                    description="how long the token stays valid (default: server setting)")


class LabelsPatch(_Strict):
    labels: dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=128)] | None] = Field(
        max_length=32, description="label -> new value; null removes the label")


class EnrollRequest(_Strict):
    token: str = Field(min_length=1, max_length=256)
    hostname: str = Field(default="", max_length=255)
    agent_version: str = Field(default="", max_length=64)


class ModelOut(BaseModel):
    name: str
    version: str
    sha256: str
    length: int
    target_path: str = Field(description="TUF target path, NAME/NAME-VERSION.tar.gz")
    profiles: list[str]
    yanked: bool
    created_at: str


class ModelDetailOut(ModelOut):
    manifest: dict[str, Any]


class PushOut(ModelDetailOut):
    created: bool = Field(description="false when identical bytes were already published")


class TokenOut(BaseModel):
    token: str
    profile: str
    labels: dict[str, str]
    expires_at: str
    server_url: str
    agent_command: str = Field(description="what to run on the device")


class DeviceOut(BaseModel):
    id: str
    profile: str
    labels: dict[str, str]
    status: str = Field(description="enrolled or revoked")
    online: bool
    last_seen: str | None
    hostname: str
    agent_version: str
    enrolled_at: str | None
    revoked_at: str | None
    reported: dict[str, Any] | None = Field(description="the device's last `reported` document")
    mqtt_username: str
    assignment_counter: int


class DeviceRowOut(DeviceOut):
    """A device in the list, with the fleet view's columns (fleet_server.telemetry.views)."""

    state: str = Field(description="online, offline or revoked, with the update state when not idle")
    versions: dict[str, str] = Field(description="model -> version, as reported")
    p95_ms: float | None = Field(description="latest p95 latency in ms (worst model) in the telemetry window")
    drift_band: str | None = Field(description="worst drift band of the device's models in the window")
    problems: list[str] = Field(description="what the fleet views skipped or ignored of this device's data "
                                            "(malformed counts, batches dated in the future, a malformed report)")


class RefusalOut(BaseModel):
    """One device's messages refused (or clamped) at ingest for one topic and reason (docs/telemetry.md)."""

    topic: str = Field(description="telemetry, events or reported")
    reason: str = Field(description="why, one of a closed set (docs/telemetry.md, \"Refused messages\")")
    count: int
    first_at: str
    last_at: str
    detail: str = Field(description="what was wrong with the last one, for people")


class DeviceDetailOut(DeviceRowOut):
    """One device, with what the ingest refused of its messages (fleet_server.telemetry.refusals)."""

    refused_messages: list[RefusalOut] = Field(description="messages never stored, by topic and reason")
    clamped_messages: list[RefusalOut] = Field(description="messages stored with the server's time: the device's "
                                                           "clock was ahead")


class EnrollmentOut(BaseModel):
    """docs/contracts.md, "Enrollment"."""

    device_id: str
    profile: str
    profile_toml: str
    labels: dict[str, str]
    broker_url: str | None = Field(description="the first of broker_urls, for agents that read one broker")
    broker_urls: list[str] = Field(default_factory=list,
                                   description="every broker node, in the order to try them (failover)")
    mqtt_username: str
    mqtt_password: str
    api_token: str
    server_url: str
    tuf_root: dict[str, Any]
    tuf_metadata_url: str
    tuf_targets_url: str
    director_public_key: str = Field(description="base64 of the 32 raw Ed25519 bytes")


class HealthProblemOut(BaseModel):
    reason: str = Field(description="deaf: the subscription delivers nothing, not even the server's own probe; "
                                    "silent: devices are enrolled and none has sent anything for a while")
    detail: str
    fix: str


class HealthOut(BaseModel):
    status: str = Field(description="ok, or degraded when the ingest receives nothing (see problems); "
                                    "the API still serves either way")
    mqtt_connected: bool
    tuf_root_version: int
    problems: list[HealthProblemOut] = Field(default_factory=list)


api = APIRouter(prefix="/api/v1")
tuf = APIRouter(prefix="/tuf", tags=["tuf"])
health = APIRouter()


# ------------------------------------------------------------------ models

@api.post("/models", tags=["models"], dependencies=Admin, status_code=201, response_model=PushOut,
          responses={200: {"description": "identical bundle already published (idempotent)"},
                     409: {"description": "name+version already published with different bytes"},
                     413: {"description": "upload over the size limit"}})
def push_model(ctx: Ctx, response: Response,
               bundle: Annotated[UploadFile, File(description="a bundle made by `edgefleet convert`")]) -> dict[str, Any]:
    """Publish a bundle: validated, stored, and signed into the TUF repository."""
    staging = ctx.config.data_dir / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=staging, suffix=".tar.gz") as tmp:
        bundle.file.seek(0)
        shutil.copyfileobj(bundle.file, tmp, 1 << 20)
        tmp.flush()
        size = tmp.tell()
        if size > ctx.config.max_upload_bytes:
            raise HTTPException(413, f"bundle is {size} bytes, over the server's {ctx.config.max_upload_bytes}-byte limit")
        if size == 0:
            raise InvalidInputError("bundle: the uploaded file is empty", fix="upload the .tar.gz from `edgefleet convert`")
        info, created = ctx.registry.push(Path(tmp.name))
    response.status_code = 201 if created else 200
    return {**info.to_dict(), "created": created}


@api.get("/models", tags=["models"], dependencies=Admin, response_model=list[ModelOut])
def list_models(ctx: Ctx, name: Annotated[str | None, Query(pattern=MODEL_NAME)] = None) -> list[dict[str, Any]]:
    return [m.to_dict(manifest=False) for m in ctx.registry.list(name)]


@api.get("/models/{name}/{version}", tags=["models"], dependencies=Admin, response_model=ModelDetailOut)
def show_model(ctx: Ctx, name: ModelName, version: Version) -> dict[str, Any]:
    return ctx.registry.get(name, checked_version(version)).to_dict()


@api.post("/models/{name}/{version}/yank", tags=["models"], dependencies=Admin, response_model=ModelOut)
def yank_model(ctx: Ctx, name: ModelName, version: Version) -> dict[str, Any]:
    """Mark a version as never assignable again. Its TUF target stays, so running devices still verify it."""
    return ctx.registry.yank(name, checked_version(version)).to_dict(manifest=False)


# ----------------------------------------------------------------- devices

@api.post("/devices/enrollment-tokens", tags=["devices"], dependencies=Admin, status_code=201,
          response_model=TokenOut)
def create_enrollment_token(ctx: Ctx, body: TokenRequest) -> dict[str, Any]:
    """A one-time, expiring token; the device redeems it with POST /api/v1/enroll."""
    ttl = timedelta(seconds=body.ttl_seconds or ctx.config.enrollment_ttl_seconds)
    token = ctx.devices.create_token(body.profile, body.labels, ttl)
    server = ctx.config.server_url
    return {
        "token": token.token, "profile": token.profile, "labels": dict(token.labels),
        "expires_at": token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "server_url": server,
        "agent_command": f"edgefleet agent enroll --server {server} --token={token.token}",
    }


def _finite(value: Any) -> tuple[Any, bool]:
    """``value`` with NaN and infinities as null (JSON has neither), and whether any was replaced."""
    if isinstance(value, float):
        return (value, False) if math.isfinite(value) else (None, True)
    if isinstance(value, dict):
        items = [(k, *_finite(v)) for k, v in value.items()]
        return {k: v for k, v, _ in items}, any(bad for _, _, bad in items)
    if isinstance(value, list):
        pairs = [_finite(v) for v in value]
        return [v for v, _ in pairs], any(bad for _, bad in pairs)
    return value, False


def device_row(device: DeviceRecord, columns: Any) -> dict[str, Any]:
    """A device with the fleet view's columns; a stored ``reported`` that is not a JSON object, or
    holds NaN (older rows, before ingest checked), is shown as far as it can be, and told."""
    row = device.to_dict()
    # ``columns``: a telemetry.views.DeviceColumns (not imported: the core routes stay above telemetry)
    extra: dict[str, Any] = columns.to_dict() if columns is not None else {
        "state": "unknown", "versions": {}, "p95_ms": None, "drift_band": None, "problems": []}
    reported, replaced = _finite(row["reported"])
    if reported is not None and not isinstance(reported, dict):
        reported = None  # views already told it: "reported: a JSON list, not an object"
    elif replaced:
        extra["problems"] = [*extra["problems"], "reported: NaN or infinity shown as null"]
    return {**row, "reported": reported, **extra}


@api.get("/devices", tags=["devices"], dependencies=Admin, response_model=list[DeviceRowOut])
def list_devices(ctx: Ctx, status: Annotated[str | None, Query(pattern="^(enrolled|revoked)$")] = None) -> list[dict[str, Any]]:
    columns = ctx.fleet_views.device_columns()
    return [device_row(d, columns.get(d.id)) for d in ctx.devices.list(status=status)]


@api.get("/devices/{device_id}", tags=["devices"], dependencies=Admin, response_model=DeviceDetailOut)
def show_device(ctx: Ctx, device_id: DeviceId) -> dict[str, Any]:
    """One device, with the same fleet view columns as the list, and its refused messages."""
    device = ctx.devices.get(device_id)
    return {**device_row(device, ctx.fleet_views.device_columns(ids=[device_id]).get(device_id)),
            **ctx.refusals.of(device_id)}


@api.patch("/devices/{device_id}/labels", tags=["devices"], dependencies=Admin, response_model=DeviceOut)
def patch_labels(ctx: Ctx, device_id: DeviceId, body: LabelsPatch) -> dict[str, Any]:
    return ctx.devices.update_labels(device_id, body.labels).to_dict()


@api.post("/devices/{device_id}/revoke", tags=["devices"], dependencies=Admin, response_model=DeviceOut)
def revoke_device(ctx: Ctx, device_id: DeviceId) -> dict[str, Any]:
    """Revoke a device: its API token stops working and the broker drops its account and its live session."""
    return ctx.devices.revoke(device_id).to_dict()


# ------------------------------------------------------------------ device

@api.post("/enroll", tags=["device"], response_model=EnrollmentOut)
def enroll(ctx: Ctx, body: EnrollRequest) -> dict[str, Any]:
    """Redeem an enrollment token (once) for the device's identity, credentials and trust bundle."""
    grant = ctx.devices.enroll(body.token, hostname=body.hostname, agent_version=body.agent_version)
    server = ctx.config.server_url
    return {
        "device_id": grant.device_id, "profile": grant.profile.name, "profile_toml": grant.profile.to_toml(),
        "labels": dict(grant.labels), "broker_url": ctx.broker_public_url, "broker_urls": ctx.broker_public_urls,
        "mqtt_username": grant.mqtt_username, "mqtt_password": grant.mqtt_password, "api_token": grant.api_token,
        "server_url": server, "tuf_root": json.loads(ctx.repo.root_json()),
        "tuf_metadata_url": f"{server}/tuf/metadata/", "tuf_targets_url": f"{server}/tuf/targets/",
        "director_public_key": ctx.keys.director.public_b64,
    }


@api.get("/device/self", tags=["device"], response_model=DeviceOut)
def device_self(device: Annotated[DeviceRecord, Depends(require_device)]) -> dict[str, Any]:
    """What the server knows about the calling device."""
    return device.to_dict()


# --------------------------------------------------------------------- tuf

def _inside(root: Path, relative: str, pattern: re.Pattern[str]) -> Path:
    segments = relative.split("/")
    # The caller's path is echoed shortened: a 404 must not hand back whatever was sent, whole.
    shown = repr(relative) if len(relative) <= 80 else f"{relative[:60]!r}... ({len(relative)} characters)"
    # Checked before touching the disk: no '..', no hidden files (the repository's lock and temp files).
    if not all(pattern.match(s) for s in segments):
        raise NotFoundError(f"{shown} is not in the TUF repository")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise NotFoundError(f"{shown} is not in the TUF repository")
    return path


@tuf.get("/metadata/{filename}")
def tuf_metadata(ctx: Ctx, filename: str) -> FileResponse:
    path = _inside(ctx.repo.metadata_dir, filename, _METADATA_FILE)
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": "no-cache"})


@tuf.get("/targets/{target:path}")
def tuf_target(ctx: Ctx, target: str, credentials: Bearer) -> FileResponse:
    """A target file under its consistent-snapshot name. Honors Range, so downloads resume.

    With ``private_targets`` on, only an enrolled device may download (its API token as Bearer;
    a revoked device's token is refused), checked before the path, so anonymous callers cannot
    probe which models exist either. The metadata stays public: it names hashes and lengths, and
    TUF needs it before a device can judge any target.
    """
    if ctx.config.private_targets:
        require_device(ctx, credentials)
    path = _inside(ctx.repo.targets_dir, target, _SEGMENT)
    return FileResponse(path, media_type="application/octet-stream")


@health.get("/healthz", tags=["health"], response_model=HealthOut)
def healthz(ctx: Ctx) -> dict[str, Any]:
    mqtt = ctx.mqtt
    problems = ctx.ingest_problems() or []
    return {"status": "degraded" if problems else "ok",
            "mqtt_connected": bool(mqtt is not None and mqtt.connected.is_set()),
            "tuf_root_version": ctx.repo.root_version(), "problems": problems}
