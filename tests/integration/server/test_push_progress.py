"""``edgefleet models push`` shows upload progress on a terminal and none with --json or redirected (issue 17).

The command runs as a process whose stderr is a pseudo-terminal (the terminal case) or a pipe,
against a real server.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.fleet import edgefleet_argv
from tests.integration.server.harness import RunningServer, make_bundle, server_config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    config = server_config(tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite")
    with RunningServer(config, mqtt=False) as running:
        yield running


def push(server: RunningServer, bundle: Path, *flags: str, tty: bool) -> tuple[int, str, str]:
    argv = edgefleet_argv("models", "push", str(bundle), "--server", server.url, "--token", "test-admin-token", *flags)
    if not tty:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read() if proc.stdout is not None else b""
        return proc.wait(60), out.decode(), err.decode(errors="replace")
    finally:
        os.close(master)


def test_push_shows_progress_on_a_terminal(server: RunningServer, tmp_path: Path) -> None:
    bundle = tmp_path / "digits-1.0.0.tar.gz"
    bundle.write_bytes(make_bundle("digits", "1.0.0"))
    code, out, err = push(server, bundle, tty=True)
    assert code == 0, err
    assert "pushing digits-1.0.0.tar.gz" in err and "100.0%" in err
    assert "digits@1.0.0 published" in out


def test_push_is_quiet_with_json_or_without_a_terminal(server: RunningServer, tmp_path: Path) -> None:
    bundle = tmp_path / "digits-1.0.0.tar.gz"
    bundle.write_bytes(make_bundle("digits", "1.0.0"))
    code, out, err = push(server, bundle, "--json", tty=True)
    assert code == 0, err
    assert "pushing" not in err and "%" not in err
    assert json.loads(out)["version"] == "1.0.0"
    code, out, err = push(server, bundle, tty=False)
    assert code == 0 and "pushing" not in err and "already published" in out
