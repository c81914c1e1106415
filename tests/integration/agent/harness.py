"""Helpers for the agent's integration tests: a real daemon process and a real MQTT observer.

``AgentProcess`` runs ``python -m edgefleet.cli agent run`` on a state directory, waits until
its API answers, and can stop it with SIGTERM or SIGKILL. ``Observer`` is a plain paho client
that records what the agent publishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.state import Identity, StateDir
from edgefleet.profiles import load_profile
from simulation.fleet import free_port

REPO = Path(__file__).resolve().parents[3]


def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``edgefleet ARGS`` in a fresh process, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}, check=False)


def dev_state(path: Path, *, device_id: str = "dev-test", broker_url: str = "") -> StateDir:
    """A state directory as enrollment would leave it (anonymous broker, generic profile)."""
    state = StateDir(path).ensure()
    state.save_profile(load_profile("generic-x86_64").to_toml())
    state.save_identity(Identity(device_id, "", broker_url, "generic-x86_64"))
    return state


class AgentProcess:
    def __init__(self, state_dir: Path, *extra: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.state_dir = state_dir
        log = (state_dir.parent / f"agent-{self.port}.log").open("w")
        self.log_path = Path(log.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "-v", "agent", "run", "--state-dir", str(state_dir),
             "--http-port", str(self.port), *extra], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {})})
        log.close()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> AgentProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        assert eventually(up, timeout), f"agent did not answer on {self.url}:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def predict(self, rows: Any, model: str = "iris") -> httpx.Response:
        return httpx.post(f"{self.url}/v1/models/{model}/predict", json={"inputs": rows}, timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> AgentProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Observer:
    """A paho client that records every message on ``topic`` (retained ones included)."""

    def __init__(self, port: int, topic: str, *, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{time.monotonic_ns()}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self.lock:
            self.messages.append(json.loads(message.payload))

    def last(self) -> dict[str, Any] | None:
        with self.lock:
            return self.messages[-1] if self.messages else None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
