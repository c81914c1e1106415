"""A whole fleet in real processes for the update-path tests, on simulation/fleet.py's harness.

``Fleet`` starts a Mosquitto with authentication on, then ``edgefleet server`` pointed at it
with ``--mosquitto-dir``/``--mosquitto-pid-file``, so the server itself writes the password and
ACL files and SIGHUPs the broker as devices enroll (simulation.fleet's ``MosquittoProcess`` and
``ServerProcess``). ``Fleet.enroll`` makes a one-time token over the REST API and runs
``edgefleet agent enroll`` as a device owner would; ``FleetAgent.start`` runs ``edgefleet agent
run`` with its own state directory and HTTP port. ``Load`` hammers every agent's local predict
API from one thread per agent and counts what failed.

What this adds to the harness is the test's view: the admin CLI and API, the agent's files,
the device events. It spawns and kills nothing itself, builds no bundles
(tests.support.bundles does) and asserts nothing: its waits raise with the logs.
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import topics
from simulation.fleet import (
    AgentProcess,
    MosquittoProcess,
    ServerProcess,
    Supervisor,
    edgefleet_run,
)
from simulation.fleet import wait_until as wait_for

__all__ = ["FAST_AGENT_ENV", "EventLog", "Fleet", "FleetAgent", "FleetServer", "Load", "cli", "fleet", "wait_for"]

# Short probation and a fast update tick: a rollout wave settles in seconds, not minutes.
FAST_AGENT_ENV = {"EDGEFLEET_PROBATION_S": "2", "EDGEFLEET_PROBATION_MIN_REQUESTS": "5",
                  "EDGEFLEET_UPDATE_TICK_S": "0.2"}


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``edgefleet ARGS`` in a fresh process, as a user types it."""
    return edgefleet_run(*args, env=env, timeout=timeout)


def _read(log: Path) -> str:
    """A process's whole log so far (its earlier runs included; it is kept after a kill)."""
    return log.read_text(errors="replace") if log.exists() else ""


class FleetServer(ServerProcess):
    """``edgefleet server`` on a data directory that outlives restarts, with the admin's view of it."""

    def __init__(self, supervisor: Supervisor, workdir: Path, broker: MosquittoProcess, *,
                 rollout_interval_s: float = 0.5) -> None:
        super().__init__(supervisor, workdir / "data", broker=broker,
                         env={"EDGEFLEET_ROLLOUT_INTERVAL_SECONDS": str(rollout_interval_s)})
        self.workdir = workdir
        self._token: str | None = None

    def log(self) -> str:
        return _read(self.supervisor.log_dir / "server.log")

    # -- admin side ----------------------------------------------------------------------------
    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.admin_token
        return self._token

    @property
    def cli_env(self) -> dict[str, str]:
        return {"EDGEFLEET_SERVER": self.url, "EDGEFLEET_TOKEN": self.token}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {self.token}"},
                             timeout=30, **kwargs)

    def admin(self, *args: str) -> Any:
        """``edgefleet ARGS --json`` as the admin; the parsed output, or an error with stderr."""
        done = cli(*args, "--json", env=self.cli_env)
        if done.returncode != 0:
            raise AssertionError(f"edgefleet {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return json.loads(done.stdout)

    def push(self, bundle: Path) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("models", "push", str(bundle))
        return result

    def create_rollout(self, ref: str, *flags: str) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("rollouts", "create", ref, *flags)
        return result

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/rollouts/{rollout_id}", params={"devices": "true"})
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def wait_rollout(self, rollout_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def reached() -> bool:
            last.update(self.rollout(rollout_id))
            return last["state"] in states

        wait_for(reached, timeout, f"rollout {rollout_id} to reach {sorted(states)}", every=0.25,
                 explain=lambda: json.dumps(last, indent=1)[-4000:])
        return last

    def device(self, device_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/devices/{device_id}")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def enrollment_token(self, profile: str, labels: Mapping[str, str]) -> str:
        response = self.api("POST", "/devices/enrollment-tokens", json={"profile": profile, "labels": dict(labels)})
        response.raise_for_status()
        return str(response.json()["token"])

    def target_file(self, model: dict[str, Any]) -> Path:
        """The stored TUF target file of a pushed model (what devices download).

        The repository uses consistent snapshots, so the file name carries the sha256 prefix."""
        directory, _, name = str(model["target_path"]).rpartition("/")
        return self.data_dir / "tuf" / "targets" / directory / f"{model['sha256']}.{name}"

    def mqtt_credentials(self) -> tuple[str, str]:
        document = json.loads((self.data_dir / "server-mqtt.json").read_text())
        return str(document["username"]), str(document["password"])


class FleetAgent(AgentProcess):
    """One device: a state directory and, while started, an ``edgefleet agent run -v`` process."""

    def __init__(self, supervisor: Supervisor, name: str, state_dir: Path) -> None:
        # The probation and tick come from FAST_AGENT_ENV, which overrides agent.toml.
        super().__init__(supervisor, name, state_dir, verbose=True, env=FAST_AGENT_ENV)

    def start(self, extra_env: Mapping[str, str] | None = None, *, wait: bool = True) -> FleetAgent:
        self.env = {**FAST_AGENT_ENV, **(extra_env or {})}
        super().start()
        if wait:
            self.wait_ready(30, every=0.05)
        return self

    def log(self) -> str:
        return _read(self.supervisor.log_dir / f"{self.name}.log")

    def update(self) -> dict[str, Any]:
        """update.json as the agent last persisted it ({} before any update)."""
        try:
            document: dict[str, Any] = json.loads((self.state_dir / "update.json").read_text())
        except FileNotFoundError:
            return {}
        return document

    def active_version(self, model: str) -> str | None:
        try:
            return str(json.loads((self.state_dir / "models" / model / "active.json").read_text())["version"])
        except FileNotFoundError:
            return None

    def accepted_assignment(self) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = json.loads((self.state_dir / "assignment.json").read_text())
        except FileNotFoundError:
            return None
        return document

    def predict(self, model: str, rows: list[list[float]]) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/models/{model}/predict", json={"inputs": rows}, timeout=10)

    def wait_update(self, state: str, timeout: float, *, version: str | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            update = self.update()
            ok = update.get("state") == state and (version is None or update.get("version") == version)
            return update if ok else None

        result: dict[str, Any] = wait_for(reached, timeout, f"agent {self.name} update state {state} {version or ''}",
                                          every=0.05, explain=lambda: f"{self.update()}\n{self.log()[-6000:]}")
        return result


class EventLog:
    """Every message on every device's ``events`` topic, read as the server's own MQTT user."""

    def __init__(self, broker: MosquittoProcess, username: str, password: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"events-{time.monotonic_ns()}")
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{topics.PREFIX}/devices/+/events", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("could not subscribe to device events as the server's MQTT user")

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.events.append(json.loads(message.payload))

    def of(self, device_id: str, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("device_id") == device_id and event in (None, e.get("event"))]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class _Tally:
    serving: bool = False  # an answer came back once: from then on every non-200 is a failure
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)


class Load:
    """One thread per agent posting predictions back to back; counts answers and failures.

    An agent that has never served the model yet (a first install still on its way) is waited
    for, not counted as failing; from its first answer on, every request that does not get a
    200 is a failure.
    """

    def __init__(self, agents: Sequence[FleetAgent], model: str, rows: list[list[float]]) -> None:
        self.agents = list(agents)
        self.model = model
        self.rows = rows
        self.tally = {a.name: _Tally() for a in self.agents}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a,), name=f"load-{a.name}", daemon=True)
                         for a in self.agents]

    def _run(self, agent: FleetAgent) -> None:
        tally = self.tally[agent.name]
        with httpx.Client(base_url=agent.url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"/v1/models/{self.model}/predict", json={"inputs": self.rows})
                    if response.status_code == 200:
                        tally.serving = True
                        tally.ok += 1
                        tally.versions.add(str(response.json()["version"]))
                    elif tally.serving:
                        tally.failed += 1
                        tally.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    if tally.serving:
                        tally.failed += 1
                        tally.failures.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.01)  # leave the two shared cores some room for the fleet itself

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    @property
    def failed(self) -> dict[str, list[str]]:
        return {name: t.failures[:5] for name, t in self.tally.items() if t.failed}

    def served(self, name: str) -> int:
        return self.tally[name].ok


class Fleet:
    """A broker, a server and any number of enrolled agents under ``workdir``; kills them all on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.supervisor = Supervisor(workdir / "logs")
        self.broker = MosquittoProcess(self.supervisor, workdir / "mosquitto", auth=True, persistence=False)
        self.server = FleetServer(self.supervisor, workdir / "server", self.broker)
        self.agents: list[FleetAgent] = []
        self._events: EventLog | None = None

    def start(self) -> Fleet:
        self.server.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.server.start()
        # Events are not retained: listen from the start so a test sees every one of them.
        self._events = EventLog(self.broker, *self.server.mqtt_credentials())
        return self

    @property
    def events(self) -> EventLog:
        assert self._events is not None, "the fleet is not started"
        return self._events

    def enroll(self, name: str, *, labels: Mapping[str, str] | None = None, profile: str = "generic-x86_64",
               install: Path | None = None) -> FleetAgent:
        """Enroll a device through the real flow; ``install`` puts a bundle on it offline first."""
        state_dir = self.workdir / "agents" / name
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        agent = FleetAgent(self.supervisor, name, state_dir)
        agent.enroll(self.server.url, self.server.enrollment_token(profile, labels or {}))
        if install is not None:
            done = cli("agent", "install", str(install), "--state-dir", str(state_dir))
            if done.returncode != 0:
                raise AssertionError(f"agent install failed:\n{done.stdout}{done.stderr}")
        self.agents.append(agent)
        return agent

    def wait_online(self, agents: Sequence[FleetAgent], timeout: float = 20) -> None:
        for agent in agents:
            wait_for(functools.partial(self._online, agent.device_id), timeout,
                     f"the server to see {agent.name} online", every=0.2, explain=agent.log)

    def _online(self, device_id: str) -> bool:
        return bool(self.server.device(device_id)["online"])

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        # SIGKILL the agents and the server (what a test leaves behind needs no goodbye), then
        # stop the broker and anything else the supervisor still holds.
        for agent in self.agents:
            agent.kill()
        self.server.kill()
        self.supervisor.stop_all()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def fleet(workdir: Path) -> Iterator[Fleet]:
    """Fixture body: a started fleet, torn down (every process group killed) after the test."""
    with Fleet(workdir) as running:
        yield running
