"""The ingest's checks (fleet_server.telemetry.validation): whatever passes fits the columns, whatever
does not is refused with a reason, and what a real agent sends always passes (issue 14, poison pills)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet import telemetry
from edgefleet.events import EVENTS, UpdateEvent
from edgefleet.telemetry import Feedback, Latency, ModelRecord, ReferenceProfile, TelemetryBatch
from fleet_server.telemetry.validation import (
    CLOCK_AHEAD,
    DETAIL_CHARS,
    FLAGS,
    INT32_MAX,
    INT64_MAX,
    MAX_DEPTH,
    REASONS,
    Fault,
    Limits,
    Refused,
    check_batch,
    check_event,
    check_reported,
    decode_telemetry,
)
from tests.integration.hostile.payloads import (
    NOW_TS,
    event_document,
    json_payload,
    reported_document,
    telemetry_payload,
    wire,
    wire_batch,
)

NOW = datetime.fromtimestamp(NOW_TS, UTC)
DEVICE = "dev-a"


def _walk(value: Any, depth: int = 0) -> Iterator[tuple[Any, int]]:
    yield value, depth
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, depth + 1
            yield from _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, depth + 1)


def assert_storable(document: Any) -> None:
    """What PostgreSQL's JSON and text columns and the API's JSON responses take."""
    json.dumps(document, allow_nan=False).encode("utf-8")  # no NaN/Infinity; raises on a lone surrogate
    for value, depth in _walk(document):
        assert depth <= MAX_DEPTH + 1
        if isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")
        elif isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value <= INT64_MAX
        elif isinstance(value, float):
            assert math.isfinite(value)


def assert_well_refused(refused: Refused, topic: str) -> None:
    fault = refused.fault
    assert fault.topic == topic and fault.reason in REASONS and fault.refused
    assert len(fault.detail) <= DETAIL_CHARS and fault.detail.isprintable()
    assert refused.fix


# ---- properties over hostile payloads ----------------------------------------------------------

@settings(max_examples=300)
@given(payload=json_payload(event_document(DEVICE)) | json_payload(event_document("dev-b")) | st.binary(max_size=80))
def test_an_event_is_refused_with_a_reason_or_fits_every_column(payload: bytes) -> None:
    try:
        checked = check_event(DEVICE, payload, NOW)
    except Refused as refused:
        assert_well_refused(refused, "events")
        return
    row = checked.row
    assert_storable(row["document"])
    assert row["device_id"] == DEVICE and row["document"].get("device_id", DEVICE) == DEVICE
    assert 0 < len(row["event_id"]) <= 64 and 0 < len(row["event"]) <= 32
    assert row["model"] is None or len(row["model"]) <= 64
    assert row["version"] is None or len(row["version"]) <= 128
    for text in (row["event_id"], row["event"], row["model"] or "", row["version"] or ""):
        assert text.isprintable()
    assert datetime(1970, 1, 1, tzinfo=UTC) <= row["ts"] <= NOW + timedelta(seconds=300)


@settings(max_examples=300)
@given(payload=json_payload(reported_document(DEVICE)) | json_payload(reported_document("dev-b"))
       | st.binary(max_size=80))
def test_a_report_is_refused_with_a_reason_or_fits_and_keeps_its_shape(payload: bytes) -> None:
    try:
        document = check_reported(DEVICE, payload)
    except Refused as refused:
        assert_well_refused(refused, "reported")
        return
    if document is None:
        assert payload == b""
        return
    assert_storable(document)
    assert isinstance(document["online"], bool) and document.get("device_id", DEVICE) == DEVICE
    # What the fleet views and the rollout engine read from it has the types they expect.
    assert isinstance(document.get("models", {}), dict)
    assert all(isinstance(m, dict) and isinstance(m["version"], str) for m in document.get("models", {}).values())
    assert document.get("update") is None or isinstance(document["update"], dict)


@settings(max_examples=300)
@given(payload=telemetry_payload(DEVICE, 7) | telemetry_payload("dev-b", 7) | st.binary(max_size=80))
def test_a_batch_is_refused_with_a_reason_or_fits_every_column(payload: bytes) -> None:
    try:
        checked = check_batch(decode_telemetry(DEVICE, payload), NOW)
    except Refused as refused:
        assert_well_refused(refused, "telemetry")
        return
    batch = checked.batch
    assert batch.device_id == DEVICE and 0 <= batch.seq <= INT64_MAX and 0 <= batch.dropped <= INT32_MAX
    for record in batch.models:
        assert len(record.version) <= 128 and record.count <= INT64_MAX
        assert record.feedback.labels <= INT32_MAX
        assert_storable({"errors": dict(record.errors), "outputs": list(record.outputs),
                         "drift": [list(f) for f in record.drift]})
    assert checked.at <= NOW + timedelta(seconds=300)


# ---- each poison pill, and its reason -----------------------------------------------------------

def _event(**changes: Any) -> bytes:
    return json.dumps({**event_document(DEVICE), **changes}).encode()


def _reported(**changes: Any) -> bytes:
    return json.dumps({**reported_document(DEVICE), **changes}).encode()


def _batch(change: Any = None, **record: Any) -> bytes:
    document = wire_batch(DEVICE)
    document["m"][0].update(record)
    if change is not None:
        change(document)
    return wire(json.dumps(document).encode())


@pytest.mark.parametrize("topic, payload, reason", [
    ("telemetry", _batch(lambda d: d.update(s=2**64)), "integer_range"),
    ("telemetry", _batch(lambda d: d.update(s=2**63)), "integer_range"),
    ("telemetry", _batch(lambda d: d.update(x=2**31)), "integer_range"),  # dropped is an INTEGER column
    ("telemetry", _batch(c=2**64), "integer_range"),
    ("telemetry", _batch(f=[[1, 2**64, 0], [3, 0, 0]]), "integer_range"),
    ("telemetry", _batch(o=[2**70, 1]), "integer_range"),
    ("telemetry", _batch(e={"inference": 2**64}), "integer_range"),
    ("telemetry", _batch(b=[2**31, 0]), "integer_range"),
    ("telemetry", _batch(e={"in\x00put": 1}), "bad_string"),
    ("telemetry", _batch(v="1.0.0-" + "a" * 200), "too_long"),
    ("telemetry", _batch(v="9" * 5000 + ".0.0"), "schema"),  # int() of 5,000 digits raised out of decode
    ("telemetry", _batch(l=[float("nan"), 1, 2]), "non_finite"),
    ("telemetry", _batch(lambda d: d.update(t=1e15)), "timestamp"),
    ("telemetry", _batch(lambda d: d.update(d="dev-b")), "wrong_device"),
    ("telemetry", wire(b"[" * 5000 + b"]" * 5000), "too_deep"),
    ("telemetry", wire(b"[" + b"0," * (1 << 20) + b"0]"), "too_large"),
    ("telemetry", b"\x01not zlib", "not_decodable"),
    ("telemetry", wire(b"{}", version=9), "not_decodable"),
    ("events", _event(details={"agreement": float("nan")}), "non_finite"),
    ("events", _event(ts=float("inf")), "non_finite"),
    ("events", b'{"event_id": "e", "event": "committed", "ts": 1e999}', "non_finite"),
    ("events", _event(event="commit\x00ted"), "bad_string"),
    ("events", _event(details={"message": "a\x00b"}), "bad_string"),
    ("events", _event(details={"\ud800": 1}), "bad_string"),
    ("events", _event(event_id="e\x1b[2J"), "bad_string"),
    ("events", _event(model="m" * 65), "too_long"),
    ("events", _event(counter=2**64), "integer_range"),
    ("events", _event(ts=-5), "timestamp"),
    ("events", _event(ts=1e15), "timestamp"),
    ("events", _event(device_id="dev-b"), "wrong_device"),
    ("events", _event(details="x" * 70_000), "too_large"),
    ("events", b"[" * 40 + b"]" * 40, "too_deep"),
    ("events", b"\xff\xfe not utf-8", "not_decodable"),
    ("events", _event(event_id=None), "schema"),
    ("reported", _reported(models={"digits": {"version": float("nan")}}), "non_finite"),
    ("reported", _reported(extra=[1.5, float("-inf")]), "non_finite"),
    ("reported", _reported(agent_version="0.1\x00"), "bad_string"),
    ("reported", _reported(models=["digits"]), "schema"),
    ("reported", _reported(models="digits"), "schema"),
    ("reported", _reported(models={"Digits!": {"version": "1.0.0"}}), "schema"),
    ("reported", _reported(update=[]), "schema"),
    ("reported", _reported(online="yes"), "schema"),
    ("reported", _reported(device_id="dev-b"), "wrong_device"),
    ("reported", _reported(update={"state": "idle", "counter": 2**64}), "integer_range"),
    ("reported", _reported(assignment_counter="7"), "schema"),
    ("reported", _reported(assignment_counter=-1), "integer_range"),
])
def test_each_poison_pill_is_refused_for_its_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        if topic == "telemetry":
            check_batch(decode_telemetry(DEVICE, payload), NOW)
        elif topic == "events":
            check_event(DEVICE, payload, NOW)
        else:
            check_reported(DEVICE, payload)
    assert refused.value.fault.reason == reason, refused.value.fault
    assert_well_refused(refused.value, topic)


# ---- what a real agent sends is never refused ----------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
VERSIONS = st.builds(lambda a, b, c: f"{a}.{b}.{c}", *(st.integers(0, 10**6),) * 3)
COUNTS = st.integers(0, INT64_MAX)
# Free text as an agent writes it (a message, a health report key): anything storable.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)


@st.composite
def agent_batches(draw: st.DrawFn) -> TelemetryBatch:
    records = []
    for name in draw(st.lists(NAMES, unique=True, max_size=3)):
        labels = draw(st.integers(0, INT32_MAX))
        p = sorted(draw(st.lists(st.floats(0, 1e6), min_size=3, max_size=3)))
        records.append(ModelRecord(
            model=name, version=draw(VERSIONS), count=draw(COUNTS),
            errors=draw(st.dictionaries(st.from_regex(r"[a-z_]{1,32}", fullmatch=True), COUNTS, max_size=3)),
            latency=draw(st.none() | st.just(Latency(*p))), outputs=tuple(draw(st.lists(COUNTS, max_size=10))),
            drift=tuple(tuple(f) for f in draw(st.lists(st.lists(COUNTS, min_size=1, max_size=10), max_size=5))),
            feedback=Feedback(labels, draw(st.integers(0, labels)))))
    return TelemetryBatch(DEVICE, draw(COUNTS), NOW_TS - draw(st.floats(0, 10 * 365 * 86400)),
                          draw(st.floats(0.001, 86400)), draw(st.integers(0, INT32_MAX)), models=tuple(records))


@given(batch=agent_batches())
def test_every_batch_an_agent_can_build_passes_unchanged(batch: TelemetryBatch) -> None:
    checked = check_batch(decode_telemetry(DEVICE, telemetry.encode(batch)), NOW)
    assert checked.batch == batch and checked.flag is None
    assert checked.at == datetime.fromtimestamp(batch.ts, UTC)


@given(event=st.builds(UpdateEvent, device_id=st.just(DEVICE), event_id=st.uuids().map(lambda u: u.hex),
                       ts=st.floats(0, NOW_TS), event=st.sampled_from(EVENTS), model=st.none() | NAMES,
                       version=st.none() | VERSIONS, counter=st.none() | st.integers(0, 2**40),
                       rollout_id=st.none() | st.uuids().map(str), reason=st.just("health_failed"),
                       timings=st.dictionaries(TEXT, st.floats(0, 1e6), max_size=3),
                       details=st.dictionaries(TEXT, TEXT | st.integers(-9, 9), max_size=3)))
def test_every_event_an_agent_can_send_passes(event: UpdateEvent) -> None:
    document = event.to_dict()
    checked = check_event(DEVICE, json.dumps(document).encode(), NOW)
    assert checked.row["document"] == document and checked.flag is None


@given(models=st.dictionaries(NAMES, st.builds(lambda v, h: {"version": v, "sha256": h}, VERSIONS,
                                                  st.from_regex(r"[0-9a-f]{64}", fullmatch=True)), max_size=4),
       state=st.sampled_from(["idle", *EVENTS]), online=st.booleans(), held=st.integers(0, 2**40))
def test_every_report_an_agent_can_send_passes(models: dict[str, Any], state: str, online: bool, held: int) -> None:
    document = {**reported_document(DEVICE), "models": models, "online": online,
                "update": {"state": state, "model": None, "version": None, "counter": None, "rollout_id": None,
                           "reason": None}, "assignment_counter": held}
    assert check_reported(DEVICE, json.dumps(document).encode()) == document
    assert check_reported(DEVICE, json.dumps({"device_id": DEVICE, "online": False}).encode()) is not None
    assert check_reported(DEVICE, b"") is None  # a cleared retained message says nothing


# ---- time ---------------------------------------------------------------------------------------

@given(offset=st.floats(-NOW_TS, 1e9), ahead=st.floats(0, 3600))
def test_a_future_timestamp_is_clamped_to_the_servers_time_and_flagged(offset: float, ahead: float) -> None:
    ts = NOW_TS + offset
    checked = check_event(DEVICE, _event(ts=ts), NOW, Limits(max_ahead_s=ahead))
    if ts > NOW_TS + ahead:
        assert checked.row["ts"] == NOW
        assert checked.flag is not None and checked.flag.reason == CLOCK_AHEAD and not checked.flag.refused
        assert checked.row["document"]["ts"] == ts  # the device's claim is kept in the document
    else:
        assert checked.row["ts"] == datetime.fromtimestamp(ts, UTC) and checked.flag is None


def test_the_year_2999_is_stored_now_and_flagged() -> None:
    payload = _batch(lambda d: d.update(t=datetime(2999, 1, 1, tzinfo=UTC).timestamp()))
    checked = check_batch(decode_telemetry(DEVICE, payload), NOW)
    assert checked.at == NOW and checked.flag is not None and checked.flag.reason in FLAGS
    assert "ahead of the server's clock" in checked.flag.detail


# ---- drift shapes --------------------------------------------------------------------------------

REFERENCE = ReferenceProfile.from_dict({
    "rows": 10, "features": [{"name": "a", "edges": [0, 1, 2, 3], "counts": [1, 2, 3]},
                             {"name": "b", "kind": "categories", "categories": ["x"], "counts": [4, 1]}],
    "outputs": {"kind": "classes", "labels": [0, 1], "counts": [5, 5]}})


@pytest.mark.parametrize("drift, outputs", [
    ([[1, 0, 2], [3, 0]], [3, 4]),
    ([], [3, 4]),              # drift rides on every 10th batch only
    ([[1, 0, 2], [3, 0]], []),
])
def test_drift_and_outputs_shaped_like_the_reference_pass(drift: list[list[int]], outputs: list[int]) -> None:
    batch = decode_telemetry(DEVICE, _batch(f=drift, o=outputs))
    assert check_batch(batch, NOW, references=lambda model, version: REFERENCE).batch == batch


@pytest.mark.parametrize("drift, outputs", [
    ([[1, 0, 2]], [3, 4]),                  # a feature missing
    ([[1, 0], [3, 0]], [3, 4]),             # a feature with a bin missing
    ([[1, 0, 2], [3, 0], [1]], [3, 4]),     # a feature too many
    ([[1, 0, 2], [3, 0]], [3, 4, 5]),       # an output class too many
])
def test_a_drift_shape_the_reference_does_not_have_is_refused(drift: list[list[int]], outputs: list[int]) -> None:
    batch = decode_telemetry(DEVICE, _batch(f=drift, o=outputs))
    with pytest.raises(Refused) as refused:
        check_batch(batch, NOW, references=lambda model, version: REFERENCE)
    assert refused.value.fault.reason == "drift_shape"
    assert check_batch(batch, NOW).batch == batch  # without a reference the shape is not judged


def test_a_faults_detail_is_printable_and_short() -> None:
    fault = Fault(DEVICE, "events", "bad_string", "a\x00b\ud800" + "x" * 500)
    assert fault.detail.startswith("a\\x00b\\ud800") and len(fault.detail) == DETAIL_CHARS
    with pytest.raises(ValueError):
        Fault(DEVICE, "desired", "schema", "")
    with pytest.raises(ValueError):
        Fault(DEVICE, "events", "anything", "")
