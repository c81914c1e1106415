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
  device, written atomically, SIGHUP);
- ``mosquitto-http``: the edgefleet plugin (compiled here, ``fleet_server.broker.plugin``) asks the
  real server app's broker-auth endpoint at each CONNECT; the fleet is ``size`` device rows in the
  registry (SQLite), an enrollment is the new row plus ``MosquittoHttpAccounts.enrolled`` (nothing
  at the broker). Its row also gives ``connects_per_s`` (sequential CONNECTs of devices not seen
  before, each one HTTP call and one PBKDF2; ``reconnects_per_s`` the same devices again, from
  the server's verification cache) and ``revoke_ms`` (revocation to the live session's end); the
  dynamic-security row gives ``connects_per_s`` too, the same probe with the broker checking the
  password itself, for comparison.

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
BACKENDS = ("mosquitto-dynsec", "mosquitto-files", "mosquitto-http")
CONNECTS = 200
HTTP_TOKEN = "bench-broker-auth-token-0123456789"
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


def _connects(port: int, fleet: Sequence[BrokerUser]) -> float:
    """CONNECTs accepted per second, one after the other, for the first ``CONNECTS`` devices."""
    sample = fleet[:CONNECTS]
    started = time.perf_counter()
    for user in sample:
        if not _can_connect(port, user):
            raise RuntimeError(f"{user.username} was refused")
    return round(len(sample) / (time.perf_counter() - started), 1)


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
            result["connects_per_s"] = _connects(broker.port, prefilled)  # the plugin checks locally: the baseline
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


def _row(user: BrokerUser) -> Any:
    from datetime import UTC, datetime

    from fleet_server.credentials import hash_secret
    from fleet_server.tables import DeviceRow

    return DeviceRow(id=user.device_id, profile="generic-x86_64", labels={}, hostname="", agent_version="",
                     mqtt_username=user.username, mqtt_password_hash=user.password_hash,
                     api_token_hash=hash_secret(user.username), status="enrolled", online=False,
                     assignment_counter=0, enrolled_at=datetime.now(UTC))


def _session_until_gone(port: int, user: BrokerUser) -> tuple[Any, Any]:
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    connected, gone = threading.Event(), threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=user.device_id or user.username,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user.username, PASSWORD)
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.on_disconnect = lambda c, u, f, rc, p: gone.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    wait_until(connected.is_set, 10, f"{user.username} to connect")
    return client, gone


def _http(directory: Path, size: int, new: Sequence[BrokerUser], hashed: str) -> dict[str, Any]:
    from fleet_server.app import create_app
    from fleet_server.broker.plugin import build
    from fleet_server.config import load_config
    from fleet_server.context import ServerContext
    from simulation.brokers import PluginMosquitto, ServedApp
    from simulation.fleet import free_port

    plugin = build(directory / "plugin")
    broker_port = free_port()
    config = load_config({"data_dir": directory / "data", "broker_url": f"mqtt://127.0.0.1:{broker_port}",
                          "broker_accounts": "mosquitto-http", "mqtt_username": SERVER_USER,
                          "mqtt_password": SERVER_PASSWORD, "broker_auth_token": HTTP_TOKEN}, env={})
    ctx = ServerContext.open(config)
    prefilled = [_device(i, hashed) for i in range(size)]
    with ctx.db.session() as session:
        session.add_all([_row(u) for u in prefilled])
    served = ServedApp(create_app(config, context=ctx, mqtt=False)).start()
    try:
        with PluginMosquitto(directory / "mosquitto", plugin=plugin, server_url=served.url, token=HTTP_TOKEN,
                             port=broker_port) as broker:
            accounts = ctx.devices.broker

            def enroll(user: BrokerUser) -> None:
                with ctx.db.session() as session:  # the registry's row: all a device needs here
                    session.add(_row(user))
                accounts.enrolled(user, PASSWORD, lambda: [])

            result = _measure(enroll, broker.port, new)
            result["connects_per_s"] = _connects(broker.port, prefilled)
            result["reconnects_per_s"] = _connects(broker.port, prefilled)  # now from the server's cache
            client, gone = _session_until_gone(broker.port, new[0])
            started = time.perf_counter()
            ctx.devices.revoke(new[0].device_id or "")
            wait_until(gone.is_set, 10, "the revoked device's session to end", every=0.001)
            result["revoke_ms"] = round(1000 * (time.perf_counter() - started), 1)
            client.loop_stop()
        result["broker_file_bytes"] = 0
    finally:
        served.stop()
        ctx.close()
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
            measure = {"mosquitto-dynsec": _dynsec, "mosquitto-files": _files, "mosquitto-http": _http}[backend]
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
