"""Read-only REST routes the console needed and the API lacked: a device's update events, alert episodes.

    admin
      GET /api/v1/devices/{device_id}/events   ?limit=N   newest first: event, model, version, reason, timings
      GET /api/v1/alerts                                  episodes in progress (firing or pending), per rule

Thin like ``fleet_server.api``: one query each over the tables the ingest (``device_events``) and
the alert monitor (``alert_state``) already write. It writes nothing, and keeps no history of its
own: resolved alert episodes are gone from ``alert_state`` (the webhook sinks received them).
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from fleet_server.api import Ctx, DeviceId, require_admin
from fleet_server.tables import AlertStateRow, DeviceEventRow

router = APIRouter(prefix="/api/v1", tags=["monitoring"], dependencies=[Depends(require_admin)])


@router.get("/devices/{device_id}/events", summary="a device's update events, newest first")
def device_events(ctx: Ctx, device_id: DeviceId,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    ctx.devices.get(device_id)  # 404 for an unknown device, as the other device routes
    with ctx.db.session() as session:
        rows = session.scalars(select(DeviceEventRow).where(DeviceEventRow.device_id == device_id)
                               .order_by(DeviceEventRow.ts.desc(), DeviceEventRow.id.desc()).limit(limit)).all()
        return [{"event_id": r.event_id, "ts": r.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                 "event": r.event, "model": r.model, "version": r.version,
                 "reason": (r.document or {}).get("reason"), "timings": (r.document or {}).get("timings"),
                 "details": (r.document or {}).get("details")} for r in rows]


@router.get("/alerts", summary="alert episodes in progress: firing, or across the threshold and waiting for for_s")
def alerts(ctx: Ctx) -> dict[str, Any]:
    with ctx.db.session() as session:
        episodes = [{**e, "name": row.name} for row in session.scalars(select(AlertStateRow))
                    for e in (row.episodes or []) if isinstance(e, dict)]
    episodes.sort(key=lambda e: (e.get("state") != "firing", str(e.get("rule")), str(e.get("subject"))))
    return {"firing": sum(1 for e in episodes if e.get("state") == "firing"), "episodes": episodes}
