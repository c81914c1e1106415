"""Categorical drift reaches the fleet unchanged (issue 12): devices count string columns by
category (unseen last) and send plain count lists, which the server's drift merge adds and
scores without knowing the kind."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.drift import DriftWindow
from edgefleet import telemetry
from edgefleet.inputs import to_feeds
from edgefleet.manifest import TensorSpec
from edgefleet.telemetry import ModelRecord, ReferenceProfile, TelemetryBatch
from fleet_server.telemetry.drift import DeviceCounts, fleet_drift

REGIONS = ("east", "north", "west")
REFERENCE: dict[str, Any] = {
    "rows": 300,
    "features": [{"name": "alcohol", "edges": [10.0, 12.0, 13.0, 15.0], "counts": [120, 60, 120]},
                 {"name": "region", "kind": "categories", "categories": list(REGIONS), "counts": [100, 100, 100, 0]}],
    "outputs": {"kind": "classes", "labels": [0, 1, 2], "counts": [100, 100, 100]},
}
INPUTS = (TensorSpec("alcohol", "float32", (-1, 1), kind="column"),
          TensorSpec("region", "string", (-1, 1), kind="column", categories=REGIONS))


def device(name: str, site: str, unseen_every: int | None, seed: int) -> DeviceCounts:
    """Three intervals of one device, through the agent's window and the telemetry wire form."""
    window = DriftWindow(REFERENCE)
    rng = np.random.default_rng(seed)
    records = []
    for interval in range(3):
        rows = [{"alcohol": float(rng.uniform(10, 15)),
                 "region": "south" if unseen_every and i % unseen_every == 0 else REGIONS[int(rng.integers(3))]}
                for i in range(200)]
        window.observe(to_feeds({"instances": rows}, INPUTS), [i % 3 for i in range(200)], now=float(interval))
        features, outputs = window.take_interval()
        batch = TelemetryBatch(name, interval + 1, 1000.0 + interval,
                               models=(ModelRecord("wine", "1.0.0", count=1, outputs=outputs, drift=features),))
        (record,) = telemetry.decode(telemetry.encode(batch), device_id=name).models
        assert record.drift == features  # the wire form carries the count lists as they are
        records.append(record)
    return DeviceCounts.from_records(name, "rpi4-64", {"site": site}, records)


def test_unseen_categories_on_one_site_drift_there_and_the_merge_adds_them() -> None:
    devices = [device("a1", "a", None, 1), device("a2", "a", None, 2),
               device("b1", "b", 3, 3), device("b2", "b", 5, 4)]
    profile = ReferenceProfile.from_dict(REFERENCE)
    by_site = {r.group: r for r in fleet_drift("wine", "1.0.0", profile, devices, by="site")}
    site_a = {f.feature: f for f in by_site["site=a"].features}
    site_b = {f.feature: f for f in by_site["site=b"].features}
    assert site_a["region"].band == "stable" and site_a["alcohol"].band == "stable"
    assert site_b["region"].band == "drift" and site_b["alcohol"].band == "stable"
    assert [f.feature for f in by_site["site=b"].drifting()] == ["region"]
    # The fleet's region counts are the devices' added up; the unseen ones are the last count.
    (fleet,) = fleet_drift("wine", "1.0.0", profile, devices)
    region = fleet.to_dict()["features"][1]
    assert region["feature"] == "region" and region["rows"] == 4 * 600
    unseen = sum(d.features[1][-1] for d in devices)
    assert unseen == devices[2].features[1][-1] + devices[3].features[1][-1] > 0
    assert telemetry.psi([sum(d.features[1][b] for d in devices) for b in range(4)],
                         REFERENCE["features"][1]["counts"]) == fleet.features[1].psi
