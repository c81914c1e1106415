"""examples/ci/ run step by step, as github-actions.yml names the steps, against a real fleet (issue 17).

A real Mosquitto, ``edgefleet server`` and an enrolled agent (profile rpi4-64); the workflow's
steps that run ``release.sh`` are run here in the workflow's order, with the workflow's ``env``
and each step's own, ``${{ github.ref_name }}`` as a tag would give it and the two secrets set
to the server's URL and admin token. Only what this fleet needs differs, and is named: the
rollout goes to the profile the fleet has, one wave, no bake time.

Also: a model that misses its profile's proof (its size budget here) fails the convert step and\nleaves no bundle, so nothing is pushed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.stack import Stack

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "examples" / "ci"
VENV_BIN = REPO / ".venv" / "bin"
WORKFLOW = yaml.safe_load((CI / "github-actions.yml").read_text())
TAG = "v1.2.0"


def release_steps() -> list[dict[str, Any]]:
    steps = WORKFLOW["jobs"]["release"]["steps"]
    return [s for s in steps if "release.sh" in s.get("run", "")]


def expand(value: str, secrets: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression == "github.ref_name":
            return TAG
        if expression.startswith("secrets."):
            return secrets[expression.removeprefix("secrets.")]
        raise AssertionError(f"the test does not know ${{{{ {expression} }}}}")
    return re.sub(r"\$\{\{(.*?)\}\}", one, value)


def run_step(step: dict[str, Any], work: Path, secrets: dict[str, str],
             overrides: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    env |= {k: expand(str(v), secrets) for k, v in WORKFLOW.get("env", {}).items()}
    env |= {k: expand(str(v), secrets) for k, v in (step.get("env") or {}).items()}
    env |= {"WORK_DIR": str(work / "build"), **(overrides or {})}
    return subprocess.run(["sh", "-c", step["run"]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    fleet = Stack(tmp_path / "fleet")
    yield fleet
    fleet.close()


def test_workflow_and_script_name_the_same_steps() -> None:
    steps = release_steps()
    assert [s["name"] for s in steps] == ["train", "convert", "push", "rollout"]
    for step in steps:
        assert step["run"] == f"sh examples/ci/release.sh {step['name']}"
    for step in steps[2:]:  # what talks to the server reads it from the secrets
        assert step["env"]["EDGEFLEET_SERVER"] == "${{ secrets.EDGEFLEET_SERVER }}"
        assert step["env"]["EDGEFLEET_TOKEN"] == "${{ secrets.EDGEFLEET_TOKEN }}"
    assert WORKFLOW[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads the key `on` as True


def test_release_steps_against_a_real_fleet(stack: Stack, tmp_path: Path) -> None:
    agent, = stack.add_agents(1)
    secrets = {"EDGEFLEET_SERVER": stack.server.url, "EDGEFLEET_TOKEN": stack.server.admin_token}
    # The fleet here has rpi4-64 devices only: roll out to that profile, in one wave, without bake.
    fleet_only = {"PROFILES": "rpi4-64", "WAVES": "100", "BAKE": "0", "SELECTOR": "site=e2e"}
    build = tmp_path / "build"
    for step in release_steps():
        done = run_step(step, tmp_path, secrets, fleet_only if step["name"] == "rollout" else None)
        assert done.returncode == 0, f"step {step['name']} failed:\n{done.stdout}\n{done.stderr}"
        assert secrets["EDGEFLEET_TOKEN"] not in done.stdout + done.stderr  # the secret is never printed

    # convert and push made one bundle per profile of the workflow, named VERSION+PROFILE.
    pushed = {m["version"] for m in stack.admin.list_models("wine")}
    assert pushed == {"1.2.0+rpi4-64", "1.2.0+rpi5"}
    report = json.loads((build / "convert-rpi4-64.json").read_text())
    assert report["passed"] is True
    rollout = json.loads((build / "rollout-rpi4-64.json").read_text())
    assert rollout["policy"]["auto_rollback"] is True and rollout["policy"]["waves"] == [100.0]
    stack.wait_state(rollout["id"], "completed", timeout=180)
    device = stack.admin.show_device(agent.device_id)
    assert device["reported"]["models"]["wine"]["version"] == "1.2.0+rpi4-64"


def test_a_missed_proof_fails_the_convert_step(tmp_path: Path) -> None:
    steps = {s["name"]: s for s in release_steps()}
    done = run_step(steps["train"], tmp_path, {})
    assert done.returncode == 0, done.stderr
    # A profile this model cannot meet: its size budget is smaller than the model.
    strict = tmp_path / "strict.toml"
    profile = (REPO / "firmware_profiles" / "rpi4-64.toml").read_text().replace('name = "rpi4-64"', 'name = "strict"')
    strict.write_text(re.sub(r"max_model_bytes = [0-9]+", "max_model_bytes = 1000", profile))
    done = run_step(steps["convert"], tmp_path, {}, {"PROFILES": str(strict)})
    assert done.returncode != 0
    assert "misses profile strict" in done.stderr and "Traceback" not in done.stderr
    report = json.loads((tmp_path / "build" / "convert-strict.json").read_text())
    assert report["passed"] is False and "max_model_bytes 1000" in report["failures"][0]
    assert not list((tmp_path / "build").glob("bundles/**/*.tar.gz"))
