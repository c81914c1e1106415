"""One device's stored data cannot break a fleet view (issue 14, "View poisoning").

Rows are written straight into the tables, as a server without ingest validation (or an
older one) would have stored them; then the device list, one device, the drift view and the
admin CLI are read through a real server on SQLite and on PostgreSQL. Each bad device is
skipped or neutralised and told in its own ``problems``; the good device's figures stay whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.bundle import build_bundle_bytes, read_bundle
from edgefleet.cli import main
from fleet_server.tables import DeviceRow, TelemetryRecordRow
from tests.integration.server.harness import RunningServer, make_bundle, server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}
MODEL, VERSION = "poison", "1.0.0"
# Two features of 3 bins and two output classes: the reference every device's counts must fit.
REFERENCE = {"rows": 60, "features": [{"name": "a", "edges": [-1.0, 0.0, 1.0, 2.0], "counts": [20, 20, 20]},
                                      {"name": "b", "edges": [-1.0, 0.0, 1.0, 2.0], "counts": [20, 20, 20]}],
             "outputs": {"kind": "classes", "labels": [0, 1], "counts": [30, 30]}}
GOOD_DRIFT = [[10, 10, 10], [10, 10, 10]]


def _bundle() -> bytes:
    original = read_bundle(make_bundle(MODEL, VERSION))
    files = {**original.files, "reference.json": json.dumps(REFERENCE).encode()}
    fields = {k: v for k, v in original.manifest.to_dict().items() if k != "files"}
    return build_bundle_bytes(fields, files)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    with RunningServer(server_config(tmp_path / "data", database_url), mqtt=False) as running:
        pushed = httpx.post(f"{running.url}/api/v1/models", headers=ADMIN,
                            files={"bundle": ("b.tar.gz", _bundle(), "application/gzip")})
        assert pushed.status_code == 201, pushed.text
        yield running


def _device(session: Any, device_id: str, reported: Any) -> None:
    session.add(DeviceRow(id=device_id, profile="rpi4-64", labels={"site": "x"}, mqtt_username=f"u-{device_id}",
                          mqtt_password_hash="-", api_token_hash=f"h-{device_id}", status="enrolled", online=True,
                          reported=reported, enrolled_at=datetime.now(UTC)))


def _batch(session: Any, device_id: str, seq: int, *, drift: Any = GOOD_DRIFT, outputs: Any = (15, 15),
           count: int = 30, errors: Any = None, ts: datetime | None = None) -> None:
    session.add(TelemetryRecordRow(device_id=device_id, seq=seq, model=MODEL, version=VERSION,
                                   ts=ts or datetime.now(UTC) - timedelta(minutes=1), count=count,
                                   errors=errors or {}, p50_ms=1.0, p95_ms=2.0, p99_ms=3.0,
                                   outputs=list(outputs), drift=drift, feedback_labels=0, feedback_correct=0))


def _store(server: RunningServer, bad: str, **batch: Any) -> None:
    with server.ctx.db.session() as session:
        _device(session, "good", {"online": True, "models": {MODEL: {"version": VERSION}}})
        _device(session, bad, {"online": True, "models": {MODEL: {"version": VERSION}}})
        _batch(session, "good", 1)
        _batch(session, bad, 1, **batch)
        session.commit()


def _views(server: RunningServer) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    devices = httpx.get(f"{server.url}/api/v1/devices", headers=ADMIN)
    assert devices.status_code == 200, devices.text
    drift = httpx.get(f"{server.url}/api/v1/models/{MODEL}/{VERSION}/drift", headers=ADMIN)
    assert drift.status_code == 200, drift.text
    return {d["id"]: d for d in devices.json()}, drift.json()


def _fleet(drift: dict[str, Any]) -> dict[str, Any]:
    (group,) = drift["groups"]
    return dict(group)


def _skipped(drift: dict[str, Any]) -> dict[str, list[str]]:
    return {s["device_id"]: s["problems"] for s in drift["skipped"]}


@pytest.mark.parametrize("drift", [[[2**64, 0, 0], [0, 0, 0]], [[2**63 - 1, 0, 0], [0, 0, 0]]],
                         ids=["2**64", "int64-max"])
def test_a_huge_drift_count_skips_that_batch_only(server: RunningServer, drift: Any) -> None:
    _store(server, "bad", drift=drift)
    devices, view = _views(server)
    assert devices["good"]["drift_band"] == "stable" and devices["good"]["problems"] == []
    assert devices["bad"]["drift_band"] is None and "a count is over" in devices["bad"]["problems"][0]
    assert _fleet(view)["devices"] == 1 and _fleet(view)["requests"] == 30  # the good device's batch alone
    assert "bad" in _skipped(view) and "good" not in _skipped(view)


@pytest.mark.parametrize("drift", [[1, 2, 3], {"a": [1]}, "counts", [[1, 2], [3, 4]], [[1, 2, 3]],
                                   [[1, 2, 3], [1, -2, 3]], [[1, 2, 3], [1, "2", 3]], [[1.5, 2, 3], [1, 2, 3]]],
                         ids=["flat", "object", "string", "two-bins", "one-feature", "negative", "text", "float"])
def test_drift_counts_of_another_shape_do_not_fail_the_fleet(server: RunningServer, drift: Any) -> None:
    _store(server, "bad", drift=drift)
    devices, view = _views(server)
    assert devices["good"]["drift_band"] == "stable" and devices["good"]["problems"] == []
    assert devices["bad"]["problems"], devices["bad"]
    assert [f["rows"] for f in _fleet(view)["features"]] == [30, 30]  # the good device's rows alone
    assert "bad" in _skipped(view)


def test_output_counts_over_other_classes_are_ignored_but_requests_count(server: RunningServer) -> None:
    _store(server, "bad", outputs=(1, 2, 3, 4))
    devices, view = _views(server)
    assert "output counts over 4" in devices["bad"]["problems"][0]
    assert _fleet(view)["requests"] == 60 and _fleet(view)["output"]["rows"] == 30


def test_batches_dated_in_the_year_2999_count_in_no_window(server: RunningServer) -> None:
    _store(server, "bad", ts=datetime(2999, 1, 1, tzinfo=UTC), count=1_500_000)
    devices, view = _views(server)
    assert [v["requests"] for v in view["versions"]] == [30]
    assert "dated after" in devices["bad"]["problems"][0] and devices["good"]["problems"] == []
    assert "bad" in _skipped(view)


@pytest.mark.parametrize("models", [[{"name": MODEL, "version": VERSION}], "poison@1.0.0",
                                    {MODEL: "1.0.0"}, {MODEL: {"version": 7}}],
                         ids=["list", "string", "bare-version", "number-version"])
def test_a_reported_models_of_another_shape_shows_no_versions(server: RunningServer, models: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with server.ctx.db.session() as session:
        _device(session, "good", {"online": True, "models": {MODEL: {"version": VERSION}}})
        _device(session, "bad", {"online": True, "models": models, "update": ["x"]})
        session.commit()
    devices, _ = _views(server)
    assert devices["good"]["versions"] == {MODEL: VERSION}
    assert devices["bad"]["versions"] == {} and devices["bad"]["problems"][0].startswith("reported.models")
    shown = httpx.get(f"{server.url}/api/v1/devices/bad", headers=ADMIN)
    assert shown.status_code == 200 and shown.json()["problems"] == devices["bad"]["problems"]

    flags = ["--server", server.url, "--token", "test-admin-token"]
    capsys.readouterr()
    assert main(["devices", "show", "bad", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "reported.models" in out
    assert main(["devices", "list", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "good" in out and "bad" in out


def test_nan_in_a_stored_report_is_shown_as_null(tmp_path: Path) -> None:
    # SQLite only: PostgreSQL refuses NaN in a JSON column, so only SQLite can hold such a row.
    config = server_config(tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite")
    with RunningServer(config, mqtt=False) as server:
        with server.ctx.db.session() as session:
            _device(session, "bad", {"online": True, "models": {}, "cpu": float("nan"), "t": [float("inf")]})
            session.commit()
        devices = {d["id"]: d for d in httpx.get(f"{server.url}/api/v1/devices", headers=ADMIN).json()}
    assert devices["bad"]["reported"]["cpu"] is None and devices["bad"]["reported"]["t"] == [None]
    assert "NaN or infinity" in devices["bad"]["problems"][-1]


@pytest.mark.parametrize("models", [["poison"], "poison@1.0.0"], ids=["list", "string"])
def test_a_reported_models_of_another_shape_does_not_fail_rollouts(tmp_path: Path, database_url: str,
                                                                   models: Any) -> None:
    # With the embedded broker, so the rollout engine runs: POST /rollouts reads every device's report.
    with RunningServer(server_config(tmp_path / "data", database_url)) as server:
        assert httpx.post(f"{server.url}/api/v1/models", headers=ADMIN,
                          files={"bundle": ("b.tar.gz", _bundle(), "application/gzip")}).status_code == 201
        with server.ctx.db.session() as session:
            _device(session, "good", {"online": True, "models": {}})
            _device(session, "bad", {"online": True, "models": models})
            session.commit()
        created = httpx.post(f"{server.url}/api/v1/rollouts", headers=ADMIN,
                             json={"model": MODEL, "version": VERSION, "waves": [100], "seed": 1})
        assert created.status_code == 201, created.text
        assert server.ctx.rollouts.tick() == 1  # a tick reads the reports again, and does not fail
        shown = httpx.get(f"{server.url}/api/v1/rollouts/{created.json()['id']}", headers=ADMIN)
        assert shown.status_code == 200, shown.text
        assert httpx.get(f"{server.url}/api/v1/devices", headers=ADMIN).status_code == 200
