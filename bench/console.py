"""Benchmark 6, the console: the server's time to render the fleet and devices pages at 1,000 and 10,000 devices.

For each fleet size it starts Mosquitto, the real ``edgefleet server`` process on PostgreSQL
(SQLite when PostgreSQL is not running), pushes the digits MLP bundle (``bench.models``), and
writes straight into the server's database the enrolled devices (three profiles, a site and a
line label each, 90% online, reporting one of two versions) and ``BATCHES_PER_DEVICE`` telemetry
batches per device in the last hour (one every 10 minutes, with the 64 features' drift counts,
as an agent sends them), so the telemetry columns have real work to do. Then it logs in to the
console as a browser does and times each page as the browser loads it: the HTML shell, then the
``/console/api/v1`` calls that ``static/console.js`` makes for that page, at once, through the
console's relay. A page's time is from the shell's request to the last of its answers, on the
same machine (so it includes the relay and HTTP, not the browser's drawing). ``REPEATS`` loads
per page after a first one; median and worst are reported, the first load apart (it parses every
device's report; later loads find the unchanged ones in the views' memo), and each call's median.

Also timed: ``GET /api/v1/devices``, the whole list with every device's telemetry columns (what
the pages fetched before they asked for counts and one page; the CLI's ``devices list``).
"""

from __future__ import annotations

import concurrent.futures
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import fleet
from bench.errors import BenchError
from simulation.fleet import MosquittoProcess

SIZES = (1000, 10000)
QUICK_SIZES = (200,)
BATCHES_PER_DEVICE = 6
REPEATS = 7
QUICK_REPEATS = 3
PROFILES = ("rpi4-64", "jetson-orin-nano", "generic-x86_64")
TARGET_MS = 300.0

# page -> (its shell, the API calls console.js makes for it at once). Kept beside console.js's
# fleetPage/devicesPage: the fleet page polls summary, alerts and rollouts; the devices page one
# page of 50 devices (unfiltered, and with a text and state filter).
PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fleet": ("/console/", ("fleet/summary", "alerts", "rollouts")),
    "devices": ("/console/devices", ("fleet/devices?offset=0&limit=50",)),
    "devices, filtered": ("/console/devices", ("fleet/devices?offset=0&limit=50&q=line-2&state=online",)),
    "devices, last page": ("/console/devices", ("fleet/devices?offset={last}&limit=50",)),
    "GET /api/v1/devices (whole list)": ("", ("devices",)),
}


def _seed(database_url: str, devices: int, model: str, versions: tuple[str, str], reference: dict[str, Any]) -> int:
    """Devices and their telemetry, written as the services write them; returns the records written."""
    import numpy as np
    from sqlalchemy import insert

    from fleet_server.db import Database
    from fleet_server.tables import DeviceRow, TelemetryBatchRow, TelemetryRecordRow

    rng = np.random.default_rng(16)
    shares = [np.asarray(f["counts"], float) / max(1, sum(f["counts"])) for f in reference["features"]]
    classes = len(reference.get("output_counts") or []) or 10
    now = datetime.now(UTC)
    db = Database(database_url)
    written = 0
    try:
        ids = [f"dev-{i:05d}" for i in range(devices)]
        rows = [{"id": d, "profile": PROFILES[i % 3], "labels": {"site": f"site-{i % 20}", "line": f"line-{i % 5}"},
                 "hostname": f"host-{i:05d}", "agent_version": "0.1.0", "mqtt_username": d, "mqtt_password_hash": "x",
                 "api_token_hash": f"bench-{d}", "status": "enrolled", "online": i % 10 != 0, "last_seen": now,
                 "reported": {"models": {model: {"version": versions[i % 2]}}, "update": {"state": "idle"}},
                 "assignment_counter": 0, "enrolled_at": now} for i, d in enumerate(ids)]
        with db.session() as session:
            for start in range(0, len(rows), 2000):
                session.execute(insert(DeviceRow), rows[start:start + 2000])
        for start in range(0, devices, 500):
            heads, records = [], []
            for i in range(start, min(devices, start + 500)):
                for b in range(BATCHES_PER_DEVICE):
                    at = now - timedelta(minutes=10 * b + random.Random(i).random())
                    n = int(rng.poisson(600))
                    heads.append({"device_id": ids[i], "seq": b, "ts": at, "interval_s": 600.0, "dropped": 0,
                                  "cpu_percent": 5.0, "rss_bytes": 50_000_000, "temperature_c": 50.0,
                                  "received_at": at})
                    drift = [rng.multinomial(n, p).tolist() for p in shares]
                    records.append({"device_id": ids[i], "seq": b, "model": model, "version": versions[i % 2], "ts": at,
                                    "count": n, "errors": {}, "p50_ms": 0.4, "p95_ms": 1.2, "p99_ms": 2.5,
                                    "outputs": rng.multinomial(n, [1 / classes] * classes).tolist(), "drift": drift,
                                    "feedback_labels": 0, "feedback_correct": 0})
            with db.session() as session:
                session.execute(insert(TelemetryBatchRow), heads)
                session.execute(insert(TelemetryRecordRow), records)
            written += len(records)
    finally:
        db.dispose()
    return written


def _time_page(client: Any, pool: concurrent.futures.Executor, shell: str, calls: tuple[str, ...],
               repeats: int) -> dict[str, Any]:
    def get(path: str) -> float:
        t0 = time.perf_counter()
        answer = client.get(path)
        if answer.status_code != 200:
            raise BenchError(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
        return time.perf_counter() - t0

    paths = [f"/console/api/v1/{c}" for c in calls]  # through the relay, as the browser calls them
    totals: list[float] = []
    per_call: dict[str, list[float]] = {c: [] for c in calls}
    first = 0.0
    for attempt in range(repeats + 1):
        t0 = time.perf_counter()
        if shell:
            get(shell)
        took = list(pool.map(get, paths))
        total = time.perf_counter() - t0
        if attempt == 0:
            if total > 20:  # the whole list at 10,000 devices: once is enough to see it
                return {"median_ms": round(1000 * total, 1), "max_ms": round(1000 * total, 1), "loads": 1,
                        "calls_median_ms": {c: round(1000 * t, 1) for c, t in zip(calls, took, strict=True)}}
            first = total  # the first load parses every report; later ones find them in the views' memo
            continue
        totals.append(total)
        for c, t in zip(calls, took, strict=True):
            per_call[c].append(t)
    return {"median_ms": round(1000 * statistics.median(totals), 1), "max_ms": round(1000 * max(totals), 1),
            "first_ms": round(1000 * first, 1), "loads": len(totals),
            "calls_median_ms": {c: round(1000 * statistics.median(v), 1) for c, v in per_call.items()}}


def _one_size(devices: int, work: Path, repeats: int) -> dict[str, Any]:
    import subprocess

    import httpx

    from bench import models, processes
    from edgefleet.bundle import read_bundle

    bundle_path = models.prepare("mlp").bundle_path
    bundle = read_bundle(bundle_path)
    model = bundle.manifest.name
    with MosquittoProcess(None, work / "mosquitto", auth=False, persistence=False) as broker, \
            fleet.database(work) as (url, db_kind), fleet.server(work / "server", broker.url, url) as srv:
        done = subprocess.run([*processes.EDGEFLEET, "models", "push", str(bundle_path), "--server",
                               f"http://127.0.0.1:{srv.port}", "--token", srv.token, "--json"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"edgefleet models push failed: {done.stderr.strip()[-400:]}")
        t0 = time.perf_counter()
        records = _seed(url, devices, model, (bundle.manifest.version, "0.9.0"), bundle.reference())
        seed_s = time.perf_counter() - t0
        pages: dict[str, Any] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=600) as client, \
                concurrent.futures.ThreadPoolExecutor(4) as pool:
            login = client.post("/console/login", data={"token": srv.token, "next": "/console/"})
            if login.status_code != 303:
                raise BenchError(f"console login answered {login.status_code}")
            last = (devices - 1) // 50 * 50
            for name, (shell, calls) in PAGES.items():
                pages[name] = _time_page(client, pool, shell, tuple(c.format(last=last) for c in calls), repeats)
    return {"devices": devices, "database": db_kind, "telemetry_records": records, "seed_s": round(seed_s, 1),
            "pages": pages}


def run(*, quick: bool = False, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The console section of a run document."""
    section: dict[str, Any] = {"batches_per_device": BATCHES_PER_DEVICE, "target_ms": TARGET_MS, "sizes": []}
    for devices in sizes or (QUICK_SIZES if quick else SIZES):
        with tempfile.TemporaryDirectory(prefix="edgefleet-bench-console-") as tmp:
            try:
                section["sizes"].append(_one_size(devices, Path(tmp), QUICK_REPEATS if quick else REPEATS))
            except Exception as exc:  # one size failing must not lose the others
                section["sizes"].append({"devices": devices, "error": f"{type(exc).__name__}: {exc}"})
    return section
