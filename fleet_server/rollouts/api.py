"""REST endpoints for rollouts (admin token), on top of ``fleet_server.rollouts.engine``.

    POST   /api/v1/rollouts                       create and start: {model, version, selector, waves, ...,
                                                  shadow: {...} | canary: {...}} (a stage before each wave switches)
    GET    /api/v1/rollouts                       list (?state=running)
    GET    /api/v1/rollouts/{id}                  one rollout: per-wave counts, log (?devices=true: per device)
    POST   /api/v1/rollouts/{id}/pause|resume|abort|rollback

The app factory includes ``router`` and puts the engine at ``app.state.rollout_engine`` (or
``ServerContext.rollouts``). Routes are plain ``def``: the engine does database transactions
(and, without a worker, waits for the broker), so FastAPI runs them in its thread pool, off the
event loop. With the server's rollout worker running, ``create`` and the commands return once
the change is committed; the worker publishes the assignments right after, so the response's
``assigned`` count means "signed and stored", not "delivered" (the devices' events say that).
This module holds no rollout logic: it validates input and calls the engine.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.api import MODEL_NAME, require_admin
from fleet_server.errors import ServerError
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.machine import RolloutConfigError, RolloutPolicy, RolloutState
from fleet_server.rollouts.stage import CanaryPolicy, ShadowPolicy, StagePolicy

ROLLOUT_ID = r"^ro-[0-9a-f]{1,32}$"


class EngineUnavailableError(ServerError):
    """The server runs without its rollout engine (started without a broker)."""

    status_code = 503


def rollout_engine(request: Request) -> RolloutEngine:
    engine = getattr(request.app.state, "rollout_engine", None)
    if engine is None:
        engine = getattr(getattr(request.app.state, "ctx", None), "rollouts", None)
    if not isinstance(engine, RolloutEngine):
        raise EngineUnavailableError("this server runs without the rollout engine",
                                     fix="start the server with a broker (edgefleet server --broker URL)")
    return engine


Engine = Annotated[RolloutEngine, Depends(rollout_engine)]
RolloutId = Annotated[str, PathParam(pattern=ROLLOUT_ID, description="rollout id, e.g. ro-3f2a9c01b2d4")]


class ShadowStage(BaseModel):
    """Each wave first mirrors live requests to the candidate beside the serving version (docs/rollouts.md)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(gt=0, le=30 * 86400, description="how long each wave's shadow stage runs")
    min_agreement: float = Field(0.98, gt=0, le=1, description="share of requests the candidate must agree on")
    max_latency_ratio: float = Field(1.5, ge=1, le=1000, description="candidate p99 at most this times the serving p99")
    sample: float = Field(1.0, gt=0, le=1, description="share of live requests mirrored to the candidate")
    min_requests: int = Field(100, ge=1, le=10**12, description="requests needed per wave, else the rollout halts")

    def policy(self) -> ShadowPolicy:
        return ShadowPolicy(timedelta(seconds=self.seconds), self.min_agreement, self.max_latency_ratio, self.sample,
                            self.min_requests)


class CanaryStage(BaseModel):
    """Each wave first lets the candidate answer a share of live requests; feedback decides (docs/rollouts.md)."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(gt=0, lt=1, description="share of live requests the candidate answers, e.g. 0.1")
    seconds: float = Field(1800.0, gt=0, le=30 * 86400, description="how long each wave's canary stage runs")
    min_labels: int = Field(100, ge=1, le=10**12, description="feedback labels needed per arm, else the rollout halts")
    max_accuracy_drop: float = Field(0.0, ge=0, le=1, description="how much less accurate the candidate may be")

    def policy(self) -> CanaryPolicy:
        return CanaryPolicy(self.share, timedelta(seconds=self.seconds), self.min_labels, self.max_accuracy_drop)


class CreateRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME, description="model name")
    version: str = Field(max_length=128, description="semantic version, e.g. 1.2.0")
    selector: str = Field("", max_length=1024, description="e.g. 'site=a,profile=rpi4-64'; empty: every device")
    waves: list[float] = Field([1.0, 10.0, 50.0, 100.0], min_length=1, max_length=20,
                               description="cumulative percentages of the fleet, ending in 100")
    bake_seconds: float = Field(600.0, ge=0, le=30 * 86400)
    max_failure_rate: float = Field(0.05, ge=0, lt=1)
    min_success_rate: float = Field(0.95, gt=0, le=1)
    device_timeout_seconds: float = Field(1800.0, gt=0, le=30 * 86400)
    auto_rollback: bool = False
    seed: int | None = Field(None, ge=0, lt=2**63)
    shadow: ShadowStage | None = None
    canary: CanaryStage | None = None

    def policy(self) -> RolloutPolicy:
        stage: StagePolicy | None = None
        if self.shadow is not None and self.canary is not None:
            raise RolloutConfigError("a rollout runs one stage per wave: shadow or canary, not both",
                                     fix="pick one: shadow compares the candidate on live requests without "
                                         "changing an answer; canary lets it answer a share and judges it on "
                                         "feedback labels")
        if self.shadow is not None:
            stage = self.shadow.policy()
        elif self.canary is not None:
            stage = self.canary.policy()
        return RolloutPolicy(tuple(self.waves), timedelta(seconds=self.bake_seconds), self.max_failure_rate,
                             self.min_success_rate, timedelta(seconds=self.device_timeout_seconds),
                             self.auto_rollback, stage)


router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"], dependencies=[Depends(require_admin)])


@router.post("", status_code=201, summary="create a rollout and start its first wave")
def create_rollout(engine: Engine, body: CreateRollout) -> dict[str, Any]:
    from fleet_server.api import checked_version

    return engine.create(body.model, checked_version(body.version), body.selector, body.policy(), seed=body.seed)


@router.get("", summary="list rollouts, newest first")
def list_rollouts(engine: Engine, state: Annotated[RolloutState | None, Query()] = None) -> list[dict[str, Any]]:
    return engine.list_rollouts(state=None if state is None else state.value)


@router.get("/{rollout_id}", summary="one rollout with per-wave progress (and shadow/canary figures) and its log")
def show_rollout(engine: Engine, rollout_id: RolloutId, devices: bool = False) -> dict[str, Any]:
    return engine.get(rollout_id, devices=devices)


@router.post("/{rollout_id}/pause", summary="stop assigning new devices (timeouts and halts still apply)")
def pause_rollout(engine: Engine, rollout_id: RolloutId) -> dict[str, Any]:
    return engine.pause(rollout_id)


@router.post("/{rollout_id}/resume", summary="continue a paused rollout")
def resume_rollout(engine: Engine, rollout_id: RolloutId) -> dict[str, Any]:
    return engine.resume(rollout_id)


@router.post("/{rollout_id}/abort", summary="stop for good, leaving devices where they are")
def abort_rollout(engine: Engine, rollout_id: RolloutId) -> dict[str, Any]:
    return engine.abort(rollout_id)


@router.post("/{rollout_id}/rollback", summary="send every touched device back to its previous version")
def rollback_rollout(engine: Engine, rollout_id: RolloutId) -> dict[str, Any]:
    return engine.rollback(rollout_id)
