"""Hypothesis strategies for hostile MQTT payloads, per device topic (issue 14, poison pills).

Each strategy starts from the shape a real agent sends (docs/contracts.md, docs/telemetry.md)
and breaks it the ways one enrolled device could: values replaced by poison (integers past
64 bits, NaN and infinities, NUL and lone surrogates, strings over their columns, deep nesting,
wrong types), keys added, bodies that are not JSON or not zlib, and now and then a message that
is perfectly valid. ``hostile_message(device_id, other_id)`` draws (topic, payload) for any of
the three topics. Used by tests/unit/fleet_server/test_validation.py (the pure checks) and
tests/integration/hostile/test_ingest_fuzz.py (a real broker and database).
"""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

from hypothesis import strategies as st

from edgefleet import topics
from edgefleet.telemetry import WIRE_VERSION

NOW_TS = 1_765_000_000.0

POISON_INTS = st.sampled_from([2**63, 2**64, 2**64 + 1, 2**100, -1, -(2**63) - 1, 10**30])
POISON_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf")])
POISON_STRINGS = st.sampled_from(["\x00", "ok\x00", "\ud800", "a\udfffb", "\x1b[31m", "\n", "x" * 300,
                                  "\u202e", "9" * 5000])
POISON = st.one_of(POISON_INTS, POISON_FLOATS, POISON_STRINGS, st.booleans(), st.none(), st.just([]),
                   st.just({}), st.just("1.0.0"), st.just([1, 2]), st.just({"version": float("nan")}))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), POISON_STRINGS)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.one_of(st.text(max_size=8), POISON_STRINGS), inner, max_size=4),
                           max_leaves=12)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def dumps(document: Any, style: str) -> bytes:
    """JSON text as a hostile device could write it: NaN allowed, surrogates escaped or raw."""
    if style == "raw":  # surrogates as raw (invalid) UTF-8 bytes
        return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(document).encode()  # NaN, Infinity literals; \\ud800 escapes


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with some keys (nested ones too) replaced by poison, deleted, or added."""
    document = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = document
        path = [k for k in draw(st.sampled_from(_paths(document)))]
        for key in path[:-1]:
            target = target[key]
        action = draw(st.sampled_from(["poison", "poison", "value", "delete"]))
        if action == "delete" and isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            # A copy: st.just hands out one object, which a later mutation must not change.
            target[path[-1]] = copy.deepcopy(draw(POISON if action == "poison" else JSON_VALUES))
    if draw(st.booleans()):
        document[draw(st.one_of(st.text(max_size=6), POISON_STRINGS))] = copy.deepcopy(draw(JSON_VALUES))
    return document


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def event_document(device_id: str, n: int = 0) -> dict[str, Any]:
    return {"device_id": device_id, "event_id": f"ev-{n}", "ts": NOW_TS, "event": "committed", "model": "digits",
            "version": "1.0.0", "counter": 3, "rollout_id": "r-1", "reason": None, "timings": {"total_s": 1.5},
            "details": {"agreement": 1.0, "notes": ["ok"]}}


def reported_document(device_id: str) -> dict[str, Any]:
    return {"device_id": device_id, "online": True, "agent_version": "0.1.0", "profile": "rpi4-64",
            "models": {"digits": {"version": "1.0.0", "sha256": "0" * 64}},
            "update": {"state": "committed", "model": "digits", "version": "1.0.0", "counter": 3,
                       "rollout_id": "r-1", "reason": None}, "ts": NOW_TS}


def wire_batch(device_id: str, seq: int = 1) -> dict[str, Any]:
    return {"d": device_id, "s": seq, "t": NOW_TS, "i": 60, "x": 1, "r": [7.5, 48_000_000, 51.0],
            "m": [{"n": "digits", "v": "1.0.0", "c": 61, "e": {"inference": 1}, "l": [0.4, 1.2, 2.8],
                   "o": [3, 4], "f": [[1, 0, 2], [3, 0, 0]], "b": [3, 2]}]}


def wire(document_bytes: bytes, version: int = WIRE_VERSION) -> bytes:
    return bytes([version]) + zlib.compress(document_bytes)


@st.composite
def json_payload(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "any", "deep", "bytes", "valid"]))
    if kind == "any":
        return dumps(draw(JSON_VALUES), draw(st.sampled_from(["escaped", "raw"])))
    if kind == "deep":
        return draw(st.sampled_from([deep(40), deep(5000), '{"a":' * 100 + "1" + "}" * 100])).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "valid":
        return dumps(base, "escaped")
    return dumps(draw(_mutated(base)), draw(st.sampled_from(["escaped", "escaped", "raw"])))


@st.composite
def telemetry_payload(draw: st.DrawFn, device_id: str, seq: int) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "any", "deep", "bytes", "version", "bomb"]))
    if kind == "any":
        return wire(dumps(draw(JSON_VALUES), "escaped"))
    if kind == "deep":
        return wire(deep(draw(st.sampled_from([40, 5000]))).encode())
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "version":
        return wire(dumps(wire_batch(device_id, seq), "escaped"), version=draw(st.integers(0, 255)))
    if kind == "bomb":
        return wire(b"[" + b"0," * (1 << 20) + b"0]")
    return wire(dumps(draw(_mutated(wire_batch(device_id, seq))), "escaped"))


@st.composite
def hostile_message(draw: st.DrawFn, device_id: str, other_id: str) -> tuple[str, bytes]:
    """(topic, payload) of one hostile message on one of ``device_id``'s topics; the body may
    name ``other_id`` (a device speaking for another)."""
    claimed = draw(st.sampled_from([device_id, device_id, device_id, other_id]))
    topic = draw(st.sampled_from(["telemetry", "events", "reported"]))
    if topic == "telemetry":
        return topics.telemetry(device_id), draw(telemetry_payload(claimed, draw(st.integers(0, 2**62))))
    if topic == "events":
        return topics.events(device_id), draw(json_payload(event_document(claimed, draw(st.integers(0, 10**6)))))
    return topics.reported(device_id), draw(json_payload(reported_document(claimed)))
