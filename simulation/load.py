"""Prediction traffic through each device's local API, counting every failed request.

``PredictionLoad`` runs one thread that walks the devices in turn and sends one-row
predictions to ``POST /v1/models/{name}/predict`` with a keep-alive connection per device.
A device is asked only once its ``/healthz`` names a model (a device that has never been
given a model has nothing to serve, and that is not a failure); from then on every request
that does not come back 200 with a prediction counts as failed, with its reason kept.
``shift(devices)`` makes the rows sent to some devices drift (brighter, saturated pixels),
which is what the demo's drift step shows. It deliberately does not judge the answers: a
prediction's correctness is the health check's and probation's business.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceLoad:
    """What one device was asked and how it answered."""

    url: str
    model: str | None = None
    ok: int = 0
    failed: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    shifted: bool = False


def drifted(row: Sequence[float]) -> list[float]:
    """The same digit seen by a brighter, saturated camera: every pixel pushed up, capped at 16."""
    return [min(16.0, v * 1.5 + 6.0) for v in row]


class PredictionLoad:
    """One background thread predicting through every device's local API."""

    def __init__(self, urls: Callable[[], Sequence[str]], rows: Sequence[Sequence[float]], *,
                 rate_per_s: float = 30.0, healthz_every_s: float = 1.0) -> None:
        if not rows:
            raise ValueError("PredictionLoad needs at least one input row")
        self._urls = urls
        self._rows = rows
        self._pause = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._healthz_every_s = healthz_every_s
        self._devices: dict[str, DeviceLoad] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-load", daemon=True)

    def start(self) -> PredictionLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def shift(self, urls: Sequence[str]) -> None:
        with self._lock:
            for url in urls:
                self._devices.setdefault(url, DeviceLoad(url)).shifted = True

    def snapshot(self) -> dict[str, DeviceLoad]:
        with self._lock:
            return {url: DeviceLoad(d.url, d.model, d.ok, d.failed, Counter(d.versions), Counter(d.reasons), d.shifted)
                    for url, d in self._devices.items()}

    def totals(self) -> dict[str, Any]:
        devices = self.snapshot().values()
        reasons: Counter[str] = Counter()
        for d in devices:
            reasons.update(d.reasons)
        return {"requests": sum(d.ok + d.failed for d in devices), "failed": sum(d.failed for d in devices),
                "failures_by_reason": dict(reasons), "devices_serving": sum(1 for d in devices if d.model)}

    def _run(self) -> None:
        import httpx

        clients: dict[str, httpx.Client] = {}
        checked: dict[str, float] = {}
        rows = itertools.cycle(self._rows)
        try:
            while not self._stop.is_set():
                urls = list(self._urls())
                if not urls:
                    self._stop.wait(0.2)
                    continue
                for url in urls:
                    if self._stop.is_set():
                        break
                    client = clients.get(url)
                    if client is None:
                        client = clients[url] = httpx.Client(base_url=url, timeout=10)
                    with self._lock:
                        device = self._devices.setdefault(url, DeviceLoad(url))
                    if device.model is None:
                        if time.monotonic() - checked.get(url, 0.0) >= self._healthz_every_s:
                            checked[url] = time.monotonic()
                            self._discover(client, device)
                        continue
                    self._predict(client, device, next(rows))
                    self._stop.wait(self._pause)
        finally:
            for client in clients.values():
                client.close()

    def _discover(self, client: Any, device: DeviceLoad) -> None:
        import httpx

        with contextlib.suppress(httpx.HTTPError, ValueError):
            models = client.get("/healthz").json().get("models") or {}
            if models:
                with self._lock:
                    device.model = sorted(models)[0]

    def _predict(self, client: Any, device: DeviceLoad, row: Sequence[float]) -> None:
        import httpx

        sent = drifted(row) if device.shifted else list(row)
        reason: str | None = None
        version = ""
        try:
            answer = client.post(f"/v1/models/{device.model}/predict", json={"inputs": [sent]})
            if answer.status_code != 200:
                reason = f"http_{answer.status_code}"
            else:
                body = answer.json()
                version = str(body.get("version", ""))
                if len(body.get("predictions", [])) != 1:
                    reason = "no_prediction"
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        except ValueError:
            reason = "bad_json"
        with self._lock:
            if reason is None:
                device.ok += 1
                device.versions[version] += 1
            else:
                device.failed += 1
                device.reasons[reason] += 1
