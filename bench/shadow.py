"""Benchmark: the served latency with a shadow candidate off and on (issue 18's budget).

The issue's budget: with shadow on (every request mirrored, ``sample`` 1.0), the served p99 must
not rise by more than 10%. Measured here, never asserted in a test.

Two real agent daemons (``edgefleet agent run``) are enrolled with one real fleet server and one
Mosquitto (simulation's process harness), and serve the same MLP bundle (``bench.models``). The
``shadow_on`` agent then gets a signed assignment whose entry carries a candidate in shadow mode
(the same model under another version: the candidate's work is a full second inference per
request), signed with the server's director key and published as the server publishes one; the
``shadow_off`` agent gets nothing. Both are pinned to the same server cores, the load generator
to its own (``processes.split_cores``). Each (clients, agent) is measured ``repeats`` times, the
two agents in an order swapped every repeat, single-row JSON requests over loopback TCP; figures
are the medians with their ranges. The shadow agent's own counters (``/metrics``: compared,
skipped) say how much of the mirrored work ran and how much was shed under that load.

Two agents rather than one toggled: a stage withdrawn and started again re-downloads and
re-checks the candidate, which would sit between the rows being compared.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import processes
from bench.errors import BenchError
from bench.loadgen import Target, run_load
from bench.models import PROFILE, prepare
from bench.stats import combine_repeats, ratio
from edgefleet import topics
from edgefleet.assignment import Assignment, Candidate, DirectorSigner, ModelTarget
from edgefleet.bundle import bundle_filename, read_bundle, write_bundle
from simulation.fleet import (
    AgentProcess,
    FleetError,
    MosquittoProcess,
    ServerProcess,
    Supervisor,
    edgefleet_run,
    wait_until,
)

CONCURRENCY = (1, 16)
REPEATS = 5
QUICK_REPEATS = 3
PATHS = ("shadow_off", "shadow_on")
P99_BUDGET = 1.10  # issue 18: the served p99 rises by at most 10% with shadow on


def _as_version(bundle: Path, version: str, directory: Path) -> Path:
    """``bundle``'s model, manifest and files under another version: a candidate that costs what the model does."""
    source = read_bundle(bundle)
    fields = source.manifest.to_dict()
    fields.pop("files")
    fields["version"] = version
    out = directory / bundle_filename(source.manifest.name, version)
    write_bundle(out, fields, dict(source.files))
    return out


def _push(server: ServerProcess, bundle: Path) -> ModelTarget:
    done = edgefleet_run("models", "push", str(bundle), "--server", server.url, "--token", server.admin_token,
                         "--json")
    if done.returncode != 0:
        raise BenchError(f"edgefleet models push {bundle.name} failed: {done.stderr.strip()[-400:]}")
    pushed = json.loads(done.stdout)
    return ModelTarget(str(pushed["version"]), str(pushed["target_path"]), str(pushed["sha256"]),
                       int(pushed["length"]))


def _enroll(supervisor: Supervisor, server: ServerProcess, name: str, work: Path, bundle: Path) -> AgentProcess:
    token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", json={"profile": PROFILE, "labels": {}},
                       headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
    token.raise_for_status()
    agent = AgentProcess(supervisor, name, work / name, settings={"telemetry_interval_s": 5.0})
    agent.enroll(server.url, str(token.json()["token"]))
    done = edgefleet_run("agent", "install", str(bundle), "--state-dir", str(agent.state_dir))
    if done.returncode != 0:
        raise BenchError(f"agent install failed: {done.stderr.strip()[-400:]}")
    return agent


def _publish_shadow(server: ServerProcess, broker: MosquittoProcess, agent: AgentProcess, model: str,
                    serving: ModelTarget, candidate: ModelTarget) -> None:
    """Sign the assignment (serving version + shadow candidate, sample 1.0) and publish it retained."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    signer = DirectorSigner.from_pem((server.data_dir / "keys" / "director.pem").read_bytes())
    now = datetime.now(UTC)
    envelope = signer.sign(Assignment(agent.device_id, 1_000_000, now - timedelta(seconds=5), now + timedelta(hours=2),
                                      "bench-shadow", {model: serving.with_candidate(Candidate.shadow(candidate))}))
    credentials = json.loads((server.data_dir / "server-mqtt.json").read_text())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-shadow-{time.monotonic_ns()}")
    client.username_pw_set(credentials["username"], credentials["password"])
    client.connect("127.0.0.1", broker.port, keepalive=10)
    client.loop_start()
    try:
        client.publish(topics.desired(agent.device_id), envelope, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _update_state(agent: AgentProcess) -> str | None:
    try:
        return str(json.loads((agent.state_dir / "update.json").read_text()).get("state"))
    except (OSError, ValueError):
        return None


def shadow_counters(agent: AgentProcess) -> dict[str, float]:
    """The shadow families of the agent's /metrics, by name (compared, agreed, skipped, errors)."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{agent.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("edgefleet_agent_shadow_") and "_total" in line:
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0].removeprefix("edgefleet_agent_shadow_").removesuffix("_total")
            out[key] = out.get(key, 0.0) + float(value)
    return out


@contextlib.contextmanager
def _fleet(work: Path, bundle: Path, model: str) -> Iterator[dict[str, AgentProcess]]:
    supervisor = Supervisor(work / "logs")
    try:
        broker = MosquittoProcess(supervisor, work / "mosquitto", auth=True, persistence=False).start()
        server = ServerProcess(supervisor, work / "server", broker=broker).start()
        serving = _push(server, bundle)
        candidate = _push(server, _as_version(bundle, "9.0.0", work))
        agents = {path: _enroll(supervisor, server, path.replace("_", "-"), work, bundle) for path in PATHS}
        server_cores, _ = processes.split_cores()
        for agent in agents.values():
            agent.start().wait_ready(60)
            if agent.child is not None:
                processes.pin_process(agent.child.proc.pid, server_cores)
        on = agents["shadow_on"]
        _publish_shadow(server, broker, on, model, serving, candidate)
        wait_until(lambda: _update_state(on) in ("shadow", "failed"), 120, "the candidate's shadow stage",
                   explain=lambda: on.child.log_tail(40) if on.child else "")
        if _update_state(on) != "shadow":
            raise BenchError(f"the shadow stage did not start: {(on.state_dir / 'update.json').read_text()[-600:]}")
        yield agents
    except FleetError as exc:
        raise BenchError(f"the shadow benchmark's fleet did not start: {exc}",
                         fix="read the process log above; it needs mosquitto (as scripts/test does) and free ports") from exc
    finally:
        supervisor.stop_all()


def run(*, quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    """The shadow section of a run document: served p50/p99 with shadow off and on, side by side."""
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    duration_s = 1.0 if quick else 3.0
    model = prepare("mlp")
    name = read_bundle(model.bundle_path).manifest.name
    features, _ = model.validation()
    body = {"inputs": [features[0].tolist()]}
    _, load_cores = processes.split_cores()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {p: {c: [] for c in CONCURRENCY} for p in PATHS}
    counters: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-shadow-") as tmp, \
            _fleet(Path(tmp), model.bundle_path, name) as agents:
        targets = {p: Target(f"/v1/models/{name}/predict", port=a.port) for p, a in agents.items()}
        before = shadow_counters(agents["shadow_on"])
        for repeat in range(repeats):
            for clients in CONCURRENCY:
                order = PATHS if repeat % 2 == 0 else PATHS[::-1]
                for path in order:
                    runs[path][clients].append(run_load(targets[path], body, clients, duration_s,
                                                        cpus=load_cores).to_dict())
        after = shadow_counters(agents["shadow_on"])
        counters = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    results = {p: {str(c): combine_repeats(runs[p][c]) for c in CONCURRENCY} for p in PATHS}
    summary: dict[str, Any] = {}
    for clients in CONCURRENCY:
        off, on = results["shadow_off"][str(clients)], results["shadow_on"][str(clients)]
        p99_ratio = ratio(on["p99_ms"], off["p99_ms"])
        summary[str(clients)] = {"p50_off_ms": off["p50_ms"], "p50_on_ms": on["p50_ms"],
                                 "p99_off_ms": off["p99_ms"], "p99_on_ms": on["p99_ms"],
                                 "p50_ratio": ratio(on["p50_ms"], off["p50_ms"]), "p99_ratio": p99_ratio,
                                 "p99_budget_met": None if p99_ratio is None else p99_ratio <= P99_BUDGET}
    mirrored = counters.get("compared", 0.0) + counters.get("skipped", 0.0)
    return {"model": name, "sample": 1.0, "concurrency": list(CONCURRENCY), "duration_s": duration_s,
            "repeats": repeats, "order": "swapped every repeat", "transport": "loopback TCP, single-row JSON",
            "results": results, "summary": summary,
            "shadow_work": {**counters, "shed_share": round(counters.get("skipped", 0.0) / mirrored, 4)
                            if mirrored else None},
            "budget": f"served p99 with shadow on <= {P99_BUDGET:.2f} x off (issue 18)"}


__all__ = ["CONCURRENCY", "P99_BUDGET", "run", "shadow_counters"]
