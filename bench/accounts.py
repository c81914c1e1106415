"""Benchmark: enrollments per second at 100 and at 10,000 devices, per broker-accounts backend (issue 13).

The issue's goal: enrolling a device costs constant broker work whatever the fleet size.
Measured here, never asserted in a test.

For each backend and fleet size, a real Mosquitto 2.0 starts already holding that many device
accounts (written before it starts: the dynamic-security JSON file by
``fleet_server.broker.dynsec.write_config``, or the password and ACL files by
``fleet_server.broker.auth``), then ``enrollments`` more devices are enrolled one after the other
through the server's own ``BrokerAccounts`` implementation:

- ``mosquitto-dynsec``: ``DynsecAccounts.enrolled`` (createRole + createClient over
  ``$CONTROL``; answered once the plugin has applied and saved them);
- ``mosquitto-files``: ``MosquittoAccounts.enrolled`` (both files rendered again with every
  device, written atomically, SIGHUP).

One enrollment counts as done when the new device's CONNECT is accepted (polled: Mosquitto
re-reads the files after SIGHUP in its own time), so both rows include what the broker does,
not only the server's call. The registry's own work (the database row, hashing the password)
is the same for both and left out. The per-second figure is enrollments over their total
time; median and p90 are of single enrollments.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgefleet.brokers import parse_broker_urls
from fleet_server.broker.accounts import BrokerUser, MosquittoAccounts
from fleet_server.broker.auth import mosquitto_password_hash, write_broker_files
from fleet_server.broker.dynsec import DynsecAccounts
from simulation.brokers import SERVER_PASSWORD, SERVER_USER, DynsecMosquitto
from simulation.fleet import MosquittoProcess, wait_until

SIZES = (100, 10_000)
ENROLLMENTS = 30
QUICK_ENROLLMENTS = 10
BACKENDS = ("mosquitto-dynsec", "mosquitto-files")
PASSWORD = "bench-device-password"
# The same hash for every prefilled device: hashing 10,000 passwords would only slow the setup.
CONSTANT_WORK_RATIO = 2.0  # the target: an enrollment at 10,000 devices costs at most 2x one at 100


def _device(i: int, password_hash: str) -> BrokerUser:
    name = f"dev-bench{i:06d}"
    return BrokerUser(name, password_hash, name)


def _can_connect(port: int, user: BrokerUser) -> bool:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    outcome: list[Any] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=user.device_id or user.username,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user.username, PASSWORD)
    client.on_connect = lambda c, u, f, rc, p: outcome.append(rc)
    try:
        client.connect("127.0.0.1", port, keepalive=10)
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            client.loop(timeout=0.01)
    except OSError:
        return False
    finally:
        client.disconnect()
    return bool(outcome) and not outcome[0].is_failure


def _measure(enroll: Callable[[BrokerUser], None], port: int, new: Sequence[BrokerUser]) -> dict[str, Any]:
    times = []
    started = time.perf_counter()
    for user in new:
        t0 = time.perf_counter()
        enroll(user)
        wait_until(functools.partial(_can_connect, port, user), 30, f"{user.username} to be able to connect",
                   every=0.005)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    ordered = sorted(times)
    return {"enrollments": len(times), "per_s": round(len(times) / total, 2),
            "median_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1)}


def _dynsec(directory: Path, size: int, new: Sequence[BrokerUser], hashed: str) -> dict[str, Any]:
    prefilled = [_device(i, hashed) for i in range(size)]
    with DynsecMosquitto(directory, devices=prefilled) as broker:
        accounts = DynsecAccounts(parse_broker_urls(broker.url), SERVER_USER, SERVER_PASSWORD, timeout=60)
        try:
            everyone = list(prefilled)

            def enroll(user: BrokerUser) -> None:
                everyone.append(user)
                accounts.enrolled(user, PASSWORD, lambda: everyone)

            result = _measure(enroll, broker.port, new)
        finally:
            accounts.close()
        result["broker_file_bytes"] = broker.dynsec_file.stat().st_size
    return result


def _files(directory: Path, size: int, new: Sequence[BrokerUser], hashed: str) -> dict[str, Any]:
    server = BrokerUser(SERVER_USER, hashed, None)
    everyone = [server, *(_device(i, hashed) for i in range(size))]
    broker = MosquittoProcess(None, directory, auth=True, persistence=False)
    write_broker_files(broker.directory, passwords={u.username: u.password_hash for u in everyone},
                       devices=[(u.username, u.device_id) for u in everyone if u.device_id],
                       server_users=[SERVER_USER])
    with broker:
        accounts = MosquittoAccounts(broker.directory, broker.pid_file)

        def enroll(user: BrokerUser) -> None:
            everyone.append(user)
            accounts.enrolled(user, PASSWORD, lambda: everyone)

        result = _measure(enroll, broker.port, new)
        result["broker_file_bytes"] = (broker.password_file.stat().st_size + broker.acl_file.stat().st_size)
    return result


def _cases(quick: bool) -> Iterator[tuple[str, int]]:
    for backend in BACKENDS:
        for size in SIZES:
            yield backend, size


def run(*, quick: bool = False) -> dict[str, Any]:
    count = QUICK_ENROLLMENTS if quick else ENROLLMENTS
    hashed = mosquitto_password_hash(PASSWORD)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-accounts-") as tmp:
        for backend, size in _cases(quick):
            new = [_device(1_000_000 + i, hashed) for i in range(count)]
            directory = Path(tmp) / f"{backend}-{size}"
            measure = _dynsec if backend == "mosquitto-dynsec" else _files
            try:
                row = measure(directory, size, new, hashed)
            except Exception as exc:  # one backend failing must not hide the other's figures
                row = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append({"backend": backend, "devices": size, **row})
    return {"enrollments": count, "sizes": list(SIZES), "rows": rows,
            "summary": summary(rows)}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per backend: the median enrollment at the largest size over the one at the smallest."""
    out: dict[str, Any] = {}
    for backend in BACKENDS:
        by_size = {r["devices"]: r for r in rows if r["backend"] == backend and "median_ms" in r}
        small, large = by_size.get(min(SIZES)), by_size.get(max(SIZES))
        if small and large and small["median_ms"] > 0:
            out[backend] = {"growth": round(large["median_ms"] / small["median_ms"], 2),
                            "per_s_small": small["per_s"], "per_s_large": large["per_s"]}
    return out
