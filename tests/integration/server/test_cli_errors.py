"""CLI errors (issue 14): one line and never a traceback; with --json, one problem document on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.cli import main
from simulation.fleet import free_port
from tests.integration.server.harness import RunningServer, server_config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with RunningServer(server_config(tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite"), mqtt=False) as running:
        yield running


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _problem(err: str) -> dict[str, Any]:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    document: dict[str, Any] = json.loads(lines[0])
    assert {"type", "title", "detail", "fix"} <= set(document)
    return document


def test_a_server_refusal_is_the_servers_problem_with_json(capsys: pytest.CaptureFixture[str],
                                                           server: RunningServer) -> None:
    flags = ["--server", server.url, "--token", "test-admin-token"]
    code, out, err = _run(capsys, "devices", "show", "dev-nope", *flags, "--json")
    problem = _problem(err)
    assert code == 1 and out == ""
    assert problem["status"] == 404 and problem["type"] == "urn:edgefleet:problem:not-found"
    code, _, err = _run(capsys, "models", "show", "digits@1.0.0", "--server", server.url, "--token", "wrong", "--json")
    assert code == 1 and _problem(err)["status"] == 401 and "DATA_DIR/admin-token" in _problem(err)["fix"]
    code, _, err = _run(capsys, "devices", "enroll", "--profile", "no-such-profile", *flags, "--json")
    assert code == 1 and _problem(err)["detail"].startswith("profile:")
    code, _, err = _run(capsys, "devices", "show", "dev-nope", *flags)  # without --json: one plain line
    assert code == 1 and err.startswith("edgefleet: error: ") and err.count("\n") == 1


def test_unreachable_server_and_bad_arguments_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "devices", "list", "--server", f"http://127.0.0.1:{free_port()}", "--json")
    assert code == 1 and _problem(err)["type"] == "urn:edgefleet:problem:client" and "status" not in _problem(err)
    code, _, err = _run(capsys, "devices", "list", "--json", "--no-such-flag")
    assert code == 2 and _problem(err)["type"] == "urn:edgefleet:problem:usage"
    code, _, err = _run(capsys, "devices", "enroll", "--profile", "rpi4-64", "--ttl", "soon", "--json")
    assert code == 2 and "soon" in _problem(err)["detail"]
    code, _, err = _run(capsys, "models", "show", "not-a-ref", "--json")
    assert code == 1 and "NAME@VERSION" in _problem(err)["fix"]
    code, _, err = _run(capsys, "devices", "list", "--no-such-flag")  # without --json: argparse's usage lines
    assert code == 2 and "usage:" in err and "--no-such-flag" in err
