"""Real agent processes report to a real server through a real Mosquitto.

Two agents serve the converter-made digits bundle: the one at site a sees held-out digits,
the one at site b sees images washed out to full intensity (every pixel 16: a sensor fault).
The server stores their batches, shows site b's drift by label, fires the drift alert at a
local webhook, reports the accuracy the operator fed back to site a, and its own predict
endpoint answers the same rows exactly as the agents do.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.install import install_bundle
from edgefleet.profiles import load_profile
from fleet_server.telemetry.alerts import AlertConfig, Rule
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import AgentProcess, dev_state, eventually
from tests.integration.server.harness import RunningServer, server_config
from tests.integration.telemetry.conftest import Webhook
from tests.integration.telemetry.fleet import add_device
from tests.support.bundles import example

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoProcess, webhook: Webhook, digits_bundle: Path) -> Iterator[RunningServer]:
    alerts = AlertConfig(rules=(Rule.from_dict({"name": "site-drift", "kind": "drift", "band": "drift",
                                                "match": "digits@1.0.0 site=*"}),),
                         webhook=webhook.url, evaluate_every_s=3600)
    config = server_config(tmp_path / "server", f"sqlite:///{tmp_path}/server.sqlite", broker_url=mosquitto.url,
                           alerts=alerts)
    with RunningServer(config) as running:
        running.ctx.registry.push(digits_bundle)
        assert running.ctx.mqtt.wait_connected(10)
        yield running


def _agent(tmp_path: Path, name: str, bundle: Path, broker: MosquittoProcess) -> AgentProcess:
    state = dev_state(tmp_path / name, device_id=name, broker_url=broker.url)
    install_bundle(state, bundle, load_profile("generic-x86_64"))
    toml = tmp_path / f"{name}.toml"
    toml.write_text("telemetry_interval_s = 0.4\ntelemetry_drift_every = 1\n")
    return AgentProcess(state.path, "--config", str(toml))


def _validation() -> tuple[list[list[float]], list[int]]:
    with example().validation_csv.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        label = header.index(example().labels_column)
        data = [[float(v) for v in row] for row in reader]
    return [[v for i, v in enumerate(row) if i != label] for row in data], [int(row[label]) for row in data]


def _predict(url: str, rows: list[list[float]], **headers: str) -> dict[str, Any]:
    answer = httpx.post(url, json={"inputs": rows}, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_agents_report_drift_accuracy_and_agree_with_the_server(
        tmp_path: Path, server: RunningServer, mosquitto: MosquittoProcess, webhook: Webhook,
        digits_bundle: Path) -> None:
    add_device(server.ctx.db, "dev-site-a", labels={"site": "a"})
    add_device(server.ctx.db, "dev-site-b", labels={"site": "b"})
    agents = [_agent(tmp_path, "dev-site-a", digits_bundle, mosquitto),
              _agent(tmp_path, "dev-site-b", digits_bundle, mosquitto)]
    try:
        site_a, site_b = (a.wait_ready() for a in agents)
        rows, truth = _validation()
        # 300 rows: with a few dozen, the worst of 64 features' PSI is noisy enough to cross 0.25 alone.
        rows, truth = rows[:300], truth[:300]
        # 200 rows: the drift rule judges a group only from its default min_rows (200) merged rows.
        washed = [[16.0] * 64 for _ in range(200)]
        answers = [_predict(f"{site_a.url}/v1/models/digits/predict", rows[i:i + 30]) for i in range(0, 300, 30)]
        edge_b = _predict(f"{site_b.url}/v1/models/digits/predict", washed)
        feedback = [{"request_id": a["request_id"], "label": truth[30 * i + r], "row": r}
                    for i, a in enumerate(answers[:2]) for r in range(30)]
        done = httpx.post(f"{site_a.url}/v1/feedback", json=feedback, timeout=5)
        assert done.status_code == 200, done.text
        (edge_accuracy,) = done.json()["accuracy"]

        def drift_view() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx.get(f"{server.url}/api/v1/models/digits/1.0.0/drift",
                                             params={"by": "label:site"}, headers=ADMIN).json()
            groups = {g["group"]: g for g in view["groups"]}
            rows_seen = {name: max((f["rows"] for f in g["features"]), default=0) for name, g in groups.items()}
            labels = sum(v["labels"] for v in view["versions"])
            done_ = rows_seen.get("site=a") == 300 and rows_seen.get("site=b") == 200 and labels == 60
            return view if done_ else None

        assert eventually(drift_view, timeout=30), (site_a.log()[-2000:], server.ctx.ingest.counts())
        view = drift_view()
        assert view is not None
        groups = {g["group"]: g for g in view["groups"]}
        assert groups["site=b"]["band"] == "drift" and groups["site=a"]["max_psi"] < groups["site=b"]["max_psi"]
        (version,) = view["versions"]
        assert (version["labels"], version["correct"]) == (edge_accuracy["labels"], edge_accuracy["correct"])

        events = server.ctx.monitor.evaluate(now=time.time())
        assert [(e.subject, e.state) for e in events if e.rule.name == "site-drift"] == [
            ("digits@1.0.0 site=b", "firing")]
        assert [(h["subject"], h["state"]) for h in webhook.received] == [("digits@1.0.0 site=b", "firing")]

        cloud = f"{server.url}/api/v1/models/digits/predict"
        assert _predict(cloud, washed, Authorization=ADMIN["Authorization"])["predictions"] == edge_b["predictions"]
        cloud_a = _predict(cloud, rows[:30], Authorization=ADMIN["Authorization"])
        assert cloud_a["predictions"] == answers[0]["predictions"]
        assert len(cloud_a["probabilities"]) == 30
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.terminate()
