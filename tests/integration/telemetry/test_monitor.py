"""The alert loop over the database: episodes persisted, replicas serialised, config from TOML."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from fleet_server.config import load_config
from fleet_server.db import Database
from fleet_server.errors import ConfigError, InvalidInputError
from fleet_server.registry.artifacts import LocalArtifactStore
from fleet_server.registry.bundle_cache import BundleCache
from fleet_server.tables import DeviceRow
from fleet_server.telemetry.alerts import AlertConfig, AlertEvent, Rule
from fleet_server.telemetry.monitor import AlertMonitor
from fleet_server.telemetry.views import FleetViews, check_by
from tests.integration.telemetry.fleet import add_device

INTERVAL = 60.0


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def _monitor(db: Database, tmp_path: Path, sink: Recorder) -> AlertMonitor:
    config = AlertConfig(rules=(Rule.from_dict({"name": "site-down", "kind": "offline", "threshold": 1,
                                                "resolve": 0.5, "match": "site=*"}),), evaluate_every_s=INTERVAL)
    views = FleetViews(db, BundleCache(db, LocalArtifactStore(tmp_path / "artifacts")))
    return AlertMonitor(db, views, config, sinks=[sink])


def _set_online(db: Database, device_id: str, online: bool) -> None:
    with db.session() as session:
        session.execute(update(DeviceRow).where(DeviceRow.id == device_id).values(online=online))


def test_replicas_fire_once_per_episode_and_resolve_once(db: Database, tmp_path: Path) -> None:
    for name in ("d1", "d2", "d3"):
        add_device(db, name, labels={"site": "b"}, online=False)
    add_device(db, "d4", labels={"site": "a"})
    a_sink, b_sink = Recorder(), Recorder()
    replica_a, replica_b = _monitor(db, tmp_path, a_sink), _monitor(db, tmp_path, b_sink)

    fired = replica_a.evaluate(now=1000.0)
    assert [(e.subject, e.state, e.value) for e in fired] == [("site=b", "firing", 3.0)]
    assert replica_b.evaluate(now=1001.0) == []  # the round was just done by the other replica
    assert replica_b.evaluate(now=1000.0 + INTERVAL) == []  # same episode, persisted: no second firing
    assert [e["state"] for e in replica_b.episodes()] == ["firing"]

    for name in ("d1", "d2", "d3"):
        _set_online(db, name, True)
    resolved = replica_b.evaluate(now=1000.0 + 2 * INTERVAL)
    assert [(e.subject, e.state) for e in resolved] == [("site=b", "resolved")]
    assert replica_a.evaluate(now=1000.0 + 3 * INTERVAL) == []
    assert [e.state for e in a_sink.events + b_sink.events] == ["firing", "resolved"]
    assert replica_a.episodes() == []


def test_no_rules_means_no_rounds(db: Database, tmp_path: Path) -> None:
    views = FleetViews(db, BundleCache(db, LocalArtifactStore(tmp_path / "artifacts")))
    monitor = AlertMonitor(db, views, AlertConfig(), sinks=[])
    assert monitor.evaluate(now=1.0) == [] and monitor.episodes() == []


def test_alerts_table_is_read_from_the_server_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('port = 9000\ntelemetry_window_seconds = 900\n\n[alerts]\nwebhook = "http://127.0.0.1:9/h"\n'
                    'evaluate_every_s = 30\n\n[[alerts.rules]]\nname = "drift"\nkind = "drift"\nband = "drift"\n')
    config = load_config({}, env={}, config_file=path)
    assert config.port == 9000 and config.telemetry_window_seconds == 900
    assert config.alerts.webhook == "http://127.0.0.1:9/h" and config.alerts.evaluate_every_s == 30
    assert [(r.name, r.threshold, r.resolve_at) for r in config.alerts.rules] == [("drift", 0.25, 0.1)]
    path.write_text('[server]\nport = 9001\n\n[alerts]\nrules = [{name = "x", kind = "nope", threshold = 1}]\n')
    with pytest.raises(ConfigError, match="kind 'nope'"):
        load_config({}, env={}, config_file=path)


@pytest.mark.parametrize("by, expected", [(None, None), ("fleet", None), ("profile", "profile"),
                                          ("site", "label:site"), ("label:site", "label:site")])
def test_check_by_names_the_grouping(by: str | None, expected: str | None) -> None:
    assert check_by(by) == expected


@pytest.mark.parametrize("by", ["label:", "label:a b", "x" * 70, "site=b"])
def test_check_by_refuses_what_is_not_a_grouping(by: str) -> None:
    with pytest.raises(InvalidInputError, match="by=profile or by=label:NAME"):
        check_by(by)
