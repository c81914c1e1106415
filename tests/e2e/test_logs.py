"""Logs as an operator reads them (issue 17), from real processes: a server, Mosquitto and two agents.

- The agent applies ``log_level`` from agent.toml: one at INFO tells its update, one at ERROR
  says nothing below ERROR (neither gets ``-v``).
- ``EDGEFLEET_LOG_FORMAT=json``: every line of that agent is one JSON object; the update is
  told in one line per state, in order, each carrying device id, model, version and rollout id.
- The server's log is in edgefleet's one format, uvicorn's lines included (no ``INFO:     ``).
"""

from __future__ import annotations

import json

from tests.e2e.stack import Stack

STORY = ["assigned", "downloading", "verified", "staged", "health_check", "activated", "committed"]


def test_agent_tells_an_update_one_line_per_state(stack: Stack) -> None:
    talker, = stack.add_agents(1, settings={"log_level": "INFO"}, env={"EDGEFLEET_LOG_FORMAT": "json"})
    quiet, = stack.add_agents(1, settings={"log_level": "ERROR"})
    stack.push("1.0.0")
    rollout = stack.rollout("1.0.0")
    stack.wait_state(rollout["id"], "completed")

    assert talker.child is not None and quiet.child is not None
    lines = [json.loads(line) for line in talker.child.log().splitlines() if line.strip()]  # every line is JSON
    assert any(line["message"].startswith("agent ready") for line in lines)
    story = [line for line in lines if line["message"].startswith("update of digits 1.0.0: ")]
    assert [line["message"].rsplit(": ", 1)[1] for line in story] == STORY
    for line in story:
        assert line["level"] == "INFO"
        assert (line["device_id"], line["model"], line["version"], line["rollout_id"]) == \
            (talker.device_id, "digits", "1.0.0", rollout["id"])

    quiet_log = quiet.child.log()
    assert " INFO " not in quiet_log and " WARNING " not in quiet_log and "update of digits" not in quiet_log

    server_log = stack.server.child.log() if stack.server.child is not None else ""
    assert "INFO:     " not in server_log
    assert " INFO uvicorn.error: Uvicorn running on" in server_log or " INFO uvicorn.error: Application startup" \
        in server_log
