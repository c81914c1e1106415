"""The console's fleet counts and device pages (fleet_server.telemetry.listing): filters as the
devices page applied them in the browser, pages sorted by id, counts that do not grow with labels."""

from __future__ import annotations

import pytest

from fleet_server.errors import InvalidInputError
from fleet_server.telemetry.listing import MAX_LABEL_ROWS, DeviceQuery, Listed, select, summarize


def device(i: int, state: str = "online", **labels: str) -> Listed:
    return Listed(f"dev-{i:03d}", f"host-{i}", "rpi4-64" if i % 2 else "jetson", labels or {"site": f"s{i % 3}"},
                  state, {"digits": "1.0.0" if i % 4 else "1.1.0"})


FLEET = [device(i, "offline" if i % 5 == 0 else "online") for i in range(1, 21)] + [device(99, "revoked")]


def test_filters_match_id_hostname_label_and_version_text_state_profile_and_label() -> None:
    assert [d.id for d in select(FLEET, DeviceQuery(q="DEV-007"))[0]] == ["dev-007"]
    assert [d.id for d in select(FLEET, DeviceQuery(q="host-12"))[0]] == ["dev-012"]
    assert select(FLEET, DeviceQuery(q="digits@1.1.0"))[1] == 5
    assert select(FLEET, DeviceQuery(state="offline"))[1] == 4
    assert select(FLEET, DeviceQuery(state="revoked"))[1] == 1
    assert select(FLEET, DeviceQuery(profile="jetson", label="site=s0"))[1] == 3  # 6, 12, 18
    assert select(FLEET, DeviceQuery(label="site"))[1] == len(FLEET)
    assert select(FLEET, DeviceQuery(label="zone"))[1] == 0


def test_pages_are_sorted_by_id_and_count_every_match() -> None:
    page, matched = select(reversed(FLEET), DeviceQuery(offset=5, limit=5))
    assert matched == 21 and [d.id for d in page] == [f"dev-{i:03d}" for i in range(6, 11)]
    assert select(FLEET, DeviceQuery(offset=40))[0] == []
    with pytest.raises(InvalidInputError):
        DeviceQuery(limit=0)
    with pytest.raises(InvalidInputError):
        DeviceQuery(state="asleep")


def test_summary_counts_presence_per_profile_label_and_version_of_enrolled_devices() -> None:
    summary = summarize(FLEET)
    assert summary["devices"] == {"online": 16, "offline": 4, "revoked": 1} and summary["total"] == 21
    assert {p["profile"]: (p["online"], p["offline"]) for p in summary["profiles"]} == {"jetson": (8, 2),
                                                                                         "rpi4-64": (8, 2)}
    assert sum(v["devices"] for v in summary["versions"]) == 20  # the revoked device is not in service
    assert {row["label"] for row in summary["labels"]} == {"site=s0", "site=s1", "site=s2"}


def test_a_label_per_device_does_not_make_the_summary_grow_with_the_fleet() -> None:
    fleet = [device(i, serial=f"sn-{i}") for i in range(MAX_LABEL_ROWS + 50)]
    summary = summarize(fleet)
    assert len(summary["labels"]) == MAX_LABEL_ROWS and summary["labels_left_out"] == 50
