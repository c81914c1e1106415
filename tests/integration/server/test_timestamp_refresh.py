"""The running server re-signs the TUF timestamp before it expires (time injected, not waited on)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from fleet_server.app import create_app
from tests.integration.server.harness import server_config


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _timestamp(client: TestClient) -> dict:
    signed: dict = client.get("/tuf/metadata/timestamp.json").json()["signed"]
    return signed


def test_background_task_resigns_a_timestamp_close_to_expiry(tmp_path: Path) -> None:
    clock = Clock()
    config = server_config(tmp_path / "data", timestamp_refresh_seconds=0.05,
                           timestamp_min_remaining_seconds=6 * 3600)
    with TestClient(create_app(config, mqtt=False, clock=clock)) as client:
        first = _timestamp(client)
        time.sleep(0.2)
        assert _timestamp(client)["version"] == first["version"]  # plenty of time left: nothing re-signed
        clock.now += timedelta(hours=20)  # the one-day timestamp now has 4 h left
        deadline = time.monotonic() + 5
        while _timestamp(client)["version"] == first["version"]:
            assert time.monotonic() < deadline, "the timestamp was not re-signed"
            time.sleep(0.05)
        refreshed = _timestamp(client)
    expires = datetime.strptime(refreshed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expires - clock.now >= timedelta(hours=23)
