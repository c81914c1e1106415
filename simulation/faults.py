"""Faults for ``edgefleet simulate``: what to break, in whom, and when (pure; no I/O, no clock).

``FaultPlan`` holds the faults a run asks for, each validated where it is built;
``schedule(plan, device_ids, seed)`` turns it into ``FaultAction``s (seconds after the
rollout starts, the action, the devices it touches), drawn with a seeded generator so a run
can be repeated. The simulator (simulation/simulate.py) carries the actions out. This module
deliberately decides nothing about how a fault is done to a process or a light device.

    EdgefleetError
    └── FaultError      a fault option is malformed (names the option and an example)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from edgefleet.errors import EdgefleetError

Kind = Literal["network_down", "network_up", "broker_restart", "sigkill", "corrupt_download"]


class FaultError(EdgefleetError):
    """A fault option is malformed."""


def parse_share_duration(text: str, option: str) -> tuple[float, float]:
    """``"30%:10s"`` -> (0.3, 10.0): a share of the fleet and a duration in seconds."""
    share_text, sep, seconds_text = text.partition(":")
    try:
        if not sep or not share_text.endswith("%"):
            raise ValueError
        share = float(share_text[:-1]) / 100
        seconds = parse_seconds(seconds_text)
    except ValueError:
        raise FaultError(f"{option} {text!r} is not SHARE%:DURATION", fix=f"e.g. {option} 30%:10s") from None
    if not 0 < share <= 1:
        raise FaultError(f"{option}: share {share_text} must be in (0%, 100%]", fix=f"e.g. {option} 30%:10s")
    return share, seconds


def parse_seconds(text: str) -> float:
    """``"90"``, ``"90s"``, ``"2m"``, ``"1h"`` -> seconds (ValueError if malformed or negative)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip()
    scale = units.get(text[-1:], 1.0) if text else 1.0
    number = float(text[:-1] if text[-1:] in units else text)
    if number < 0:
        raise ValueError(text)
    return number * scale


@dataclass(frozen=True)
class FaultPlan:
    """What to break during a simulated rollout. Every field is off by default."""

    network_loss_share: float = 0.0     # share of devices that lose the network ...
    network_loss_s: float = 0.0         # ... for this long, starting network_loss_at_s into the rollout
    network_loss_at_s: float = 0.5
    broker_restart_at_s: float | None = None
    broker_down_s: float = 1.0
    sigkill: int = 0                    # agent processes SIGKILLed while they update
    sigkill_at_s: float = 0.3
    corrupt_download: bool = False      # the served bundle's bytes are altered before the rollout
    slow_link_s: float = 0.0            # extra seconds per update step
    clock_skew_share: float = 0.0       # share of devices whose clock is off ...
    clock_skew_s: float = 0.0           # ... by this many seconds (negative: behind)

    def __post_init__(self) -> None:
        for name in ("network_loss_share", "clock_skew_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise FaultError(f"{name} must be a share in [0, 1], got {getattr(self, name)}")
        for name in ("network_loss_s", "network_loss_at_s", "broker_down_s", "sigkill_at_s", "slow_link_s"):
            if getattr(self, name) < 0:
                raise FaultError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.broker_restart_at_s is not None and self.broker_restart_at_s < 0:
            raise FaultError(f"broker restart time must be >= 0 seconds, got {self.broker_restart_at_s}")
        if self.sigkill < 0:
            raise FaultError(f"sigkill must be a count >= 0, got {self.sigkill}", fix="e.g. --sigkill 2")

    @property
    def any(self) -> bool:
        return self != FaultPlan()

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FaultAction:
    """One thing to do ``at_s`` seconds after the rollout starts, to ``devices`` (empty: the fleet)."""

    at_s: float
    kind: Kind
    devices: tuple[str, ...] = ()


def pick(device_ids: list[str], share: float, rng: random.Random) -> list[str]:
    """A seeded draw of ``share`` of the devices, at least one when the share is above zero."""
    if share <= 0 or not device_ids:
        return []
    count = min(len(device_ids), max(1, round(share * len(device_ids))))
    return sorted(rng.sample(sorted(device_ids), count))


def skewed_devices(plan: FaultPlan, device_ids: list[str], seed: int) -> list[str]:
    """The devices whose clock is off (decided before they start, so they start skewed)."""
    return pick(device_ids, plan.clock_skew_share, random.Random(f"{seed}:clock"))


def schedule(plan: FaultPlan, device_ids: list[str], seed: int) -> list[FaultAction]:
    """The timed faults of ``plan`` over ``device_ids``, in time order (same seed, same draw)."""
    rng = random.Random(seed)
    actions: list[FaultAction] = []
    lost = pick(device_ids, plan.network_loss_share, rng)
    if lost and plan.network_loss_s > 0:
        actions += [FaultAction(plan.network_loss_at_s, "network_down", tuple(lost)),
                    FaultAction(plan.network_loss_at_s + plan.network_loss_s, "network_up", tuple(lost))]
    if plan.broker_restart_at_s is not None:
        actions.append(FaultAction(plan.broker_restart_at_s, "broker_restart"))
    if plan.sigkill:
        killed = sorted(rng.sample(sorted(device_ids), min(plan.sigkill, len(device_ids))))
        actions.append(FaultAction(plan.sigkill_at_s, "sigkill", tuple(killed)))
    if plan.corrupt_download:
        actions.append(FaultAction(0.0, "corrupt_download"))
    return sorted(actions, key=lambda a: (a.at_s, a.kind))
