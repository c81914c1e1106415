"""``edgefleet agent ...`` errors: one plain line, or with ``--json`` one problem document; never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "code", "kind", "words"), [
    (["agent", "predict", "--model", "nope", "--input", "rows.csv", "--output", "out.csv"], 1,
     "urn:edgefleet:problem:state", "no active slot"),
    (["agent", "install", "missing-1.0.0.tar.gz", "--profile", "generic-x86_64"], 1, None, "missing-1.0.0.tar.gz"),
    (["agent", "enroll", "--server", "http://127.0.0.1:9", "--token=t0ken"], 1,
     "urn:edgefleet:problem:enrollment", "127.0.0.1:9"),
    (["agent", "run", "--no-mqtt"], 1, "urn:edgefleet:problem:state", "firmware profile"),
    (["agent", "run", "--http-port", "eighty"], 2, None, "eighty"),
])
def test_agent_errors_are_problem_documents_with_json_and_one_line_without(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], code: int, kind: str | None,
        words: str) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    exit_code, out, err = _run(capsys, *argv, *state, "--json")
    assert exit_code == code and out == "", (out, err)
    [line] = err.splitlines()
    problem = json.loads(line)
    assert {"type", "title", "detail", "fix"} <= set(problem) and words in problem["detail"], problem
    assert kind is None or problem["type"] == kind, problem
    exit_code, out, err = _run(capsys, *argv, *state)
    assert exit_code == code and "Traceback" not in err and words in err
    assert len(err.strip().splitlines()) == 1 or code == 2  # argparse prints its usage line first


def test_status_says_when_the_broker_refuses_the_subscriptions() -> None:
    from agent.cli import _mqtt_line

    base = {"connected": True, "broker": "b:1883"}
    assert _mqtt_line(base) == "connected (b:1883)"  # a daemon from before the SUBACK checks
    assert _mqtt_line({**base, "subscribed": True, "suback_refusals": 0}) == "connected (b:1883)"
    assert "not subscribed: the broker refused 3 SUBACK(s)" in _mqtt_line({**base, "subscribed": False,
                                                                           "suback_refusals": 3})
    assert _mqtt_line({**base, "subscribed": True, "suback_refusals": 2}).endswith("2 SUBACK refusal(s) since start")
