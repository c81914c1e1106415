"""Small builders shared by the rollout tests: devices, targets and a clock value."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from edgefleet.assignment import ModelTarget
from fleet_server.rollouts.machine import Rollout, RolloutPolicy
from fleet_server.rollouts.waves import RolloutDevice, Selector

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MODEL = "digits"
VERSION = "2.0.0"
PREVIOUS = "1.0.0"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def target(profile: str, version: str = VERSION) -> ModelTarget:
    digest = hashlib.sha256(f"{profile}/{version}".encode()).hexdigest()
    return ModelTarget(version, f"{MODEL}/{MODEL}-{version}.tar.gz", digest, 4096)


def devices(count: int, profile: str = "rpi4-64", prefix: str = "dev", *,
            labels: dict[str, str] | None = None, version: str | None = PREVIOUS) -> list[RolloutDevice]:
    return [RolloutDevice(f"{prefix}-{i:03d}", profile, dict(labels or {"site": "a"}), version) for i in range(count)]


def make_rollout(fleet: Sequence[RolloutDevice], *, profiles: Sequence[str] = ("rpi4-64",),
                 selector: str = "*", seed: int = 7, **policy: object) -> Rollout:
    settings = {"waves": (10.0, 50.0, 100.0), "bake_time": timedelta(minutes=10),
                "max_failure_rate": 0.2, "min_success_rate": 0.8,
                "device_timeout": timedelta(minutes=30), "auto_rollback": True}
    settings.update(policy)
    return Rollout.create("ro-1", MODEL, VERSION, selector=Selector.parse(selector),
                          targets={p: target(p) for p in profiles}, devices=fleet, seed=seed,
                          policy=RolloutPolicy(**settings))  # type: ignore[arg-type]
