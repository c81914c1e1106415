"""The console's fleet summary and device pages: counts and one page of a filtered device list.

At 10,000 devices the console cannot fetch every device with its telemetry columns every two
seconds (``GET /api/v1/devices`` scores each device's drift: seconds of work). So the fleet page
asks for the counts it shows (``summarize``: presence overall, per profile and per label, the
versions in service), and the devices page for one page of the filtered list (``select``): the
filters run here on the registry's columns, and only the page's devices get their telemetry
columns (``FleetViews.device_columns(ids=...)``). docs/benchmarks.md has the timings.

Pure: the devices come in as ``Listed`` values (``FleetViews.listed`` reads them), the answer
goes out as plain data. What the filters mean is what the console's devices page used to do in
the browser: ``q`` is a case-insensitive substring of the id, hostname, labels (``k=v``) or
versions (``model@version``); ``state`` is online, offline or revoked; ``label`` is ``k`` (has
the label) or ``k=v``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_server.errors import InvalidInputError

STATES = ("online", "offline", "revoked")
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_LABEL_ROWS = 200  # labels shown per summary: a label per device must not make the answer grow with the fleet


@dataclass(frozen=True)
class Listed:
    """What the listing needs of one device."""

    id: str
    hostname: str
    profile: str
    labels: Mapping[str, str]
    state: str  # online | offline | revoked
    versions: Mapping[str, str]


@dataclass(frozen=True)
class DeviceQuery:
    q: str = ""
    state: str = ""
    profile: str = ""
    label: str = ""
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.state and self.state not in STATES:
            raise InvalidInputError(f"state {self.state!r} is not a device state", fix=f"use one of {', '.join(STATES)}")
        if self.offset < 0 or not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInputError(f"offset {self.offset} / limit {self.limit} out of range",
                                    fix=f"offset >= 0 and 1 <= limit <= {MAX_LIMIT}")

    def matches(self, d: Listed) -> bool:
        if self.state and d.state != self.state:
            return False
        if self.profile and d.profile != self.profile:
            return False
        if self.label:
            key, has_value, value = self.label.partition("=")
            key, value = key.strip(), value.strip()
            if key not in d.labels or (has_value and d.labels[key] != value):
                return False
        if self.q:
            needle = self.q.lower()
            hay = " ".join([d.id, d.hostname, *(f"{k}={v}" for k, v in d.labels.items()),
                            *(f"{m}@{v}" for m, v in d.versions.items())]).lower()
            return needle in hay
        return True


def select(devices: Iterable[Listed], query: DeviceQuery) -> tuple[list[Listed], int]:
    """The page of matching devices (sorted by id) and how many match in all."""
    matched = sorted((d for d in devices if query.matches(d)), key=lambda d: d.id)
    return matched[query.offset:query.offset + query.limit], len(matched)


def summarize(devices: Sequence[Listed]) -> dict[str, Any]:
    """Presence counts overall, per profile and per label (``k=v``), and the versions enrolled
    devices report, as the console's fleet page shows them."""
    totals = Counter(d.state for d in devices)
    profiles: dict[str, Counter[str]] = defaultdict(Counter)
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    versions: Counter[tuple[str, str]] = Counter()
    for d in devices:
        if d.state == "revoked":
            continue
        profiles[d.profile][d.state] += 1
        for key, value in d.labels.items():
            labels[f"{key}={value}"][d.state] += 1
        versions.update(d.versions.items())
    label_rows = sorted(labels.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return {
        "devices": {state: totals.get(state, 0) for state in STATES},
        "total": len(devices),
        "profiles": [{"profile": p, "online": c["online"], "offline": c["offline"]} for p, c in sorted(profiles.items())],
        "labels": sorted(({"label": k, "online": c["online"], "offline": c["offline"]}
                          for k, c in label_rows[:MAX_LABEL_ROWS]), key=lambda row: row["label"]),
        "labels_left_out": max(0, len(label_rows) - MAX_LABEL_ROWS),
        "versions": [{"model": m, "version": v, "devices": n} for (m, v), n in sorted(versions.items())],
    }
