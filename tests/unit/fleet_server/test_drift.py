"""Fleet drift: devices' counts add up, and the merged scores see a shift on some devices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drift import DriftWindow
from edgefleet import telemetry
from edgefleet.telemetry import Feedback, ModelRecord, ReferenceProfile
from fleet_server.telemetry.drift import (
    FLEET,
    BandScorer,
    DeviceCounts,
    DriftInputError,
    drift_report,
    fleet_drift,
    hellinger,
    js_divergence,
    merge,
    merge_by,
)

FEATURES = 8
rng = np.random.default_rng(0)
TRAINING = rng.normal(size=(5000, FEATURES))


def _reference() -> dict[str, Any]:
    features = []
    for i in range(FEATURES):
        edges = np.unique(np.quantile(TRAINING[:, i], np.linspace(0, 1, 11)))
        counts = np.bincount(np.searchsorted(edges[1:-1], TRAINING[:, i], side="right"), minlength=len(edges) - 1)
        features.append({"name": f"f{i}", "edges": edges.tolist(), "counts": counts.tolist()})
    return {"rows": 5000, "features": features, "outputs": {"kind": "classes", "labels": ["a", "b"], "counts": [2500, 2500]}}


REFERENCE = _reference()
PROFILE = ReferenceProfile.from_dict(REFERENCE)


def device_records(shift: float, seed: int, batches: int = 3, rows: int = 400) -> list[ModelRecord]:
    """Records as a real agent's DriftWindow produces them, one per interval."""
    window = DriftWindow(REFERENCE)
    local = np.random.default_rng(seed)
    records = []
    for b in range(batches):
        x = local.normal(size=(rows, FEATURES))
        x[:, 0] += shift
        window.observe(x, ["a" if v > 0 else "b" for v in x[:, 1]], now=float(b))
        features, outputs = window.take_interval(include_features=b % 2 == 0)  # features on some batches only
        records.append(ModelRecord("digits", "1.0.0", count=rows, errors={"inference": b}, outputs=outputs,
                                   drift=features, feedback=Feedback(10, 9)))
    return records


def device(name: str, site: str, shift: float, seed: int) -> DeviceCounts:
    return DeviceCounts.from_records(name, "rpi4-64" if seed % 2 else "jetson-orin", {"site": site},
                                     device_records(shift, seed))


def test_a_device_window_adds_up_every_row_even_when_features_ride_on_some_batches() -> None:
    counts = device("dev-1", "a", 0.0, 1)
    assert all(sum(f) == 1200 for f in counts.features)
    assert sum(counts.outputs) == 1200
    assert counts.totals.count == 1200 and counts.totals.error_count == 3
    assert counts.totals.accuracy == pytest.approx(0.9)


def test_shift_on_one_site_shows_in_that_group_and_is_diluted_in_the_fleet() -> None:
    devices = [device(f"a{i}", "a", 0.0, i) for i in range(4)] + [device(f"b{i}", "b", 1.5, 10 + i) for i in range(2)]
    by_site = {r.group: r for r in fleet_drift("digits", "1.0.0", PROFILE, devices, by="site")}
    assert set(by_site) == {"site=a", "site=b"}
    assert by_site["site=a"].band == "stable"
    assert by_site["site=b"].band == "drift"
    assert [f.feature for f in by_site["site=b"].drifting()] == ["f0"]
    (fleet,) = fleet_drift("digits", "1.0.0", PROFILE, devices)
    assert fleet.group == FLEET and fleet.devices == 6
    assert by_site["site=a"].max_psi < fleet.max_psi < by_site["site=b"].max_psi
    f0 = by_site["site=b"].features[0]
    assert 0 < f0.js <= 1 and 0 < f0.hellinger <= 1
    document = fleet.to_dict()
    assert document["requests"] == 6 * 1200 and len(document["features"]) == FEATURES


def test_merging_is_adding_whatever_the_grouping() -> None:
    devices = [device(f"d{i}", "ab"[i % 2], 0.2 * i, i) for i in range(5)]
    for by in (None, "profile", "site", "label:site", "missing-label"):
        groups = merge_by(devices, by)
        assert sum(g.devices for g in groups.values()) == 5
        total = [sum(g.features[0][b] for g in groups.values()) for b in range(len(devices[0].features[0]))]
        assert total == [sum(d.features[0][b] for d in devices) for b in range(len(total))]
    assert set(merge_by(devices, "missing-label")) == {"missing-label=-"}
    assert set(merge_by(devices, "profile")) == {"rpi4-64", "jetson-orin"}


def test_fleet_psi_is_the_psi_of_the_summed_counts_the_agent_would_compute() -> None:
    devices = [device("x", "a", 0.7, 3), device("y", "a", 0.0, 4)]
    (report,) = fleet_drift("digits", "1.0.0", PROFILE, devices)
    summed = [a + b for a, b in zip(devices[0].features[0], devices[1].features[0], strict=True)]
    assert report.features[0].psi == pytest.approx(telemetry.psi(summed, REFERENCE["features"][0]["counts"]))


def test_a_report_counts_the_rows_merged_into_it() -> None:
    devices = [device("a1", "a", 0.0, 1), device("a2", "a", 0.0, 2), device("b1", "b", 2.0, 3)]
    reports = {r.group: r for r in fleet_drift("digits", "1.0.0", PROFILE, devices, by="site")}
    # 3 batches of 400 rows per device; a batch without features carries its counts to the next.
    assert (reports["site=a"].rows, reports["site=b"].rows) == (2400, 1200)
    assert reports["site=a"].to_dict()["rows"] == 2400
    assert fleet_drift("digits", "1.0.0", PROFILE, [], by="site") == []


def test_no_data_is_not_stable() -> None:
    assert fleet_drift("digits", "1.0.0", PROFILE, []) == []
    report = drift_report("digits", "1.0.0", PROFILE, merge(FLEET, []))
    assert report.band == "no data" and report.devices == 0 and report.totals.error_rate is None


def test_counts_of_another_bundle_are_refused_with_the_fix() -> None:
    wrong = DeviceCounts("dev-9", "rpi4-64", {}, ((1, 2),) * 3, ())
    with pytest.raises(DriftInputError, match="reference has 8"):
        fleet_drift("digits", "1.0.0", PROFILE, [wrong])
    other = DeviceCounts("dev-8", "rpi4-64", {}, ((1, 2, 3),) * 8, ())
    with pytest.raises(DriftInputError, match="dev-8 sent features over 8 x"):
        merge_by([device("dev-1", "a", 0.0, 1), other])
    with pytest.raises(DriftInputError, match="mix model versions"):
        DeviceCounts.from_records("dev-9", "p", {}, [ModelRecord("a", "1.0.0"), ModelRecord("a", "2.0.0")])


def test_js_and_hellinger_by_hand() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum, finite
    assert hellinger([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([5, 5], [1, 1]) == pytest.approx(0.0)
    # p = (.5, .5), q = (.9, .1)
    assert hellinger([5, 5], [9, 1]) == pytest.approx(math.sqrt(1 - (math.sqrt(.45) + math.sqrt(.05))))
    m = (0.7, 0.3)
    kl = 0.5 * (0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])) \
        + 0.5 * (0.9 * math.log2(0.9 / m[0]) + 0.1 * math.log2(0.1 / m[1]))
    assert js_divergence([5, 5], [9, 1]) == pytest.approx(kl)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=12))
def test_js_and_hellinger_are_bounded_and_symmetric(pairs: list[tuple[int, int]]) -> None:
    p, q = [a for a, _ in pairs], [b for _, b in pairs]
    for measure in (js_divergence, hellinger):
        value = measure(p, q)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(measure(q, p), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=10, max_size=10), min_size=FEATURES, max_size=FEATURES),
       st.integers(0, FEATURES))
def test_the_device_list_s_numpy_band_is_the_report_s_band(counts: list[list[int]], empty: int) -> None:
    widths = [f.bins for f in PROFILE.features]
    features = tuple(tuple(([0] * w) if i < empty else (c * 2)[:w]) for i, (c, w) in enumerate(zip(counts, widths,
                                                                                                    strict=True)))
    merged = merge(FLEET, [DeviceCounts("d", "p", {}, features, ())])
    assert BandScorer(PROFILE).band(features) == drift_report("m", "1.0.0", PROFILE, merged).band


def test_the_numpy_band_refuses_counts_of_another_shape() -> None:
    with pytest.raises(DriftInputError):
        BandScorer(PROFILE).band(((1, 2),))
