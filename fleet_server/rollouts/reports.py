"""A device's ``reported`` document, read for the rollouts: what it serves and its last update.

``parse_reported(document)`` turns the retained ``devices/{id}/reported`` payload
(docs/contracts.md) into a :class:`DeviceReport`: whether the device is online, the version
of each model it serves (``models``), and ``update``, the update in flight or the LAST
OUTCOME it reached (state, model, version, assignment counter, reason). The agent keeps that
outcome across its restarts until the next assignment, so a server that missed the outcome's
event (it was down, or its queue died with it) still learns it here; the rollout core
(``fleet_server.rollouts.machine.Rollout.device_reported``) reconciles each device from it.

The broker's last will, ``{"device_id", "online": false}``, is a report that knows nothing
but presence: ``online`` is False and ``models``/``update`` are empty, which means
"unknown", not "serves nothing".

A document of the wrong shape (``models`` a list, a counter that is a string...) raises
``ReportError``; the engine counts and skips such a device rather than guess. This module
is pure: no database, broker or clock, and it does not decide anything about a rollout.

    ServerError (fleet_server.errors)
    └── ReportError     a `reported` document whose shape is not docs/contracts.md's
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.events import OUTCOME_EVENTS
from fleet_server.errors import ServerError

__all__ = ["IDLE", "DeviceReport", "ReportError", "ReportedUpdate", "parse_reported"]

# The agent's update state before its first update; the states that end an update are the
# outcome events (edgefleet.events.OUTCOME_EVENTS), which a restarted agent keeps reporting.
IDLE = "idle"


class ReportError(ServerError):
    """A device's `reported` document is not shaped as docs/contracts.md says."""


@dataclass(frozen=True)
class ReportedUpdate:
    """``reported.update``: one model's update in flight, or the last outcome and its counter."""

    state: str
    model: str
    version: str | None = None
    counter: int | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        """The update ended (committed, failed, rolled_back): ``state`` is its outcome."""
        return self.state in OUTCOME_EVENTS

    @property
    def in_flight(self) -> bool:
        return self.state != IDLE and not self.finished


@dataclass(frozen=True)
class DeviceReport:
    """What one ``reported`` document says; ``models`` and ``update`` are empty when offline."""

    online: bool
    models: Mapping[str, str] = field(default_factory=dict)  # model -> version it serves
    update: ReportedUpdate | None = None

    def serves(self, model: str) -> str | None:
        """The version of ``model`` the device serves (None: none, or unknown when offline)."""
        return self.models.get(model)

    def update_of(self, model: str) -> ReportedUpdate | None:
        """The update the device reports, if it concerns ``model``."""
        return self.update if self.update is not None and self.update.model == model else None


def parse_reported(document: Any) -> DeviceReport:
    """Read a parsed ``reported`` JSON document; ReportError if its shape is wrong."""
    if not isinstance(document, Mapping):
        raise ReportError("a reported document is not a JSON object")
    online = document.get("online")
    if not isinstance(online, bool):
        raise ReportError("a reported document has no boolean 'online'")
    if not online:
        return DeviceReport(False)  # the last will: presence only
    return DeviceReport(True, _models(document.get("models")), _update(document.get("update")))


def _models(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ReportError(f"reported 'models' is a {type(value).__name__}, not an object of model -> "
                          "{version, sha256}", fix="upgrade the agent (docs/contracts.md)")
    models = {}
    for name, entry in value.items():
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not isinstance(version, str):
            raise ReportError(f"reported 'models' entry {name!r} has no version string",
                              fix="upgrade the agent (docs/contracts.md)")
        models[name] = version
    return models


def _update(value: Any) -> ReportedUpdate | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ReportError(f"reported 'update' is a {type(value).__name__}, not an object")
    state, model, version = value.get("state"), value.get("model"), value.get("version")
    counter, reason = value.get("counter"), value.get("reason")
    if not isinstance(state, str):
        raise ReportError("reported 'update' has no state string")
    if state == IDLE or model is None:
        return None  # nothing updated since the agent was installed: no model to speak of
    if not isinstance(model, str) or not (version is None or isinstance(version, str)) \
            or not (counter is None or (isinstance(counter, int) and not isinstance(counter, bool))) \
            or not (reason is None or isinstance(reason, str)):
        raise ReportError("reported 'update' has a model, version, counter or reason of the wrong type",
                          fix="upgrade the agent (docs/contracts.md)")
    return ReportedUpdate(state, model, version, counter, reason or "")
