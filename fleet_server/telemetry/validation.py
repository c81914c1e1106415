"""Device messages checked once, where they enter the server: what every stored value must fit.

A device may send anything on its own ``telemetry``, ``events`` and ``reported`` topics (the
broker's ACL vouches for the topic, never for the body). Before a message is queued for the
database it is checked here against an explicit schema, so that nothing the database or a
fleet view would choke on ever reaches the writer:

    integers      fit the column they go to: BIGINT (seq, counts, rss, drift and output bins,
                  error counts, event counters) or INTEGER (dropped, feedback); never bool
    numbers       finite: NaN and ±Infinity are refused anywhere, inside JSON documents too
                  (``NaN`` literals, and ``1e999``, which Python reads as infinity)
    strings       no NUL and no lone surrogate anywhere (PostgreSQL refuses the first, UTF-8
                  the second); identifiers (ids, names, versions, states, reasons) also no
                  control character; each at most its column's length
    documents     at most ``max_bytes`` and ``MAX_DEPTH`` levels deep
    timestamps    a time a clock can show (1970 up to the year 3000) else refused; one more than
                  ``max_ahead_s`` ahead of the server's clock is clamped to the server's time
                  and flagged ``clock_ahead`` (docs/telemetry.md, "Refused messages", says why)
    drift shapes  as many features, and bins per feature, as the model's reference profile, and
                  as many output counts, when the server has the reference

Each refusal names a reason from ``REASONS`` (a closed set: it is a label in ``/metrics``) and a
short ``detail`` for people, in which hostile text only ever appears through ``repr`` and cut
to ``DETAIL_CHARS``. ``STORE_FAILED`` is the one reason given after the check: the database
refused a message anyway and the writer dropped it alone (``fleet_server.isolation``).

    IngestError (ServerError)      a device message cannot be stored
    └── Refused                    it breaks the schema; ``.fault`` says who, where and why

Pure: bytes or a decoded batch, the server's time and the limits in; a checked value or
``Refused`` out. No broker, database or clock. Counting, storing and showing refusals is
``fleet_server.telemetry.refusals``; queueing and writing is ``fleet_server.telemetry.ingest``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgefleet import telemetry
from edgefleet.errors import EdgefleetError
from edgefleet.telemetry import ReferenceProfile, TelemetryBatch, TelemetryError
from edgefleet.version import check_model_name
from fleet_server.errors import ServerError

# ---- reasons (a closed set: each is a /metrics label) ---------------------------------------

TOO_LARGE = "too_large"            # payload, or inflated telemetry body, over its limit
NOT_DECODABLE = "not_decodable"    # not JSON / not UTF-8 / bad zlib / another wire version
SCHEMA = "schema"                  # a key missing or unknown, a value of the wrong type or shape
INTEGER_RANGE = "integer_range"    # an integer that does not fit its column (or is negative)
NON_FINITE = "non_finite"          # NaN or ±Infinity
BAD_STRING = "bad_string"          # NUL, a lone surrogate, a control character in an identifier
TOO_LONG = "too_long"              # a string over its column's length
TOO_DEEP = "too_deep"              # JSON nested over MAX_DEPTH
WRONG_DEVICE = "wrong_device"      # the body names another device than its topic
TIMESTAMP = "timestamp"            # before 1970 or from the year 3000 on
DRIFT_SHAPE = "drift_shape"        # drift or output counts not shaped like the model's reference
STORE_FAILED = "store_failed"      # passed the checks, but the database refused it alone

REASONS: tuple[str, ...] = (TOO_LARGE, NOT_DECODABLE, SCHEMA, INTEGER_RANGE, NON_FINITE, BAD_STRING, TOO_LONG,
                            TOO_DEEP, WRONG_DEVICE, TIMESTAMP, DRIFT_SHAPE, STORE_FAILED)
CLOCK_AHEAD = "clock_ahead"        # stored, with the server's time instead of the device's
FLAGS: tuple[str, ...] = (CLOCK_AHEAD,)
TOPICS: tuple[str, ...] = ("telemetry", "events", "reported")

# ---- limits -----------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1   # BIGINT
INT32_MAX = 2**31 - 1   # INTEGER
MAX_TS = 32_503_680_000.0  # 3000-01-01: past it datetime overflows in some dialects; no clock shows it
MAX_DEPTH = 32
MAX_STRING = 8192        # any string inside a JSON document (details, free text)
DETAIL_CHARS = 200
# Column lengths (fleet_server/tables.py) of the identifiers that are stored or shown.
EVENT_ID_CHARS, EVENT_CHARS, MODEL_CHARS, VERSION_CHARS = 64, 32, 64, 128
NAME_CHARS = 64          # agent_version, profile, rollout ids, reasons, update states
ERROR_KIND_CHARS = 32


@dataclass(frozen=True)
class Limits:
    """What the checks allow; the defaults are the server's (docs/telemetry.md, "Refused messages")."""

    max_ahead_s: float = 300.0          # a timestamp further ahead of the server's clock is clamped
    event_bytes: int = 64 * 1024
    reported_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_ahead_s) and self.max_ahead_s >= 0 and self.event_bytes > 0
                and self.reported_bytes > 0):
            raise ValueError("limits must be finite and positive (max_ahead_s may be 0)")


DEFAULT_LIMITS = Limits()


# ---- errors -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """One refused (``reason`` in REASONS) or flagged (``reason`` in FLAGS) device message."""

    device_id: str
    topic: str
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.topic not in TOPICS or self.reason not in REASONS + FLAGS:
            raise ValueError(f"no fault {self.topic}/{self.reason}")
        object.__setattr__(self, "detail", _cut(_printable(self.detail)))

    @property
    def refused(self) -> bool:
        return self.reason in REASONS


class IngestError(ServerError):
    """A device message cannot be stored."""


class Refused(IngestError):
    """A device message breaks the schema (``fault``); it is counted and never queued."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        super().__init__(f"{fault.topic} message from {fault.device_id} refused ({fault.reason}): {fault.detail}",
                         fix=_FIXES.get(fault.reason, "send messages built by the edgefleet agent of this release"))


_FIXES = {
    TIMESTAMP: "set the device's clock (NTP): its timestamps are before 1970 or after the year 3000",
    WRONG_DEVICE: "a device may report only for itself; check the agent's identity.json",
    DRIFT_SHAPE: "the device counts drift against another reference than the published bundle's; reinstall the model",
    STORE_FAILED: "the database refused this one message; see the server log for its error",
}


def _printable(text: str) -> str:
    # Details are stored (String(200)), logged and shown: never a raw NUL, surrogate or escape code.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 3] + "..."


def _shown(value: Any) -> str:
    """A hostile value for a message: repr (so NUL and escapes are visible), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fail(Exception):
    """Raised inside the checks; turned into ``Refused`` with the device and topic at the top."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


# ---- generic pieces ----------------------------------------------------------------------------

def _integer(value: Any, what: str, maximum: int = INT64_MAX) -> int:
    if type(value) is not int:  # bool is an int subclass: true is not a count
        raise _Fail(SCHEMA, f"{what} must be an integer, got {_shown(value)}")
    if not 0 <= value <= maximum:
        raise _Fail(INTEGER_RANGE, f"{what} is {_shown(value)}, outside 0..{maximum}")
    return value


def _text(value: str, what: str, limit: int, *, identifier: bool) -> str:
    if len(value) > limit:
        raise _Fail(TOO_LONG, f"{what} has {len(value)} characters, over {limit}")
    if "\x00" in value:
        raise _Fail(BAD_STRING, f"{what} holds a NUL character: {_shown(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Fail(BAD_STRING, f"{what} holds a lone surrogate: {_shown(value)}") from exc
    if identifier and not value.isprintable():
        raise _Fail(BAD_STRING, f"{what} holds a control character: {_shown(value)}")
    return value


def _identifier(value: Any, what: str, limit: int, *, optional: bool = False, empty: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and not empty):
        raise _Fail(SCHEMA, f"{what} must be a {'' if empty else 'non-empty '}string, got {_shown(value)}")
    return _text(value, what, limit, identifier=True)


def _reject_constant(name: str) -> Any:
    raise _Fail(NON_FINITE, f"holds {name}, which is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Fail(NON_FINITE, f"holds {_shown(text)}, which overflows to infinity")
    return value


def _bounded_int(text: str) -> int:
    # Checked as text first: int() of 5,000 digits is a ValueError (and slow), not a range error.
    if len(text.lstrip("-")) > 19 or not -INT64_MAX - 1 <= (value := int(text)) <= INT64_MAX:
        raise _Fail(INTEGER_RANGE, f"holds the integer {_shown(text)}, outside 64 bits")
    return value


def parse_document(payload: bytes, max_bytes: int) -> Any:
    """Strict JSON: size, depth, finite numbers, 64-bit integers, NUL- and surrogate-free strings.

    Raises ``_Fail``. The number hooks run inside ``json.loads``, so a ``NaN`` or a 30-digit
    integer is refused where it is read; strings (keys too) and depth are checked by one walk.
    """
    if len(payload) > max_bytes:
        raise _Fail(TOO_LARGE, f"is {len(payload)} bytes, over {max_bytes}")
    try:
        document = json.loads(payload, parse_constant=_reject_constant, parse_float=_finite_float,
                              parse_int=_bounded_int)
    except _Fail:
        raise
    except RecursionError as exc:  # the C scanner counts its depth against the recursion limit
        raise _Fail(TOO_DEEP, f"nests deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Fail(NOT_DECODABLE, f"is not JSON: {_cut(str(exc))}") from exc
    _check_strings(document)
    return document


def _check_strings(document: Any) -> None:
    # Iterative, so the walk itself has no depth limit to hit before it can count the depth.
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _text(value, "a string", MAX_STRING, identifier=False)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise _Fail(TOO_DEEP, f"nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _text(key, "a key", MAX_STRING, identifier=False)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _object(document: Any, device_id: str, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise _Fail(SCHEMA, f"{what} is not a JSON object")
    claimed = document.get("device_id", device_id)
    if claimed != device_id:
        raise _Fail(WRONG_DEVICE, f"{what} on {device_id}'s topic claims to be from {_shown(claimed)}")
    return document


def _at(ts: float, now: datetime | None, limits: Limits, what: str) -> tuple[datetime, str | None]:
    """The stored time of a message stamped ``ts`` (Unix seconds), and CLOCK_AHEAD if clamped."""
    if not math.isfinite(ts):
        raise _Fail(NON_FINITE, f"{what} has timestamp {ts}")
    if not 0 <= ts < MAX_TS:
        raise _Fail(TIMESTAMP, f"{what} has timestamp {ts:.0f}, outside 1970-3000")
    if now is not None and ts > now.timestamp() + limits.max_ahead_s:
        ahead = ts - now.timestamp()
        return now, f"{what} was stamped {ahead:.0f} s ahead of the server's clock; stored at the server's time"
    return datetime.fromtimestamp(ts, UTC), None


def _refusing(device_id: str, topic: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except _Fail as exc:
        raise Refused(Fault(device_id, topic, exc.reason, exc.detail)) from None


# ---- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckedEvent:
    """An accepted ``events`` message: its ``device_events`` row, and the flag if its time was clamped."""

    row: dict[str, Any]
    flag: Fault | None = None


def check_event(device_id: str, payload: bytes, now: datetime | None, limits: Limits = DEFAULT_LIMITS) -> CheckedEvent:
    """Check one ``events`` message (docs/contracts.md, "MQTT payloads"); raise ``Refused``.

    ``now`` (the server's time) clamps a timestamp too far ahead; None checks only that the
    timestamp is one a clock can show.
    """
    def check() -> CheckedEvent:
        document = _object(parse_document(payload, limits.event_bytes), device_id, "event")
        event_id = document.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise _Fail(SCHEMA, f"event from {device_id} has no event_id (a string of 1-{EVENT_ID_CHARS} characters)")
        _identifier(event_id, "event_id", EVENT_ID_CHARS)
        if not isinstance(document.get("event"), str) or not document["event"]:
            raise _Fail(SCHEMA, f"event {_shown(event_id)} from {device_id} has no event name")
        event = _identifier(document["event"], "event name", EVENT_CHARS)
        ts = document.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise _Fail(SCHEMA, f"event {_shown(event_id)} from {device_id} has no numeric ts")
        model = _identifier(document.get("model"), "event model", MODEL_CHARS, optional=True)
        version = _identifier(document.get("version"), "event version", VERSION_CHARS, optional=True)
        for key in ("rollout_id", "reason"):
            _identifier(document.get(key), f"event {key}", NAME_CHARS, optional=True, empty=True)
        if document.get("counter") is not None:
            _integer(document["counter"], "event counter")
        for key in ("timings", "details"):
            if document.get(key) is not None and not isinstance(document[key], dict):
                raise _Fail(SCHEMA, f"event {key} must be an object")
        at, clamped = _at(float(ts), now, limits, f"event {_shown(event_id)}")
        row = {"device_id": device_id, "event_id": event_id, "ts": at, "event": event, "model": model,
               "version": version, "document": document}
        return CheckedEvent(row, None if clamped is None else Fault(device_id, "events", CLOCK_AHEAD, clamped))

    result: CheckedEvent = _refusing(device_id, "events", check)
    return result


# ---- reported -----------------------------------------------------------------------------------

def check_reported(device_id: str, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any] | None:
    """Check one ``reported`` message; its document, or None for an empty one (a cleared retained
    message, which says nothing). Raise ``Refused``.

    The known fields must have their types (``models`` an object of objects, ``online`` a bool);
    other keys are allowed (a newer agent) but obey the generic rules. ``ts`` is not windowed:
    the server times presence by its own clock and stores the document as it is.
    """
    if not payload:
        return None

    def check() -> dict[str, Any]:
        document = _object(parse_document(payload, limits.reported_bytes), device_id, "reported message")
        if not isinstance(document.get("online"), bool):
            raise _Fail(SCHEMA, f"reported message from {device_id} has no boolean 'online'")
        for key in ("agent_version", "profile"):
            _identifier(document.get(key), f"reported {key}", NAME_CHARS, optional=True, empty=True)
        ts = document.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise _Fail(SCHEMA, f"reported ts must be a number, got {_shown(ts)}")
        models = document.get("models", {})
        if not isinstance(models, dict):
            raise _Fail(SCHEMA, f"reported models must be an object of name: {{version, sha256}}, got {_shown(models)}")
        for name, entry in models.items():
            _model_name(name, "reported model name")
            if not isinstance(entry, dict):
                raise _Fail(SCHEMA, f"reported model {name!r} must be an object, got {_shown(entry)}")
            _identifier(entry.get("version"), f"reported version of {name!r}", VERSION_CHARS)
            _identifier(entry.get("sha256"), f"reported sha256 of {name!r}", 64, optional=True)
        update = document.get("update")
        if update is not None:
            if not isinstance(update, dict):
                raise _Fail(SCHEMA, f"reported update must be an object, got {_shown(update)}")
            _identifier(update.get("state"), "reported update state", NAME_CHARS, optional=True)
            _identifier(update.get("model"), "reported update model", MODEL_CHARS, optional=True)
            _identifier(update.get("version"), "reported update version", VERSION_CHARS, optional=True)
            for key in ("rollout_id", "reason"):
                _identifier(update.get(key), f"reported update {key}", NAME_CHARS, optional=True, empty=True)
            if update.get("counter") is not None:
                _integer(update["counter"], "reported update counter")
        if document.get("assignment_counter") is not None:  # agents since issue 13 (fleet_server.rollouts.resend)
            _integer(document["assignment_counter"], "reported assignment_counter")
        return document

    result: dict[str, Any] = _refusing(device_id, "reported", check)
    return result


def _model_name(name: Any, what: str) -> str:
    _identifier(name, what, MODEL_CHARS)
    try:
        return check_model_name(name)
    except EdgefleetError as exc:
        raise _Fail(SCHEMA, f"{what} {_shown(name)} is not a model name") from exc


# ---- telemetry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckedBatch:
    """An accepted telemetry batch, the time it is stored at, and the flag if that was clamped."""

    batch: TelemetryBatch
    at: datetime
    flag: Fault | None = None


References = Callable[[str, str], ReferenceProfile | None]


def _no_reference(model: str, version: str) -> None:
    return None


def decode_telemetry(device_id: str, payload: bytes) -> TelemetryBatch:
    """``edgefleet.telemetry.decode`` with its refusals given reasons; raise ``Refused``.

    ``decode`` refuses with one error type; the reason is read from which check failed (the
    messages are pinned by tests/unit/fleet_server/test_validation.py). Anything else ``decode``
    raises (a RecursionError on deep JSON, a ValueError on a 5,000-digit version) is a schema
    refusal too: no payload may raise out of here.
    """
    try:
        batch = telemetry.decode(payload)
    except TelemetryError as exc:
        raise Refused(Fault(device_id, "telemetry", _decode_reason(exc.message), exc.message)) from None
    except RecursionError:
        raise Refused(Fault(device_id, "telemetry", TOO_DEEP, "the batch nests too deep")) from None
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise Refused(Fault(device_id, "telemetry", SCHEMA, f"the batch cannot be read: {exc}")) from None
    if batch.device_id != device_id:
        raise Refused(Fault(device_id, "telemetry", WRONG_DEVICE,
                            f"a batch naming device {batch.device_id!r} arrived on the topic of {device_id!r}"))
    return batch


def _decode_reason(message: str) -> str:
    if "finite number" in message:
        return NON_FINITE
    if "inflates past" in message:
        return TOO_LARGE
    if any(s in message for s in ("wire version", "not valid zlib", "truncated", "not JSON", "too short")):
        return NOT_DECODABLE
    return SCHEMA


def check_batch(batch: TelemetryBatch, now: datetime | None, limits: Limits = DEFAULT_LIMITS,
                references: References = _no_reference) -> CheckedBatch:
    """Check a decoded batch against the columns, the clock and the models' references; raise ``Refused``.

    ``decode`` has checked types, signs and finiteness; this adds what storing and viewing need.
    ``references(model, version)`` gives a model's reference profile, or None when the server
    does not know it (then the drift shapes are not checked).
    """
    def check() -> CheckedBatch:
        _integer(batch.seq, "seq")
        _integer(batch.dropped, "dropped", INT32_MAX)
        if batch.resource.rss_bytes is not None:
            _integer(batch.resource.rss_bytes, "rss_bytes")
        for record in batch.models:
            where = f"{record.model}@{_shown(record.version)}"
            _identifier(record.version, f"version of {record.model}", VERSION_CHARS)
            _integer(record.count, f"count of {where}")
            for kind, n in record.errors.items():
                _identifier(kind, f"error kind of {where}", ERROR_KIND_CHARS)
                _integer(n, f"errors[{_shown(kind)}] of {where}")
            _counts(record.outputs, f"output counts of {where}")
            # The drift bins (hundreds, every 10th batch of every device) in one pass in C; the
            # feature at fault is looked for only when one is over.
            if max(map(max, filter(None, record.drift)), default=0) > INT64_MAX:
                for i, feature in enumerate(record.drift):
                    _counts(feature, f"drift counts of feature {i} of {where}")
            _integer(record.feedback.labels, f"feedback labels of {where}", INT32_MAX)
            _integer(record.feedback.correct, f"feedback correct of {where}", INT32_MAX)
            if record.drift or record.outputs:
                _shapes(record.drift, record.outputs, references(record.model, record.version), where)
        at, clamped = _at(batch.ts, now, limits, f"batch {batch.seq}")
        return CheckedBatch(batch, at, None if clamped is None else Fault(batch.device_id, "telemetry", CLOCK_AHEAD,
                                                                          clamped))

    result: CheckedBatch = _refusing(batch.device_id, "telemetry", check)
    return result


def _counts(values: tuple[int, ...], what: str) -> None:
    # max() runs in C: every batch of the fleet passes here.
    if values and max(values) > INT64_MAX:
        bad = next(v for v in values if v > INT64_MAX)
        raise _Fail(INTEGER_RANGE, f"{what} hold {_shown(bad)}, over 2**63-1")


def _shapes(drift: tuple[tuple[int, ...], ...], outputs: tuple[int, ...], reference: ReferenceProfile | None,
            where: str) -> None:
    if reference is None:
        return
    expected = [len(f.counts) for f in reference.features]
    if drift and [len(f) for f in drift] != expected:
        got = [len(f) for f in drift]
        raise _Fail(DRIFT_SHAPE, f"drift of {where} has {len(got)} features of {_shown(got)} bins; "
                                 f"its reference has {len(expected)} features of {_shown(expected)} bins")
    if outputs and reference.output_counts and len(outputs) != len(reference.output_counts):
        raise _Fail(DRIFT_SHAPE, f"output counts of {where} are {len(outputs)}; its reference has "
                                 f"{len(reference.output_counts)}")


__all__ = [
    "CLOCK_AHEAD", "DEFAULT_LIMITS", "FLAGS", "INT32_MAX", "INT64_MAX", "REASONS", "STORE_FAILED", "TOPICS",
    "CheckedBatch", "CheckedEvent", "Fault", "IngestError", "Limits", "Refused", "check_batch", "check_event",
    "check_reported", "decode_telemetry", "parse_document",
]
