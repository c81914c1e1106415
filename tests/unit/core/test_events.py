"""One home for event names and reason codes: the agent, the server and the simulator name no other.

The scan reads the sources with ``ast`` and collects every string literal written where an
update event name goes:

- the value of an ``"event"`` key in a dict literal, or of an ``event=`` keyword argument;
- a literal compared with ``x.event``, ``x["event"]``, ``x.get("event")`` or a variable named
  ``event`` (``==``, ``!=``, ``in`` a literal tuple/set/list);
- the first argument of ``Step(...)``/``_send_event(...)`` (the simulator's event records);
- the items of a literal collection assigned to a name ending in ``EVENTS``.

Reason codes are checked the same way (``"reason"`` keys, ``reason=`` keywords, ``Fail(now,
reason)``, the reason of a simulator ``Step``) in the agent, the core and the simulator, which
must name only ``edgefleet.events.REASONS``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet import events
from edgefleet.errors import EdgefleetError

ROOT = Path(__file__).resolve().parents[3]
EVENT_TREES = ("agent", "fleet_server", "simulation")
REASON_TREES = ("agent", "edgefleet", "simulation")
_EVENT_CALLS = {"Step": 0, "_send_event": 0}
_REASON_CALLS = {"Fail": 1, "Step": 4}  # Fail(now, reason, ...), Step(event, model, version, serving, reason)


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    """The string literal itself, or the string items of a literal tuple/set/list/frozenset(...)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        for item in node.elts:
            yield from _strings(item)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set") \
            and node.args:
        yield from _strings(node.args[0])


def _is_key(node: ast.AST, key: str) -> bool:
    """``x.key``, ``x["key"]``, ``x.get("key")`` or a variable named ``key``."""
    if isinstance(node, ast.Name):
        return node.id == key
    if isinstance(node, ast.Attribute):
        return node.attr == key
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == key
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        first = node.args[0]
        return isinstance(first, ast.Constant) and first.value == key
    return False


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def literals(source: str, key: str, calls: dict[str, int]) -> Iterator[ast.Constant]:
    """String literals written where a value of ``key`` ("event" or "reason") goes."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key:
                    yield from _strings(v)
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == key:
                    yield from _strings(kw.value)
            arg = calls.get(_call_name(node) or "")
            if arg is not None and len(node.args) > arg:
                yield from _strings(node.args[arg])
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_key(side, key) for side in sides):
                for side in sides:
                    yield from _strings(side)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and key == "event":
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(isinstance(t, ast.Name) and t.id.endswith("EVENTS") for t in targets):
                yield from _strings(node.value)


def unknown(trees: tuple[str, ...], key: str, known: frozenset[str] | tuple[str, ...],
            calls: dict[str, int]) -> list[str]:
    found = []
    for tree in trees:
        for path in sorted((ROOT / tree).rglob("*.py")):
            for const in literals(path.read_text(encoding="utf-8"), key, calls):
                if const.value not in known:
                    found.append(f"{path.relative_to(ROOT)}:{const.lineno}: {key} {const.value!r}")
    return found


def test_no_source_names_an_event_that_edgefleet_events_does_not_define() -> None:
    bad = unknown(EVENT_TREES, "event", events.EVENTS, _EVENT_CALLS)
    assert bad == [], "event names outside edgefleet/events.py:\n" + "\n".join(bad)


def test_the_agent_the_core_and_the_simulator_name_only_known_reason_codes() -> None:
    bad = unknown(REASON_TREES, "reason", events.REASONS, _REASON_CALLS)
    assert bad == [], "reason codes outside edgefleet/events.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("snippet", [
    'payload = {"device_id": d, "event": "health_check_failed"}',
    'publish(event="downloading")',
    'if doc["event"] == "commited": pass',
    'if message.get("event") in ("assigned", "rollback"): pass',
    'if step.event == "done": pass',
    'steps = [Step("finished", model, target, current)]',
    'PROGRESS_EVENTS = frozenset({"assigned", "fetched"})',
])
def test_the_scan_finds_a_misspelt_event_wherever_it_is_written(snippet: str) -> None:
    names = [c.value for c in literals(snippet, "event", _EVENT_CALLS)]
    assert [n for n in names if n not in events.EVENTS], f"the scan missed the bad name in {snippet!r}"


def test_the_scan_finds_a_drifted_reason() -> None:
    snippet = 'self._apply(Fail(now, "health_check_failed"))\nStep("failed", m, v, c, reason="tuf_gone")'
    assert sorted(str(c.value) for c in literals(snippet, "reason", _REASON_CALLS)) == ["health_check_failed", "tuf_gone"]


def test_event_payload_round_trips_and_validates_itself() -> None:
    event = events.UpdateEvent("dev-1", "e-1", 5.0, events.ROLLED_BACK, "digits", "1.1.0", 7, "ro-1",
                               events.PROBATION_FAILED, {"total_s": 3.0}, {"cause": "crash_loop"})
    assert events.UpdateEvent.from_dict(event.to_dict()) == event
    assert set(event.to_dict()) == {"device_id", "event_id", "ts", "event", "model", "version", "counter",
                                    "rollout_id", "reason", "timings", "details"}
    with pytest.raises(events.EventError, match="not one of"):
        events.UpdateEvent("dev-1", "e-1", 5.0, "health_check_failed")
    with pytest.raises(events.EventError, match="needs a reason"):
        events.UpdateEvent("dev-1", "e-1", 5.0, events.FAILED)
    with pytest.raises(events.EventError, match="malformed"):
        events.UpdateEvent.from_dict({"device_id": "d", "event_id": "e", "ts": "soon", "event": "assigned"})
    assert issubclass(events.EventError, EdgefleetError)


def test_outcomes_and_progress_split_the_events_and_retryable_reasons_are_reasons() -> None:
    assert set(events.EVENTS) == events.PROGRESS_EVENTS | events.OUTCOME_EVENTS
    assert not events.PROGRESS_EVENTS & events.OUTCOME_EVENTS
    assert events.RETRYABLE_REASONS <= events.UPDATE_REASONS
    assert events.is_retryable(events.DOWNLOAD_FAILED) and not events.is_retryable(events.HEALTH_FAILED)
