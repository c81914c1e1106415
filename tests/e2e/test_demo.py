"""The main job: `edgefleet demo --devices 4 --json` as a subprocess tells the whole story."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.support import REPO, edgefleet, last_json_line, processes_mentioning

# The story converts a TFLite bundle and prefers Mosquitto (found on this machine).
pytestmark = [pytest.mark.mosquitto, pytest.mark.tflite]


class Story(NamedTuple):
    data: Path
    done: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    """The whole story, run once for the module: its models are the next test's to reuse."""
    data = tmp_path_factory.mktemp("story") / "demo"
    return Story(data, edgefleet("demo", "--devices", "4", "--json", "--data-dir", str(data), timeout=300))


def test_demo_tells_the_whole_story_and_leaves_no_process(story: Story) -> None:
    data, done = story
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["ok"] is True
    assert [s["ok"] for s in summary["steps"]] == [True] * 6
    assert summary["failed_requests"] == 0 and summary["requests"] > 50
    # Each device serves two models: the digits and a pipeline on the Pis, the digits and a camera on the Jetsons.
    assert summary["devices_by_version"] == {"digits@3.0.0": 2, "digits-lite@3.0.0": 2, "wine@1.0.0": 2,
                                             "camera@1.0.0": 2}
    convert, fleet, v1, v2, v3, v4 = summary["steps"]
    assert {(b["model"], b["profile"], b["format"], b["quantize"], b["inputs"]) for b in convert["bundles"]} == {
        ("digits", "rpi4-64", "onnx", "int8-static", "tensor"), ("wine", "rpi4-64", "onnx", "none", "columns"),
        ("digits-lite", "jetson-orin-nano", "tflite", "int8", "tensor"),
        ("camera", "jetson-orin-nano", "tflite", "int8", "image")}
    # Every model answered in its own form: PNG pictures to the camera, named records to the pipeline.
    by_model = summary["requests_by_model"]
    assert {name: m["form"] for name, m in by_model.items()} == {
        "digits": "rows", "digits-lite": "rows", "wine": "records", "camera": "image/png"}
    assert all(m["ok"] > 0 and m["failed"] == 0 for m in by_model.values()), by_model
    assert fleet["profiles"] == {"rpi4-64": 2, "jetson-orin-nano": 2}
    assert all(r["state"] == "completed" and len(r["waves"]) == 2 for r in v1["rollouts"])
    assert {r["model"] for r in v1["rollouts"]} == {"digits", "digits-lite", "wine", "camera"}
    assert v1["devices_by_version"] == {"digits@1.0.0": 2, "digits-lite@1.0.0": 2, "wine@1.0.0": 2,
                                        "camera@1.0.0": 2}
    # The broken version: the first wave failed its health check, the rollout halted and rolled back.
    assert v2["rollout"]["state"] == "rolled_back" and "failed" in v2["rollout"]["halt_reason"]
    assert v2["touched"] == 1 and v2["untouched"] == 1
    assert v2["devices_by_version"] == v1["devices_by_version"]
    # Drift: the server scores the shifted site as drifted and the drift rule fired for it.
    assert v3["drift"]["by_site"]["site=b"]["band"] == "drift"
    assert any("site=b" in a["subject"] for a in v3["drift"]["alerts"])
    assert all(r["state"] == "completed" for r in v3["rollouts"])
    # Shadow (issue 18): the version trained on shifted data passed its golden samples on wave 1's device,
    # then disagreed with 3.0.0 on the live requests: halted with the agreement as the reason, nobody switched.
    assert v4["rollout"]["state"] == "halted" and v4["rollout"]["halt_reason"].startswith("shadow agreement")
    assert v4["golden_samples_passed"] == 1 and v4["stage"]["agreement"] < 0.5 and v4["stage"]["requests"] >= 50
    assert v4["devices_by_version"] == summary["devices_by_version"]
    assert summary["broker"] == "mosquitto"  # found on this machine, so the ACL was enforced
    assert (data / "mosquitto" / "acl").read_text().count("topic") >= 4 * 5
    assert processes_mentioning(str(data)) == []


def test_ctrl_c_stops_every_process_it_started(tmp_path: Path, story: Story) -> None:
    data = tmp_path / "demo"
    # What is stopped here are the processes; converting the models again would prove nothing new.
    # A --data-dir holding an earlier run's models reuses them (simulation.bundles.DemoModels).
    if story.done.returncode == 0:  # else this test converts on its own, as before
        shutil.copytree(story.data / "models", data / "models")
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "demo", "--devices", "4", "--data-dir", str(data)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "agents enrolled and online" in line:
            break
        assert time.monotonic() < deadline, "the demo never got its agents online:\n" + "".join(seen[-40:])
    else:
        pytest.fail(f"the demo exited ({proc.wait()}) before its agents were online:\n" + "".join(seen[-60:]))
    assert story.done.returncode != 0 or "reused the bundle an earlier run" in "".join(seen), "".join(seen[-60:])
    started = processes_mentioning(str(data))
    assert len(started) >= 6, started  # broker, server, four agents
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert processes_mentioning(str(data)) == []
