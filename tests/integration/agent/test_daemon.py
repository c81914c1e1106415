"""The agent daemon as a real process: offline first, presence over a real Mosquitto, graceful
SIGTERM, systemd notify, local install and batch prediction from the command line."""

from __future__ import annotations

import csv
import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet import topics
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import (
    AgentProcess,
    Observer,
    cli,
    dev_state,
    eventually,
    free_port,
)
from tests.unit.agent.models import FEATURES, LABELS, linear_probabilities, make_linear_bundle

ROW = [5.1, 3.5, 1.4, 0.2]


def install(state: StateDir, tmp_path: Path, version: str = "1.0.0", seed: int = 0) -> None:
    bundle = tmp_path / f"iris-{version}.tar.gz"
    bundle.write_bytes(make_linear_bundle(version, seed=seed))
    done = cli("agent", "install", str(bundle), "--state-dir", str(state.path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["version"] == version


def test_started_with_the_broker_down_it_serves_and_reports_once_the_broker_is_up(tmp_path: Path) -> None:
    port = free_port()
    state = dev_state(tmp_path / "state", broker_url=f"mqtt://127.0.0.1:{port}")
    install(state, tmp_path)
    with AgentProcess(state.path) as agent:
        answer = agent.predict([ROW])  # no broker anywhere: inference must not wait on it
        assert answer.status_code == 200 and answer.json()["version"] == "1.0.0"
        with MosquittoProcess(None, tmp_path / "mqtt", port=port, auth=False, persistence=False):
            observer = Observer(port, topics.reported("dev-test"))
            try:
                reported = eventually(lambda: (m := observer.last()) and m.get("online") and m, timeout=20)
                assert reported, f"no reported state:\n{agent.log()}"
                assert reported["device_id"] == "dev-test" and reported["profile"] == "generic-x86_64"
                assert reported["models"]["iris"]["version"] == "1.0.0"
                assert reported["update"] == {"state": "idle"} and reported["agent_version"]
                # A new model version is a change: reported again, retained.
                install(state, tmp_path, "1.1.0", seed=1)
                again = eventually(lambda: (m := observer.last()) and m["models"]["iris"]["version"] == "1.1.0", timeout=10)
                assert again, observer.messages
            finally:
                observer.close()


def test_last_will_marks_the_device_offline_when_the_agent_is_sigkilled(tmp_path: Path,
                                                                        mosquitto: MosquittoProcess) -> None:
    state = dev_state(tmp_path / "state", broker_url=mosquitto.url)
    install(state, tmp_path)
    observer = Observer(mosquitto.port, topics.reported("dev-test"))
    try:
        with AgentProcess(state.path) as agent:
            assert eventually(lambda: (m := observer.last()) and m.get("online") is True, timeout=15), agent.log()
            agent.kill()
        assert eventually(lambda: observer.last() == {"device_id": "dev-test", "online": False}, timeout=15)
    finally:
        observer.close()
    late = Observer(mosquitto.port, topics.reported("dev-test"))  # retained: a server that starts later sees it
    try:
        assert eventually(lambda: late.last() == {"device_id": "dev-test", "online": False}, timeout=5)
    finally:
        late.close()


def test_sigterm_finishes_the_request_in_flight_then_exits_cleanly(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    install(state, tmp_path)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify_path))
        systemd.settimeout(10)
        agent = AgentProcess(state.path, "--no-mqtt", env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
        with agent:
            assert systemd.recv(200).startswith(b"READY=1")
            assert systemd.recv(200) == b"WATCHDOG=1"  # pinged from the event loop
            body = json.dumps({"inputs": [ROW]}).encode()
            with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as client:
                client.sendall(b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\n"
                               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
                time.sleep(0.5)  # the request is in flight: head read, body pending
                agent.proc.send_signal(15)
                time.sleep(0.5)
                assert agent.proc.poll() is None, "the agent exited with a request in flight"
                client.sendall(body[5:])
                answer = client.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            assert b"Connection: close" in answer
            assert agent.proc.wait(15) == 0
        messages = []
        while True:
            try:
                messages.append(systemd.recv(200))
            except TimeoutError:
                break
            if messages[-1] == b"STOPPING=1":
                break
        assert b"STOPPING=1" in messages


def test_status_shows_the_state_dir_and_the_live_daemon(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    install(state, tmp_path)
    with AgentProcess(state.path, "--no-mqtt") as agent:
        agent.predict([ROW, ROW])
        done = cli("agent", "status", "--state-dir", str(state.path), "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["identity"]["device_id"] == "dev-test"
        assert status["models"] == [{"name": "iris", "active": {"version": "1.0.0", "sha256": status["models"][0]["active"]["sha256"]},
                                     "previous": None}]
        daemon = status["daemon"]
        assert daemon["pid"] == agent.proc.pid and daemon["mqtt"]["enabled"] is False
        assert daemon["models"][0]["requests"] == 1 and daemon["api"]["socket"] == str(state.socket_path)
        text = cli("agent", "status", "--state-dir", str(state.path))
        assert "running (pid" in text.stdout and "iris" in text.stdout
    stopped = cli("agent", "status", "--state-dir", str(state.path))
    assert stopped.returncode == 0 and "not running" in stopped.stdout


def test_install_while_running_switches_what_serves(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    install(state, tmp_path)
    with AgentProcess(state.path, "--no-mqtt") as agent:
        assert agent.predict([ROW]).json()["version"] == "1.0.0"
        install(state, tmp_path, "2.0.0", seed=2)
        answer = agent.predict([ROW]).json()
        assert answer["version"] == "2.0.0"
        expected = linear_probabilities(np.array([ROW], np.float32), 2)[0]
        assert answer["probabilities"][0] == pytest.approx(expected.tolist(), abs=1e-6)
        # A pointer switched by another process is picked up on SIGHUP (systemctl reload).
        assert ModelStore(state).rollback("iris") is not None
        agent.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: agent.predict([ROW]).json()["version"] == "1.0.0"), agent.log()


def test_batch_predict_over_csv_with_the_daemon_stopped(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    install(state, tmp_path)
    rows = np.random.default_rng(3).normal(size=(1000, 4)).astype(np.float32)
    source = tmp_path / "rows.csv"
    order = [3, 1, 0, 2]  # the header names the columns, in any order
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([FEATURES[i] for i in order])
        writer.writerows(rows[:, order].tolist())
    out = tmp_path / "out" / "predictions.csv"
    done = cli("agent", "predict", "--model", "iris", "--input", str(source), "--output", str(out),
               "--chunk-rows", "128", "--state-dir", str(state.path), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 1000 and summary["version"] == "1.0.0"
    with out.open() as handle:
        result = list(csv.reader(handle))
    assert result[0] == ["prediction", *(f"p_{label}" for label in LABELS)]
    expected = linear_probabilities(rows, 0)
    assert [r[0] for r in result[1:]] == [LABELS[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(np.array([r[1:] for r in result[1:]], dtype=np.float32), expected, atol=1e-5)


def test_batch_predict_names_a_bad_cell(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    install(state, tmp_path)
    source = tmp_path / "bad.csv"
    source.write_text("1,2,3,4\n1,2,x,4\n")
    out = tmp_path / "out.csv"
    done = cli("agent", "predict", "--model", "iris", "--input", str(source), "--output", str(out),
               "--state-dir", str(state.path))
    assert done.returncode == 1
    assert "row 2, column 3 is 'x'" in done.stderr and not out.exists()
