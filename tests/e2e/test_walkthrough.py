"""docs/walkthrough.md run as written, block by block, in one shell (issue 17; marked slow, run by
`scripts/bench --slow-tests`: it takes the walkthrough's own minutes).

Every ```bash block of the walkthrough is run in order in one bash process, in a scratch
directory, with this checkout's `.venv/bin` first on PATH (the walkthrough's own "or the
repository's .venv/bin on PATH"). What a person does by hand is done by the few substitutions
below, each named, and nothing else:

* `edgefleet server` (the walkthrough's "in another terminal") starts in the background on a free
  port, and the shell waits, polling, for its health check;
* the server's port 8080 and the agents' ports 8701-8703 become free ports, so the test can run
  beside others (EDGEFLEET_SERVER points the CLI there, as a person's cli.toml would);
* the one enrollment token a person copies from the screen (`--token=47FfnX4i...`) is taken
  from `devices enroll --json`, as the walkthrough's own loop for the other two devices does.

Then the story the walkthrough tells is checked on what the commands printed: the good rollout
completed (exit status 0 of `create --watch`), the broken one was rolled back with the health
check as the reason, every device serves 1.0.0, and `non-200 after first 200: 0`. No
traceback anywhere.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from simulation.fleet import free_port

REPO = Path(__file__).resolve().parents[2]
WALKTHROUGH = REPO / "docs" / "walkthrough.md"
VENV_BIN = REPO / ".venv" / "bin"
MARK = "=== block"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def adapt(block: str, server_port: int, agent_ports: list[int]) -> str:
    """The substitutions of the module docstring, each asserted to apply where the text expects it."""
    lines = []
    for line in block.splitlines():
        if re.match(r"^edgefleet server\b", line):
            line = (f"edgefleet server --port {server_port} > server.log 2>&1 &\n"
                    f"for _ in $(seq 600); do curl -sf http://127.0.0.1:{server_port}/healthz >/dev/null && "
                    "test -s edgefleet-data/admin-token && break; sleep 0.1; done")
        if "--token=47FfnX4i..." in line:
            line = line.replace("--token=47FfnX4i...", "--token=$(edgefleet devices enroll --profile generic-x86_64 "
                                "--label site=lab --json | python -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')")
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{server_port}")
        line = line.replace("--http-port 870$i", "--http-port ${AGENT_PORT[$i]}")
        line = line.replace("for port in 8701 8702 8703", "for port in " + " ".join(map(str, agent_ports)))
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.slow  # 2-5 minutes (more on a loaded machine): run by scripts/bench --slow-tests
@pytest.mark.timeout(1600)
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = bash_blocks(WALKTHROUGH.read_text())
    assert len(blocks) >= 9, "the walkthrough's bash blocks were not found"
    server_port = free_port()
    agent_ports = [free_port() for _ in range(3)]
    script = ["set -u", f"declare -A AGENT_PORT=([1]={agent_ports[0]} [2]={agent_ports[1]} [3]={agent_ports[2]})",
              # "Ctrl-C stops the loop, each agent and the server": the loop first (the last job),
              # so it never asks an agent that is already gone.
              "trap 'j=($(jobs -p)); kill ${j[-1]} 2>/dev/null; wait ${j[-1]}; kill ${j[@]} 2>/dev/null; wait' EXIT"]
    for i, block in enumerate(blocks):
        adapted = adapt(block, server_port, agent_ports)
        script += [f"echo '{MARK} {i}'", adapted, f"echo \"{MARK} {i} exit $?\""]
    assert any(f"--port {server_port}" in s for s in script), "no `edgefleet server` line was found to start"
    assert any("edgefleet devices enroll --profile generic-x86_64 --label site=lab --json" in s
               and "--state-dir pi-1" in s for s in script), "the copied token was not found in the walkthrough"
    assert all("8701" not in s and "127.0.0.1:8080" not in s for s in script)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "EDGEFLEET_SERVER": f"http://127.0.0.1:{server_port}"}
    env.pop("EDGEFLEET_TOKEN", None)
    transcript = tmp_path / "transcript.txt"  # the shell's output, read back whole (pipes would hold it)
    with transcript.open("w") as sink:
        shell = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, stdout=sink,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            shell.wait(timeout=1500)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
            raise AssertionError("the walkthrough did not finish in 1500 s:\n" + transcript.read_text()[-4000:]) from None
    out = transcript.read_text(errors="replace")
    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")) if p.name != "predictions.log")
    assert "Traceback" not in out + logs, out[-4000:] + logs[-4000:]
    exits = dict(re.findall(rf"{MARK} (\d+) exit (\d+)", out))
    assert len(exits) == len(blocks), out[-4000:]

    def block_with(words: str) -> str:
        return next(str(i) for i, b in enumerate(blocks) if words in b)

    good, broken = block_with("digits@1.0.0 --selector"), block_with("digits@2.0.0 --selector")
    assert exits[good] == "0", out[-4000:]  # create --watch: 0 only if it completed
    assert exits[broken] == "1", out[-4000:]  # ... and 1 for a rollout that did not
    story = out.split(f"{MARK} {broken}\n", 1)[1]
    assert "rolled_back" in story and "health_failed" in story, story[-3000:]
    listed = out.split(f"{MARK} {block_with('edgefleet agent status --state-dir pi-2')}\n", 1)[1]
    assert listed.count("digits@1.0.0") == 3, listed[-2000:]
    assert "non-200 after first 200: 0" in out, out[-3000:]
    answered = (tmp_path / "predictions.log").read_text().split("\n")
    assert sum(1 for line in answered if " 200 1.0.0" in line) > 10  # the loop really ran against 1.0.0
