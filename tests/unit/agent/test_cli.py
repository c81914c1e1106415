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
