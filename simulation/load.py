"""Prediction traffic through each device's local API, counting every failed request.

``PredictionLoad`` runs one thread that walks the devices in turn and sends one-sample
predictions to ``POST /v1/models/{name}/predict`` with a keep-alive connection per device,
taking each device's models in turn. A device is asked only for the models its ``/healthz``
names (a device that has not been given a model has nothing to serve, and that is not a
failure); ``/healthz`` is read again every second, so a model a rollout adds is asked from then
on. Every request that does not come back 200 with one prediction counts as failed, with its
reason kept.

What is sent to a model is its ``RequestSource``: by default one row of numbers
(``{"inputs": [[...]]}``); ``record_requests`` sends named records (``{"instances": [{...}]}``)
and ``image_requests`` PNG pictures (``Content-Type: image/png``), the forms the agent's API
takes. ``shift(devices)`` makes what is sent to some devices drift: brighter, saturated pixels
in rows and pictures, a category the model never saw in records. That is what the demo's drift
step shows. It deliberately does not judge the answers: a prediction's correctness is the health
check's and probation's business.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROWS = "rows"
RECORDS = "records"
PNG = "image/png"


@dataclass(frozen=True)
class Body:
    content_type: str
    content: bytes


@dataclass(frozen=True)
class RequestSource:
    """What the load sends to one model: the form (``rows``, ``records``, ``image/png``) and the
    bodies it cycles through, as they are and as a drifted site sends them. ``weight``: the model's
    turns in each round of a device's models (2 gets twice the requests of a model of weight 1)."""

    form: str
    bodies: Sequence[Body]
    shifted: Sequence[Body]
    weight: int = 1

    def __post_init__(self) -> None:
        if not self.bodies or len(self.bodies) != len(self.shifted):
            raise ValueError(f"a {self.form} request source needs bodies, as many shifted as not")
        if self.weight < 1:
            raise ValueError(f"a request source's weight must be at least 1, got {self.weight}")


def _json(value: Any) -> Body:
    return Body("application/json", json.dumps(value).encode())


def drifted(row: Sequence[float]) -> list[float]:
    """The same digit seen by a brighter, saturated camera: every pixel pushed up, capped at 16."""
    return [min(16.0, v * 1.5 + 6.0) for v in row]


def row_requests(rows: Sequence[Sequence[float]], *, weight: int = 1) -> RequestSource:
    """One row of numbers per request, ``{"inputs": [row]}``."""
    return RequestSource(ROWS, [_json({"inputs": [list(r)]}) for r in rows],
                         [_json({"inputs": [drifted(r)]}) for r in rows], weight)


def record_requests(records: Sequence[Mapping[str, Any]], *, column: str, unseen: str) -> RequestSource:
    """One named record per request, ``{"instances": [record]}``; shifted, ``column`` holds ``unseen``
    (a category the model never saw: answered, and counted as unseen in the drift it reports)."""
    return RequestSource(RECORDS, [_json({"instances": [dict(r)]}) for r in records],
                         [_json({"instances": [{**r, column: unseen}]}) for r in records])


def brighter(pixels: np.ndarray) -> np.ndarray:
    """The same picture from an over-exposed camera: every 8-bit pixel pushed up, capped at 255."""
    return np.minimum(255.0, np.asarray(pixels, dtype=np.float64) * 0.6 + 100.0).astype(np.uint8)


def image_requests(pictures: np.ndarray) -> RequestSource:
    """One PNG picture per request (8-bit ``[n, height, width, channels]`` pixels), the body the camera sends."""
    from edgefleet.images import encode_png

    return RequestSource(PNG, [Body(PNG, encode_png(p)) for p in pictures],
                         [Body(PNG, encode_png(brighter(p))) for p in pictures])


@dataclass
class DeviceLoad:
    """What one device was asked and how it answered."""

    url: str
    models: tuple[str, ...] = ()
    ok: int = 0
    failed: int = 0
    versions: Counter[str] = field(default_factory=Counter)   # model@version answering
    answered: Counter[str] = field(default_factory=Counter)   # model -> requests answered
    reasons: Counter[str] = field(default_factory=Counter)
    shifted: bool = False
    turns: tuple[str, ...] = ()   # models in the order they are asked, each as often as its weight
    turn: int = 0

    @property
    def model(self) -> str | None:
        """The first model the device serves (None before it serves any)."""
        return self.models[0] if self.models else None

    def copy(self) -> DeviceLoad:
        return DeviceLoad(self.url, self.models, self.ok, self.failed, Counter(self.versions), Counter(self.answered),
                          Counter(self.reasons), self.shifted, self.turns, self.turn)


class PredictionLoad:
    """One background thread predicting through every device's local API.

    ``rows`` are sent to every model without a source of its own in ``sources`` (by name), with
    ``row_weight`` turns each round. ``rate_per_s`` is all requests together.
    """

    def __init__(self, urls: Callable[[], Sequence[str]], rows: Sequence[Sequence[float]], *,
                 sources: Mapping[str, RequestSource] | None = None, row_weight: int = 1,
                 rate_per_s: float = 30.0, healthz_every_s: float = 1.0) -> None:
        if not rows:
            raise ValueError("PredictionLoad needs at least one input row")
        self._urls = urls
        self._default = row_requests(rows, weight=row_weight)
        self._sources = dict(sources or {})
        self._pause = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._healthz_every_s = healthz_every_s
        self._devices: dict[str, DeviceLoad] = {}
        self._by_model: dict[str, Counter[str]] = {}   # model -> {"ok": n, "failed": n}
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

    def source(self, model: str) -> RequestSource:
        return self._sources.get(model, self._default)

    def snapshot(self) -> dict[str, DeviceLoad]:
        with self._lock:
            return {url: d.copy() for url, d in self._devices.items()}

    def totals(self) -> dict[str, Any]:
        """Requests and failures; ``models_answering``: (device, model) pairs answered at least once;
        ``by_model``: each model's form and its requests answered and failed."""
        devices = self.snapshot().values()
        reasons: Counter[str] = Counter()
        for d in devices:
            reasons.update(d.reasons)
        with self._lock:
            by_model = {name: {"form": self.source(name).form, "ok": c["ok"], "failed": c["failed"]}
                        for name, c in sorted(self._by_model.items())}
        return {"requests": sum(d.ok + d.failed for d in devices), "failed": sum(d.failed for d in devices),
                "failures_by_reason": dict(reasons), "devices_serving": sum(1 for d in devices if d.models),
                "models_answering": sum(1 for d in devices for m in d.models if d.answered[m]),
                "by_model": by_model}

    def _run(self) -> None:
        import httpx

        clients: dict[str, httpx.Client] = {}
        checked: dict[str, float] = {}
        turns: dict[tuple[str, bool], Iterator[Body]] = {}
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
                    # Read /healthz again now and then: a rollout may have added a model.
                    if time.monotonic() - checked.get(url, 0.0) >= self._healthz_every_s:
                        checked[url] = time.monotonic()
                        self._discover(client, device)
                    if not device.models:
                        continue
                    with self._lock:
                        model = device.turns[device.turn % len(device.turns)]
                        device.turn += 1
                    key = (model, device.shifted)
                    if key not in turns:
                        source = self.source(model)
                        turns[key] = itertools.cycle(source.shifted if device.shifted else source.bodies)
                    self._predict(client, device, model, next(turns[key]))
                    self._stop.wait(self._pause)
        finally:
            for client in clients.values():
                client.close()

    def _discover(self, client: Any, device: DeviceLoad) -> None:
        import httpx

        with contextlib.suppress(httpx.HTTPError, ValueError):
            models = client.get("/healthz").json().get("models") or {}
            # Each model as many times as its weight: the order of a device's turns.
            turns = tuple(m for m in sorted(models) for _ in range(self.source(m).weight))
            with self._lock:
                device.models = tuple(sorted(models))
                device.turns = turns

    def _predict(self, client: Any, device: DeviceLoad, model: str, body: Body) -> None:
        import httpx

        reason: str | None = None
        version = ""
        try:
            answer = client.post(f"/v1/models/{model}/predict", content=body.content,
                                 headers={"Content-Type": body.content_type})
            if answer.status_code != 200:
                reason = f"http_{answer.status_code}"
            else:
                reply = answer.json()
                version = str(reply.get("version", ""))
                if len(reply.get("predictions", [])) != 1:
                    reason = "no_prediction"
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        except ValueError:
            reason = "bad_json"
        with self._lock:
            counts = self._by_model.setdefault(model, Counter())
            if reason is None:
                device.ok += 1
                device.versions[f"{model}@{version}"] += 1
                device.answered[model] += 1
                counts["ok"] += 1
            else:
                device.failed += 1
                device.reasons[f"{model}: {reason}"] += 1
                counts["failed"] += 1
