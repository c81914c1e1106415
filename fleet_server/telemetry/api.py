"""REST routes for monitoring and the hybrid path: fleet drift, server-side predict, /metrics.

    admin
      GET  /api/v1/models/{name}/{version}/drift   ?by=profile|label:NAME&window=SECONDS
    admin or device (Authorization: Bearer <admin token | device api token>)
      POST /api/v1/models/{name}/predict           ?version=  (default: what the fleet serves) JSON {"inputs": ...} or {"instances": ...}, .npy/.npz/raw
      POST /api/v1/models/{name}/predict/batch     ?version=  multipart field "file" (.csv or .npy) -> text/csv
      GET  /api/v1/fleet/summary                   devices online/offline/revoked per profile and label, versions
      GET  /api/v1/fleet/devices                   ?q=&state=&profile=&label=&offset=&limit= one page, with columns
    public
      GET  /metrics                                Prometheus text format

Thin like ``fleet_server.api``: validation and the services (``FleetViews``, ``Predictor``,
``Metrics``) do the work; errors are ``ServerError``s that ``fleet_server.app`` maps to statuses.
The device list's extra columns are added in ``fleet_server.api.list_devices``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from edgefleet.inputs import DTYPE_HEADER, SHAPE_HEADER, Body, is_json
from edgefleet.version import SEMVER_PATTERN
from fleet_server.api import (
    Bearer,
    Ctx,
    DeviceRowOut,
    ModelName,
    Version,
    checked_version,
    device_row,
    require_admin,
)
from fleet_server.credentials import same_secret
from fleet_server.errors import AuthError, InvalidInputError
from fleet_server.registry.predict import is_image_upload, parse_feeds, read_feeds, read_images
from fleet_server.telemetry.listing import DeviceQuery, select, summarize

if TYPE_CHECKING:
    from fleet_server.context import ServerContext

router = APIRouter(prefix="/api/v1")
metrics_router = APIRouter()

MAX_WINDOW_S = 30 * 24 * 3600
OptionalVersion = Annotated[str | None, Query(max_length=128, pattern=SEMVER_PATTERN,
                                              description="semantic version (default: the newest not yanked)")]


def require_admin_or_device(ctx: Ctx, credentials: Bearer) -> None:
    if credentials is None:
        raise AuthError("predict needs the admin token or a device's API token: send 'Authorization: Bearer <token>'",
                        fix="set EDGEFLEET_TOKEN, or use the api_token from the device's credentials.json")
    if not same_secret(credentials.credentials, ctx.admin_token.value):
        ctx.devices.authenticate(credentials.credentials)


class FeatureDriftOut(BaseModel):
    feature: str
    rows: int
    psi: float
    js: float
    hellinger: float
    band: str = Field(description="stable (<0.1), moderate (0.1-0.25), drift (>0.25), or no data")


class GroupDriftOut(BaseModel):
    model: str
    version: str
    group: str = Field(description="fleet, a profile name, or LABEL=VALUE")
    devices: int
    band: str
    max_psi: float
    features: list[FeatureDriftOut]
    output: FeatureDriftOut | None
    requests: int
    error_rate: float | None
    accuracy: float | None
    labels: int
    as_of: str | None = Field(None, description="the group's newest batch in the window (UTC)")
    age_s: float | None = Field(None, description="seconds from that batch to the server's now")
    features_as_of: str | None = Field(None, description="the group's newest batch carrying feature counts "
                                                         "(devices may send them on every Nth batch)")
    features_age_s: float | None = Field(None, description="seconds from that batch to the server's now")


class VersionTotalsOut(BaseModel):
    version: str
    devices: int
    requests: int
    errors: int
    error_rate: float | None
    labels: int = Field(description="ground-truth labels received (POST /v1/feedback on the devices)")
    correct: int
    accuracy: float | None


class SkippedOut(BaseModel):
    device_id: str
    problems: list[str] = Field(description="what of the device's data was skipped or ignored, and why")


class DriftOut(BaseModel):
    model: str
    version: str
    by: str
    window_s: float
    since: str
    now: str | None = Field(None, description="the server's clock when the view was made (UTC)")
    groups: list[GroupDriftOut]
    versions: list[VersionTotalsOut] = Field(description="every version of the model seen in the window")
    skipped: list[SkippedOut] = Field(description="devices whose data was skipped or partly ignored (malformed "
                                                  "counts, counts over other bins, batches dated in the future)")


class PredictOut(BaseModel):
    model: str
    version: str
    request_id: str
    predictions: list[Any]
    probabilities: list[list[float]] | None = None


@router.get("/models/{name}/{version}/drift", tags=["monitoring"], dependencies=[Depends(require_admin)],
            response_model=DriftOut)
def model_drift(ctx: Ctx, name: ModelName, version: Version,
                by: Annotated[str | None, Query(max_length=70, description="profile or label:NAME")] = None,
                window: Annotated[float | None, Query(gt=0, le=MAX_WINDOW_S, description="seconds back")] = None,
                ) -> dict[str, Any]:
    """Per-feature PSI, Jensen-Shannon and Hellinger of a model version over the window, merged by group."""
    return ctx.fleet_views.model_drift(name, checked_version(version), by=by, window_s=window)


# The route reads the body itself (one parser with the agent: edgefleet.inputs), so FastAPI
# cannot see it: documented here, so the OpenAPI document (and schemathesis) know it.
_ROWS = {"type": "array", "description": "rows: lists of numbers, or records {column: value}"}
PREDICT_BODY = {"required": True, "content": {"application/json": {"schema": {"anyOf": [
    {"type": "object", "properties": {"inputs": _ROWS}, "required": ["inputs"], "additionalProperties": False},
    {"type": "object", "properties": {"instances": _ROWS}, "required": ["instances"], "additionalProperties": False},
    {**_ROWS, "description": "a bare list of rows"},
], "description": "docs/contracts.md, 'Predict input'"}},
    # Image inputs (issue 12): one image, or several (and a model's other inputs) as form parts.
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"},
                                       "description": "one part per image, named after the image input; other "
                                                      "inputs as JSON or .npy parts named after them"}},
}}


def _reports(ctx: ServerContext) -> Callable[[], list[Mapping[str, Any] | None]]:
    """The reports of the enrolled devices: what the fleet serves, for a predict without ?version=."""
    return lambda: [d.reported for d in ctx.devices.list() if d.revoked_at is None]


@router.post("/models/{name}/predict", tags=["predict"], dependencies=[Depends(require_admin_or_device)],
             response_model=PredictOut, response_model_exclude_none=True,
             openapi_extra={"requestBody": PREDICT_BODY})
async def predict(ctx: Ctx, name: ModelName, request: Request,
                  version: OptionalVersion = None) -> dict[str, Any]:
    """Run the published bundle on the server (ONNX Runtime, CPU); same body and answer as the agent's API."""
    raw = await request.body()
    content_type = request.headers.get("content-type")
    body: Any
    if content_type is not None and not is_json(content_type.partition(";")[0].strip().lower()):
        # A binary tensor body (.npy, .npz, raw): the shared parser reads it against the model's inputs.
        body = Body.from_headers(raw, content_type, {k: request.headers[k] for k in (SHAPE_HEADER, DTYPE_HEADER)
                                                     if k in request.headers})
    else:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the stack
            raise InvalidInputError(f"the body is not JSON: {exc}", fix='send {"inputs": [[...]]}') from exc

    def run() -> dict[str, Any]:
        chosen = ctx.predictor.resolve(name, checked_version(version) if version else None, fleet=_reports(ctx))
        inputs = ctx.predictor.manifest(name, chosen).inputs
        return ctx.predictor.predict(name, chosen, parse_feeds(body, inputs, max_rows=ctx.predictor.max_rows)).to_dict()

    return await asyncio.to_thread(run)


@router.post("/models/{name}/predict/batch", tags=["predict"], dependencies=[Depends(require_admin_or_device)],
             response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def predict_batch(ctx: Ctx, name: ModelName,
                  file: Annotated[UploadFile, File(description="rows as CSV (header = feature names, optional) or "
                                                               ".npy; named columns: CSV with a header, or Parquet; "
                                                               "tensors: .npy/.npz; an image model: a .zip of PNG/JPEG "
                                                               "images (a zipped folder) or one image")],
                  version: OptionalVersion = None) -> Response:
    """Predict every row of an uploaded file; answers CSV: prediction, then one column per class probability."""
    chosen = ctx.predictor.resolve(name, checked_version(version) if version else None, fleet=_reports(ctx))
    manifest = ctx.predictor.manifest(name, chosen)
    filename = file.filename or "upload.csv"
    files: list[str] | None = None
    if is_image_upload(filename, manifest.inputs):  # a zipped folder of images: rows lead with their paths
        feeds, files = read_images(file.file, filename, manifest.inputs, max_rows=ctx.predictor.max_rows)
    else:
        feeds = read_feeds(file.file, filename, manifest.inputs, max_rows=ctx.predictor.max_rows)  # streamed
    result = ctx.predictor.predict(name, chosen, feeds)
    return Response(result.to_csv(files), media_type="text/csv",
                    headers={"X-Edgefleet-Model": f"{name}@{chosen}", "X-Request-Id": result.request_id})


@metrics_router.get("/metrics", tags=["monitoring"], response_class=Response,
                    responses={200: {"content": {"text/plain": {}}}})
def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics (text format 0.0.4)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------ the console's fleet pages

class FleetCountOut(BaseModel):
    online: int
    offline: int


class ProfileCountOut(FleetCountOut):
    profile: str


class LabelCountOut(FleetCountOut):
    label: str = Field(description="key=value")


class VersionCountOut(BaseModel):
    model: str
    version: str
    devices: int = Field(description="enrolled devices reporting this version")


class FleetSummaryOut(BaseModel):
    """Counts for the console's fleet page (fleet_server.telemetry.listing)."""

    devices: dict[str, int] = Field(description="online, offline, revoked")
    total: int
    profiles: list[ProfileCountOut]
    labels: list[LabelCountOut] = Field(description="the 200 labels with the most devices")
    labels_left_out: int
    versions: list[VersionCountOut]


class DevicePageOut(BaseModel):
    """One page of the filtered device list (the console's devices page)."""

    total: int = Field(description="every device")
    matched: int = Field(description="devices matching the filters")
    offset: int
    limit: int
    profiles: list[str] = Field(description="every profile in the fleet, for a filter")
    devices: list[DeviceRowOut]



@router.get("/fleet/summary", tags=["devices"], dependencies=[Depends(require_admin)], response_model=FleetSummaryOut)
def fleet_summary(ctx: Ctx) -> dict[str, Any]:
    """Devices online, offline and revoked, overall, per profile and per label, and the versions in
    service: the console's fleet page, without reading any telemetry."""
    return summarize(ctx.fleet_views.listed())


@router.get("/fleet/devices", tags=["devices"], dependencies=[Depends(require_admin)], response_model=DevicePageOut)
def device_page(ctx: Ctx, q: Annotated[str, Query(max_length=200)] = "",
                state: Annotated[str, Query(pattern="^(|online|offline|revoked)$")] = "",
                profile: Annotated[str, Query(max_length=64)] = "", label: Annotated[str, Query(max_length=200)] = "",
                offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    """One page of the devices matching the filters (sorted by id), with the list's telemetry
    columns for that page only: ``q`` is a substring of the id, hostname, a label or a version,
    ``label`` is ``key`` or ``key=value``. ``matched`` counts every match, ``total`` every device."""
    listed = ctx.fleet_views.listed()
    page, matched = select(listed, DeviceQuery(q=q, state=state, profile=profile, label=label, offset=offset,
                                               limit=limit))
    ids = [d.id for d in page]
    columns = ctx.fleet_views.device_columns(ids=ids) if ids else {}
    records = {d.id: d for d in ctx.devices.list(ids=ids)} if ids else {}
    return {"total": len(listed), "matched": matched, "offset": offset, "limit": limit,
            "profiles": sorted({d.profile for d in listed}),
            "devices": [device_row(records[i], columns.get(i)) for i in ids if i in records]}
