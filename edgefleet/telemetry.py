"""The telemetry batch: what a device reports every interval, and its compact wire form.

Shared by the agent (which builds and encodes batches) and the fleet server (which decodes,
stores and merges them). One batch covers one reporting interval of one device:

    TelemetryBatch   device_id, seq (device-scoped, strictly increasing), ts (end of the
                     interval, Unix seconds), interval_s, dropped (batches the device's outbox
                     dropped since the last one it delivered), resource, models
    ├── Resource     process cpu %, rss bytes, board temperature C (each may be unknown)
    ├── ModelRecord  per model version: count, errors by kind, latency p50/p95/p99 (ms),
    │                latency counts in the fixed ``LATENCY_BUCKETS_S`` buckets (for Prometheus
    │                histograms), output counts (reference class/bin order), drift counts per feature
    │                (bin counts over the bundle's reference edges, reference feature order),
    │                feedback (labels seen, correct)
    └── ShadowRecord per (model, candidate version) in a shadow stage (issue 18): requests compared
                     (both versions answered), agreed, skipped (shed under load), candidate errors,
                     the sum of relative errors (regressors), latency buckets of both versions over
                     the compared requests. ``shadow_figures`` adds records up; ``bucket_quantile``
                     reads a percentile off bucket counts (a bucket's upper bound, or interpolated).

Counts are for the interval only (deltas), so the server merges devices and time windows by
adding. Wire form (``encode``/``decode``): one version byte (``WIRE_VERSION``) followed by
zlib-compressed JSON with one- or two-letter keys; empty parts are left out. ``decode``
refuses anything that does not follow the schema with a ``TelemetryError``, and refuses a body
that inflates past ``MAX_BODY_BYTES`` (a compressed bomb from a hostile device).

The drift arithmetic both sides agree on also lives here, in plain Python: the reference
profile of a bundle (``ReferenceProfile``, parsed from ``reference.json``: numeric features as
quantile bins, string columns as categories plus an "unseen" count), the population stability
index (``psi``) and its bands. Either kind of feature travels as a list of counts, so the wire
form and the server's merging do not depend on it. Pure stdlib: no numpy, no I/O, no clock.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.topics import check_device_id
from edgefleet.version import ModelVersion, check_model_name

WIRE_VERSION = 1
MAX_BODY_BYTES = 1 << 20
DEFAULT_INTERVAL_S = 60.0
# Drift feature counts are most of a batch's bytes (64 features x 10 bins is 640 numbers). They
# go on every batch by default, so the server's drift is at most one interval behind what the
# device sees (with every 10th, an operator saw "no data" beside a device at PSI 9); a metered
# link may send them on every Nth batch, accumulated: counted in full, sent less often.
DEFAULT_DRIFT_EVERY = 1

# The server's confirmation of stored telemetry (docs/contracts.md, ``commands``): one command
# lists seqs of one device that are stored (first copies or duplicates) or refused for good by
# the database; the agent then deletes those outbox rows. Chunked so a device catching up after
# a long outage gets several small commands, not one big one.
TELEMETRY_ACK = "telemetry_ack"
MAX_ACK_SEQS = 500


def ack_commands(seqs: Sequence[int]) -> list[bytes]:
    """The ``telemetry_ack`` command payloads confirming ``seqs`` (sorted, at most ``MAX_ACK_SEQS`` each)."""
    ordered = sorted(set(seqs))
    return [json.dumps({"command": TELEMETRY_ACK, "args": {"seqs": ordered[i:i + MAX_ACK_SEQS]}},
                       separators=(",", ":")).encode()
            for i in range(0, len(ordered), MAX_ACK_SEQS)]

# Upper bounds (seconds) of the latency buckets a record counts its requests in (``latency_buckets``),
# plus one overflow bucket above the last: the buckets of the Prometheus histograms on the server's
# and the agent's /metrics. Fixed in the contract, so every device's counts add up bucket by bucket;
# from 0.1 ms (an ONNX Runtime call on a desktop CPU) to 10 s (a large model on a busy Pi).
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
# PSI bands (docs/telemetry.md): below STABLE_BELOW stable, up to DRIFT_ABOVE moderate, above drift.
STABLE_BELOW = 0.1
DRIFT_ABOVE = 0.25
PSI_EPSILON = 1e-4
BANDS = ("stable", "moderate", "drift")


class TelemetryError(EdgefleetError):
    """A telemetry batch or reference profile breaks the schema, or its bytes are not a batch."""


def _fail(message: str) -> TelemetryError:
    return TelemetryError(message, fix="send batches built and encoded by edgefleet.telemetry of the same version")


# The server decodes every batch of every device, and a batch with drift holds hundreds of
# counts: a plain int (what JSON gives) takes the exact-type fast path, because an ABC
# isinstance check per value made decoding the ingest's largest cost after paho itself.
def _count(value: Any, what: str) -> int:
    if type(value) is int and value >= 0:
        return value
    # numbers.Integral so numpy counters from the agent pass, turned into plain ints.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise _fail(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _number(value: Any, what: str, *, allow_none: bool = False) -> float | None:
    if type(value) is float and math.isfinite(value):
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(f"{what} must be a finite number, got {value!r}")
    return float(value)


_INT_ONLY = {int}


def _counts(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise _fail(f"{what} must be a list of counts, got {type(values).__name__}")
    # map/min run in C: a 64-feature batch holds hundreds of counts, and the server's views read
    # thousands of rows per request (issue 16: the console's device page).
    if (values and set(map(type, values)) == _INT_ONLY and min(values) >= 0) or not values:
        return tuple(values)
    return tuple(_count(v, what) for v in values)


@dataclass(frozen=True)
class Resource:
    """Resource use of the agent process at the end of the interval; None where unknown."""

    cpu_percent: float | None = None
    rss_bytes: int | None = None
    temperature_c: float | None = None

    def __post_init__(self) -> None:
        cpu = _number(self.cpu_percent, "resource cpu_percent", allow_none=True)
        if cpu is not None and cpu < 0:
            raise _fail(f"resource cpu_percent must not be negative, got {cpu}")
        if self.rss_bytes is not None:
            object.__setattr__(self, "rss_bytes", _count(self.rss_bytes, "resource rss_bytes"))
        temp = _number(self.temperature_c, "resource temperature_c", allow_none=True)
        # Rounded at construction so a batch equals itself after a wire round trip.
        object.__setattr__(self, "cpu_percent", None if cpu is None else round(cpu, 1))
        object.__setattr__(self, "temperature_c", None if temp is None else round(temp, 1))


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in milliseconds over the interval's requests."""

    p50: float
    p95: float
    p99: float

    def __post_init__(self) -> None:
        values = [_number(v, f"latency {n}") for n, v in (("p50", self.p50), ("p95", self.p95), ("p99", self.p99))]
        rounded = [round(float(v or 0.0), 3) for v in values]
        if rounded[0] < 0 or not rounded[0] <= rounded[1] <= rounded[2]:
            raise _fail(f"latency percentiles must be non-negative and p50 <= p95 <= p99, got {rounded}")
        for name, value in zip(("p50", "p95", "p99"), rounded, strict=True):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Feedback:
    """Ground-truth labels received in the interval and how many matched the prediction."""

    labels: int = 0
    correct: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _count(self.labels, "feedback labels"))
        object.__setattr__(self, "correct", _count(self.correct, "feedback correct"))
        if self.correct > self.labels:
            raise _fail(f"feedback correct ({self.correct}) exceeds labels seen ({self.labels})")


@dataclass(frozen=True)
class ModelRecord:
    """One model version's counters for one interval."""

    model: str
    version: str
    count: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    latency: Latency | None = None
    outputs: tuple[int, ...] = ()
    drift: tuple[tuple[int, ...], ...] = ()
    feedback: Feedback = field(default_factory=Feedback)
    latency_buckets: tuple[int, ...] = ()
    """Requests per ``LATENCY_BUCKETS_S`` bucket (not cumulative; the last, if present, counts
    those above the last bound), trailing empty buckets left out; empty, or adding up to ``count``."""

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
            ModelVersion.parse(self.version)
        except EdgefleetError as exc:
            raise _fail(f"model record: {exc.message}") from exc
        object.__setattr__(self, "count", _count(self.count, "model record count"))
        errors: dict[str, int] = {}
        for kind, n in dict(self.errors).items():
            if not isinstance(kind, str) or not kind or len(kind) > 32:
                raise _fail(f"error kind {kind!r} must be a string of 1-32 characters")
            errors[kind] = _count(n, f"errors[{kind}]")
        object.__setattr__(self, "errors", dict(sorted(errors.items())))
        object.__setattr__(self, "outputs", _counts(self.outputs, "output counts"))
        object.__setattr__(self, "drift", tuple(_counts(f, "drift counts") for f in self.drift))
        buckets = _counts(self.latency_buckets, "latency bucket counts")
        if len(buckets) > len(LATENCY_BUCKETS_S) + 1:
            raise _fail(f"latency bucket counts are {len(buckets)}, over the {len(LATENCY_BUCKETS_S) + 1} buckets")
        if buckets and sum(buckets) != self.count:
            raise _fail(f"latency bucket counts add up to {sum(buckets)}, not to the record's count {self.count}")
        object.__setattr__(self, "latency_buckets", trim_buckets(buckets))

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class ShadowRecord:
    """One candidate's shadow figures for one interval (issue 18; ``sh`` on the wire).

    ``version`` is the candidate's version, ``serving`` the version that answered. Of the
    requests mirrored to the candidate, ``compared`` got an answer from both, ``agreed`` of those
    agreed (classifiers: the same top-1 class; regressors: relative error within the bundle's
    health tolerance), ``errors`` failed on the candidate; ``skipped`` were sampled but shed
    because the device was busy (never compared). ``rel_error_sum`` is the sum of the compared
    requests' relative errors |b - a| / max(|a|, eps) for a regressor (None for a classifier),
    so the mean adds up across devices. ``serving_buckets``/``candidate_buckets`` count the
    compared requests' latencies in ``LATENCY_BUCKETS_S`` (like ``ModelRecord.latency_buckets``:
    trailing zeros trimmed; empty, or adding up to ``compared``).
    """

    model: str
    version: str
    serving: str
    compared: int = 0
    agreed: int = 0
    skipped: int = 0
    errors: int = 0
    rel_error_sum: float | None = None
    serving_buckets: tuple[int, ...] = ()
    candidate_buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
            candidate, serving = ModelVersion.parse(self.version), ModelVersion.parse(self.serving)
        except EdgefleetError as exc:
            raise _fail(f"shadow record: {exc.message}") from exc
        if candidate == serving:
            raise _fail(f"shadow record: the candidate {self.version} is the serving version")
        for name in ("compared", "agreed", "skipped", "errors"):
            object.__setattr__(self, name, _count(getattr(self, name), f"shadow record {name}"))
        if self.agreed > self.compared:
            raise _fail(f"shadow record: agreed ({self.agreed}) exceeds compared ({self.compared})")
        rel = _number(self.rel_error_sum, "shadow record rel_error_sum", allow_none=True)
        if rel is not None and rel < 0:
            raise _fail(f"shadow record rel_error_sum must not be negative, got {rel}")
        object.__setattr__(self, "rel_error_sum", None if rel is None else round(rel, 6))
        for name in ("serving_buckets", "candidate_buckets"):
            buckets = _counts(getattr(self, name), f"shadow record {name}")
            if len(buckets) > len(LATENCY_BUCKETS_S) + 1:
                raise _fail(f"shadow record {name} are {len(buckets)}, over the {len(LATENCY_BUCKETS_S) + 1} buckets")
            if buckets and sum(buckets) != self.compared:
                raise _fail(f"shadow record {name} add up to {sum(buckets)}, not to compared {self.compared}")
            object.__setattr__(self, name, trim_buckets(buckets))

    @property
    def agreement(self) -> float | None:
        """Agreed over compared; None before any comparison."""
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_rel_error(self) -> float | None:
        """Mean relative error over the compared requests (regressors); None for a classifier."""
        if self.rel_error_sum is None or not self.compared:
            return None
        return self.rel_error_sum / self.compared


def add_buckets(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Two bucket counts added bucket by bucket; the shorter is read as zeros past its end."""
    size = max(len(a), len(b))
    return tuple((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(size))


def shadow_figures(records: Sequence[ShadowRecord]) -> ShadowRecord:
    """Records of one (model, candidate, serving) added up: devices and intervals merge by adding.

    Raises TelemetryError for an empty list or records of different models or versions. A
    record without buckets (``compared`` 0) adds nothing to the others' buckets.
    """
    if not records:
        raise _fail("shadow_figures needs at least one record")
    first = records[0]
    keys = {(r.model, r.version, r.serving) for r in records}
    if len(keys) != 1:
        raise TelemetryError(f"shadow records of different models or versions cannot be added: {sorted(keys)}",
                             fix="group the records by (model, version, serving) first")
    rel: float | None = None
    if any(r.rel_error_sum is not None for r in records):
        rel = sum(r.rel_error_sum or 0.0 for r in records)
    serving: tuple[int, ...] = ()
    candidate: tuple[int, ...] = ()
    for r in records:
        serving, candidate = add_buckets(serving, r.serving_buckets), add_buckets(candidate, r.candidate_buckets)
    compared = sum(r.compared for r in records)
    # A record without buckets but with comparisons would break "buckets add up to compared".
    if sum(serving) != compared:
        serving = ()
    if sum(candidate) != compared:
        candidate = ()
    return ShadowRecord(first.model, first.version, first.serving, compared, sum(r.agreed for r in records),
                        sum(r.skipped for r in records), sum(r.errors for r in records), rel, serving, candidate)


def bucket_quantile(counts: Sequence[int], q: float, *, interpolate: bool = False,
                    bounds: Sequence[float] = LATENCY_BUCKETS_S) -> float | None:
    """Quantile ``q`` (0-1), in seconds, of counts in the ``bounds`` buckets (one overflow bucket after them).

    None without counts. Two readings of the bucket that holds the quantile:

    - ``interpolate=False``: its upper bound, as Prometheus's ``histogram_quantile`` would at
      worst; ``math.inf`` in the overflow bucket. Coarse (the buckets are about 2.5x apart), but
      the same on every side.
    - ``interpolate=True``: linear inside it, from its lower bound (0 for the first); the last
      bound in the overflow bucket (what is known: "at least"). A rollout's shadow stage reads
      p99s so (``fleet_server.rollouts.stage``): of two upper bounds the ratio is 1 or >= 2, so
      a ``--max-latency-ratio 1.5`` could never be told from 2; interpolated, it can.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            if index >= len(bounds):
                return float(bounds[-1]) if interpolate else math.inf
            if not interpolate:
                return bounds[index]
            low = 0.0 if index == 0 else bounds[index - 1]
            return low + (bounds[index] - low) * max(0.0, rank - seen) / n
        seen += n
    # Only for q > 1: the rank lies past every count.
    if interpolate:
        return float(bounds[-1])
    return math.inf if len(counts) > len(bounds) else bounds[len(counts) - 1]


@dataclass(frozen=True)
class TelemetryBatch:
    """One device's report for one interval."""

    device_id: str
    seq: int
    ts: float
    interval_s: float = DEFAULT_INTERVAL_S
    dropped: int = 0
    resource: Resource = field(default_factory=Resource)
    models: tuple[ModelRecord, ...] = ()
    shadow: tuple[ShadowRecord, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_device_id(self.device_id)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        object.__setattr__(self, "seq", _count(self.seq, "seq"))
        object.__setattr__(self, "dropped", _count(self.dropped, "dropped"))
        ts = _number(self.ts, "ts")
        interval = _number(self.interval_s, "interval_s")
        if interval is None or interval <= 0:
            raise _fail(f"interval_s must be positive, got {interval}")
        object.__setattr__(self, "ts", round(float(ts or 0.0), 3))
        object.__setattr__(self, "interval_s", round(interval, 3))
        object.__setattr__(self, "models", tuple(self.models))
        keys = [(m.model, m.version) for m in self.models]
        if len(set(keys)) != len(keys):
            raise _fail("a batch lists the same model version twice")
        object.__setattr__(self, "shadow", tuple(self.shadow))
        shadow_keys = [(r.model, r.version) for r in self.shadow]
        if len(set(shadow_keys)) != len(shadow_keys):
            raise _fail("a batch lists the same candidate twice in its shadow records")


def latency_bucket(seconds: float) -> int:
    """The index of the ``LATENCY_BUCKETS_S`` bucket a latency falls in (upper bounds inclusive, as
    Prometheus's ``le``); ``len(LATENCY_BUCKETS_S)`` above the last bound or for NaN."""
    return bisect.bisect_left(LATENCY_BUCKETS_S, seconds) if seconds == seconds else len(LATENCY_BUCKETS_S)


def trim_buckets(counts: Sequence[int]) -> tuple[int, ...]:
    """Bucket counts without their trailing zeros (what travels)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return tuple(counts[:end])


# ---- wire form ---------------------------------------------------------------------------

def _record_to_wire(record: ModelRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"n": record.model, "v": record.version, "c": record.count}
    if record.errors:
        out["e"] = dict(record.errors)
    if record.latency is not None:
        out["l"] = [_short(record.latency.p50), _short(record.latency.p95), _short(record.latency.p99)]
    if record.outputs:
        out["o"] = list(record.outputs)
    if record.drift:
        out["f"] = [list(f) for f in record.drift]
    if record.feedback.labels:
        out["b"] = [record.feedback.labels, record.feedback.correct]
    if record.latency_buckets:
        out["h"] = list(record.latency_buckets)
    return out


def _shadow_to_wire(record: ShadowRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"n": record.model, "v": record.version, "a": record.serving, "c": record.compared,
                           "g": record.agreed}
    if record.skipped:
        out["k"] = record.skipped
    if record.errors:
        out["e"] = record.errors
    if record.rel_error_sum is not None:
        out["r"] = _short(record.rel_error_sum)
    if record.serving_buckets:
        out["hs"] = list(record.serving_buckets)
    if record.candidate_buckets:
        out["hc"] = list(record.candidate_buckets)
    return out


def _short(value: float | None) -> float | int | None:
    # 3.0 -> 3 saves two bytes a number; JSON readers take either.
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def to_wire_dict(batch: TelemetryBatch) -> dict[str, Any]:
    """The batch as the short-key JSON object that ``encode`` compresses."""
    res = batch.resource
    out: dict[str, Any] = {"d": batch.device_id, "s": batch.seq, "t": _short(batch.ts), "i": _short(batch.interval_s)}
    if batch.dropped:
        out["x"] = batch.dropped
    if (res.cpu_percent, res.rss_bytes, res.temperature_c) != (None, None, None):
        out["r"] = [_short(res.cpu_percent), res.rss_bytes, _short(res.temperature_c)]
    if batch.models:
        out["m"] = [_record_to_wire(m) for m in batch.models]
    if batch.shadow:
        out["sh"] = [_shadow_to_wire(r) for r in batch.shadow]
    return out


def _only(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(f"{where} has unknown key(s) {', '.join(unknown)}")


def _need(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise _fail(f"{where} lacks key {key!r}")
    return data[key]


def _record_from_wire(data: Any) -> ModelRecord:
    if not isinstance(data, dict):
        raise _fail("a model record is not a JSON object")
    _only(data, {"n", "v", "c", "e", "l", "o", "f", "b", "h"}, "model record")
    errors = data.get("e", {})
    if not isinstance(errors, dict):
        raise _fail("model record errors ('e') must be an object of kind: count")
    latency = data.get("l")
    if latency is not None and (not isinstance(latency, list) or len(latency) != 3):
        raise _fail("model record latency ('l') must be [p50, p95, p99]")
    drift = data.get("f", [])
    if not isinstance(drift, list):
        raise _fail("model record drift ('f') must be a list of per-feature count lists")
    feedback = data.get("b", [0, 0])
    if not isinstance(feedback, list) or len(feedback) != 2:
        raise _fail("model record feedback ('b') must be [labels, correct]")
    name, version = _need(data, "n", "model record"), _need(data, "v", "model record")
    if not isinstance(name, str) or not isinstance(version, str):
        raise _fail("model record name ('n') and version ('v') must be strings")
    return ModelRecord(
        model=name, version=version, count=_need(data, "c", "model record"), errors=errors,
        latency=None if latency is None else Latency(*latency),
        outputs=_counts(data.get("o", []), "output counts"), drift=tuple(drift),
        feedback=Feedback(*feedback), latency_buckets=_counts(data.get("h", []), "latency bucket counts"),
    )


def _shadow_from_wire(data: Any) -> ShadowRecord:
    if not isinstance(data, dict):
        raise _fail("a shadow record is not a JSON object")
    _only(data, {"n", "v", "a", "c", "g", "k", "e", "r", "hs", "hc"}, "shadow record")
    name, version, serving = (_need(data, k, "shadow record") for k in ("n", "v", "a"))
    if not all(isinstance(x, str) for x in (name, version, serving)):
        raise _fail("shadow record name ('n'), version ('v') and serving version ('a') must be strings")
    return ShadowRecord(
        model=name, version=version, serving=serving, compared=_need(data, "c", "shadow record"),
        agreed=_need(data, "g", "shadow record"), skipped=data.get("k", 0), errors=data.get("e", 0),
        rel_error_sum=data.get("r"), serving_buckets=_counts(data.get("hs", []), "shadow serving buckets ('hs')"),
        candidate_buckets=_counts(data.get("hc", []), "shadow candidate buckets ('hc')"),
    )


def from_wire_dict(data: Any) -> TelemetryBatch:
    """Validate a decoded short-key object and build the batch it describes."""
    if not isinstance(data, dict):
        raise _fail("a telemetry batch must be a JSON object")
    _only(data, {"d", "s", "t", "i", "x", "r", "m", "sh"}, "batch")
    resource = data.get("r", [None, None, None])
    if not isinstance(resource, list) or len(resource) != 3:
        raise _fail("batch resource ('r') must be [cpu_percent, rss_bytes, temperature_c]")
    models = data.get("m", [])
    if not isinstance(models, list):
        raise _fail("batch models ('m') must be a list")
    shadow = data.get("sh", [])
    if not isinstance(shadow, list):
        raise _fail("batch shadow records ('sh') must be a list")
    device_id = _need(data, "d", "batch")
    if not isinstance(device_id, str):
        raise _fail("batch device id ('d') must be a string")
    return TelemetryBatch(
        device_id=device_id, seq=_need(data, "s", "batch"), ts=_need(data, "t", "batch"),
        interval_s=_need(data, "i", "batch"), dropped=data.get("x", 0), resource=Resource(*resource),
        models=tuple(_record_from_wire(m) for m in models), shadow=tuple(_shadow_from_wire(r) for r in shadow),
    )


def encode(batch: TelemetryBatch) -> bytes:
    """The bytes published on ``devices/{id}/telemetry``: version byte + zlib(compact JSON)."""
    body = json.dumps(to_wire_dict(batch), separators=(",", ":"), allow_nan=False).encode()
    return bytes([WIRE_VERSION]) + zlib.compress(body, 9)


def decode(data: bytes, *, device_id: str | None = None) -> TelemetryBatch:
    """Parse and validate bytes from ``encode``; raise TelemetryError on anything else.

    ``device_id``, when given, is the id from the topic the batch arrived on: the broker's ACL
    vouches for the topic, not for the body, so a body naming another device is refused.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 2:
        raise _fail("telemetry payload is empty or too short to be a batch")
    raw = bytes(data)
    if raw[0] != WIRE_VERSION:
        raise TelemetryError(f"telemetry wire version {raw[0]} is not supported (this server reads {WIRE_VERSION})",
                             fix="upgrade the fleet server, or the agent that sent it")
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(raw[1:], MAX_BODY_BYTES)
    except zlib.error as exc:
        raise _fail(f"telemetry payload is not valid zlib data ({exc})") from exc
    if inflater.unconsumed_tail:
        raise _fail(f"telemetry payload inflates past {MAX_BODY_BYTES} bytes")
    if not inflater.eof:
        raise _fail("telemetry payload is truncated")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _fail(f"telemetry payload is not JSON ({exc})") from exc
    batch = from_wire_dict(document)
    if device_id is not None and batch.device_id != device_id:
        raise TelemetryError(f"a batch naming device {batch.device_id!r} arrived on the topic of {device_id!r}",
                             fix="a device may report only for itself; check the agent's identity.json")
    return batch


# ---- reference profile and PSI -----------------------------------------------------------

FEATURE_KINDS = ("bins", "categories")
UNSEEN = "(unseen)"
"""The name shown for a categorical feature's last bucket: values outside its categories."""


@dataclass(frozen=True)
class FeatureReference:
    """One input feature's reference counts, of one of two kinds (``FEATURE_KINDS``):

    * ``bins`` (numeric): k bins need k+1 edges; the outer bins are open-ended.
    * ``categories`` (a string column): one count per category, in the listed order, then one
      for every value outside them ("unseen"), so k categories have k+1 counts and no edges.

    Either way a feature is a list of counts, so devices send, and the server adds and scores,
    count lists without knowing the kind. A ``bins`` feature may summarise a tensor input
    (``edgefleet.summaries``): ``input`` names the input and ``statistic`` what of each sample
    is binned (``window.mean``: the mean of each window).
    """

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    kind: str = "bins"
    categories: tuple[str, ...] = ()
    input: str | None = None
    statistic: str | None = None

    def __post_init__(self) -> None:
        def bad(what: str) -> TelemetryError:
            return TelemetryError(f"reference feature {self.name!r} {what}", fix="rebuild the bundle with `edgefleet convert`")
        if self.kind not in FEATURE_KINDS:
            raise bad(f"has kind {self.kind!r}, not one of {', '.join(FEATURE_KINDS)}")
        if any(c < 0 for c in self.counts):
            raise bad("has a negative count")
        if self.kind == "categories":
            if self.edges:
                raise bad("lists categories and edges: a categorical feature has no edges")
            if not self.categories or len(set(self.categories)) != len(self.categories):
                raise bad("needs at least one category, each listed once")
            if any(not isinstance(c, str) for c in self.categories):
                raise bad("has a category that is not a string")
            if len(self.counts) != len(self.categories) + 1:
                raise bad(f"has {len(self.categories)} categories and {len(self.counts)} counts: k categories "
                          "need k+1 counts, the last for unseen values")
            return
        if self.categories:
            raise bad("lists categories but is of kind bins")
        if (self.input is None) != (self.statistic is None):
            raise bad("names an input without a statistic, or a statistic without an input")
        if len(self.edges) < 2 or len(self.counts) != len(self.edges) - 1:
            raise bad(f"has {len(self.edges)} edges and {len(self.counts)} counts: k bins need k+1 edges")
        if any(not math.isfinite(e) for e in self.edges) or any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise bad("has edges that are not finite and sorted")

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def bin_names(self) -> tuple[str, ...]:
        """A label per bin: the categories then ``UNSEEN``, or each bin's ``[lo, hi)`` edges."""
        if self.kind == "categories":
            return (*self.categories, UNSEEN)
        return tuple(f"[{lo:g}, {hi:g})" for lo, hi in zip(self.edges, self.edges[1:], strict=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureReference:
        """One entry of ``reference.json``'s ``features``; ``kind`` defaults to ``bins`` (older bundles)."""
        kind = data.get("kind", "bins")
        if kind == "categories":
            categories = data["categories"]
            if not isinstance(categories, list):
                raise TypeError(f"categories of {data['name']!r} are not a list")
            return cls(str(data["name"]), (), tuple(int(c) for c in data["counts"]), "categories", tuple(categories))
        source, statistic = data.get("input"), data.get("statistic")
        return cls(str(data["name"]), tuple(float(e) for e in data["edges"]), tuple(int(c) for c in data["counts"]),
                   str(kind), input=None if source is None else str(source),
                   statistic=None if statistic is None else str(statistic))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categories":
            return {"name": self.name, "kind": "categories", "categories": list(self.categories),
                    "counts": list(self.counts)}
        out: dict[str, Any] = {"name": self.name, "edges": list(self.edges), "counts": list(self.counts)}
        if self.input is not None:
            out["input"], out["statistic"] = self.input, self.statistic
        return out


@dataclass(frozen=True)
class ReferenceProfile:
    """A bundle's ``reference.json``: per-feature bins or categories, and the output distribution."""

    rows: int
    features: tuple[FeatureReference, ...]
    output_kind: str  # "classes" | "bins" | "none"
    output_labels: tuple[Any, ...] = ()
    output_edges: tuple[float, ...] = ()
    output_counts: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        def bad(what: str) -> TelemetryError:
            return TelemetryError(f"reference.json: {what}", fix="rebuild the bundle with `edgefleet convert`")
        try:
            features = tuple(FeatureReference.from_dict(f) for f in data.get("features", []))
            outputs = data.get("outputs") or {"kind": "none"}
            kind = outputs.get("kind", "none")
            labels = tuple(outputs.get("labels", ()))
            edges = tuple(float(e) for e in outputs.get("edges", ()))
            counts = tuple(int(c) for c in outputs.get("counts", ()))
            rows = int(data.get("rows", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"malformed ({exc!r})") from exc
        if kind not in ("classes", "bins", "none"):
            raise bad(f"outputs kind {kind!r} is not classes or bins")
        if kind == "classes" and len(labels) != len(counts):
            raise bad(f"{len(labels)} output labels but {len(counts)} counts")
        if kind == "bins" and len(edges) != len(counts) + 1:
            raise bad(f"{len(edges)} output edges but {len(counts)} counts")
        return cls(rows, features, kind, labels, edges, counts)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


def proportions(counts: Sequence[float], epsilon: float = PSI_EPSILON) -> list[float]:
    """Counts as shares of their total, each at least ``epsilon`` (empty bins would make log blow up)."""
    total = float(sum(counts))
    if total <= 0:
        return [1.0 / len(counts)] * len(counts) if counts else []
    return [max(c / total, epsilon) for c in counts]


def psi(actual: Sequence[float], expected: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual`` counts against ``expected`` counts (same bins).

    PSI = sum over bins of (a - e) * ln(a / e), a and e the bins' shares, each floored at
    ``epsilon``. Zero when the shapes agree; it grows with the shift and is symmetric.
    """
    if len(actual) != len(expected):
        raise TelemetryError(f"PSI needs the same bins on both sides: {len(actual)} against {len(expected)}",
                             fix="compare counts taken over the same reference edges")
    if not actual or sum(actual) <= 0:
        return 0.0
    a, e = proportions(actual, epsilon), proportions(expected, epsilon)
    return sum((x - y) * math.log(x / y) for x, y in zip(a, e, strict=True))


def band(value: float) -> str:
    """``stable`` below 0.1, ``moderate`` up to 0.25, ``drift`` above 0.25."""
    if value < STABLE_BELOW:
        return "stable"
    return "moderate" if value <= DRIFT_ABOVE else "drift"

