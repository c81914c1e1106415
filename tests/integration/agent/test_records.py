"""A DataFrame pipeline with a string column on a real agent (issue 12, slice 1): the converter's
schema-2 bundle installs (its health check runs golden samples by input name), and the agent
answers named records exactly as the converter's in-process ONNX run does; an unseen category
is answered, a string in a numeric column is a 400 naming the column."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from converter.predictors import OnnxPredictor
from edgefleet.bundle import read_bundle
from edgefleet.inputs import to_feeds
from edgefleet.profiles import load_profile
from tests.integration.agent.harness import AgentProcess, cli, dev_state
from tests.support.bundles import example

KIND = "wine-pipeline"


@functools.cache
def bundle() -> Path:
    files = example(KIND)
    out = Path(tempfile.mkdtemp(prefix="edgefleet-agent-records-"))
    return convert(ConvertOptions(files.model_path, "generic-x86_64", "wine", "1.0.0", out, quantize="none",
                                  validation=files.validation_csv, labels=files.labels_column)).bundle_path


def records(count: int = 12) -> list[dict[str, Any]]:
    frame = pd.read_csv(example(KIND).validation_csv, dtype={"region": object}).drop(columns=["label"])
    return [{k: (float(v) if k != "region" else v) for k, v in row.items()} for row in frame.head(count).to_dict("records")]


def converter_answers(rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray]:
    """The converted model run in this process by the converter's own predictor."""
    loaded = read_bundle(bundle())
    predictor = OnnxPredictor(loaded.model_bytes, {o.name: o.role for o in loaded.manifest.outputs})
    outputs = predictor.predict(to_feeds({"instances": rows}, loaded.manifest.inputs))
    assert outputs.labels is not None and outputs.probabilities is not None
    return outputs.labels.tolist(), np.asarray(outputs.probabilities)


def test_the_serving_table_answers_records_and_the_golden_feeds(tmp_path: Path) -> None:
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle()))
    session = load_session(slot, load_profile("generic-x86_64"))
    golden = slot.golden()
    table = ServingTable()
    table.swap("wine", session)
    n = len(golden["inputs"]["region"])
    rows = [{name: column[i][0] for name, column in golden["inputs"].items()} for i in range(n)]
    assert table.predict("wine", {"instances": rows}).predictions == golden["outputs"]["label"]
    feeds = {name: np.asarray(column, dtype=object if name == "region" else np.float32)
             for name, column in golden["inputs"].items()}
    assert session.run_feeds(feeds)["label"].tolist() == golden["outputs"]["label"]


def test_the_agent_answers_named_records_as_the_converter_does(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    installed = cli("agent", "install", str(bundle()), "--state-dir", str(state.path), "--json")
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout.splitlines()[-1])["version"] == "1.0.0"  # its health check passed
    rows = records()
    labels, probabilities = converter_answers(rows)
    with AgentProcess(state.path, "--no-mqtt") as agent:
        url = f"{agent.url}/v1/models/wine/predict"
        answer = httpx.post(url, json={"instances": rows}, timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["predictions"] == labels
        np.testing.assert_allclose(body["probabilities"], probabilities, rtol=0, atol=1e-6)

        unseen = httpx.post(url, json={"instances": [{**rows[0], "region": "south"}]}, timeout=10)
        assert unseen.status_code == 200, unseen.text
        assert unseen.json()["predictions"][0] in (0, 1, 2)

        bad = httpx.post(url, json={"instances": [rows[0], {**rows[1], "alcohol": "13.2"}]}, timeout=10)
        assert bad.status_code == 400
        error = bad.json()
        assert "instances[1].alcohol is str '13.2', not a number" in error["detail"] and error["fix"]

        number = httpx.post(url, json={"instances": [{**rows[0], "region": 3}]}, timeout=10)
        assert number.status_code == 400 and "column 'region' takes strings" in number.json()["detail"]

        described = httpx.get(f"{agent.url}/v1/models/wine", timeout=10).json()
        region = next(i for i in described["inputs"] if i["name"] == "region")
        assert described["input"] is None and region["categories"] == ["east", "north", "west"]
