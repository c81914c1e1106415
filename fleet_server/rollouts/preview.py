"""``GET /api/v1/rollouts/preview``: which devices a selector matches, before a rollout is created.

The console's creation form shows "matches N devices" from this. It reads the fleet exactly as
``RolloutEngine.create`` does (``RolloutEngine._fleet``: enrolled devices, with the version of
the model each runs) and matches with the same ``Selector``, so the count is the one a rollout
created now would plan over. With ``version``, it also says how many of those the bundle was
validated for (the profiles a rollout may assign it to). It plans nothing and writes nothing.

Its router is included before ``fleet_server.rollouts.api.router`` (``fleet_server.app``), since
``/rollouts/{rollout_id}`` would otherwise take the path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from edgefleet.version import SEMVER_PATTERN
from fleet_server.api import MODEL_NAME, require_admin
from fleet_server.errors import NotFoundError
from fleet_server.rollouts.api import Engine
from fleet_server.rollouts.waves import Selector
from fleet_server.tables import ModelRow

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"], dependencies=[Depends(require_admin)])

SHOWN = 20  # device ids listed in the answer; the counts cover them all


@router.get("/preview", summary="how many devices a selector matches (and may receive the version)")
def preview(engine: Engine, model: Annotated[str, Query(pattern=MODEL_NAME)],
            selector: Annotated[str, Query(max_length=1024)] = "",
            version: Annotated[str | None, Query(max_length=128, pattern=SEMVER_PATTERN)] = None) -> dict[str, Any]:
    parsed = Selector.parse(selector) if selector.strip() else Selector.everything()
    with engine.db.session() as session:
        fleet = engine._fleet(session, model)  # the engine's own reading of the fleet (see the docstring)
        profiles: list[str] | None = None
        if version is not None:
            row = session.scalars(select(ModelRow).where(ModelRow.name == model, ModelRow.version == version)
                                  ).one_or_none()
            if row is None:
                raise NotFoundError(f"model {model}@{version} is not published",
                                    fix="pick a published version (GET /api/v1/models)")
            profiles = sorted(row.profiles)
    matched = [d for d in fleet if parsed.matches(d)]
    eligible = matched if profiles is None else [d for d in matched if d.profile in profiles]
    return {"model": model, "version": version, "selector": str(parsed), "matches": len(matched),
            "eligible": len(eligible), "profiles": profiles,
            "devices": [d.device_id for d in eligible[:SHOWN]]}
