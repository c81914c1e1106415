"""The server's predict path for a model with named column inputs (issue 12): the same records
the agent takes give the same answers, and the same refusals (422 where the agent says 400)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from edgefleet.bundle import Bundle, read_bundle
from edgefleet.errors import InputError
from edgefleet.profiles import load_profile
from fleet_server.registry.predict import PredictInputError, Predictor, parse_feeds
from tests.support.bundles import example

KIND = "wine-pipeline"


@functools.cache
def bundle() -> Bundle:
    files = example(KIND)
    out = Path(tempfile.mkdtemp(prefix="edgefleet-server-records-"))
    path = convert(ConvertOptions(files.model_path, "generic-x86_64", "wine", "1.0.0", out, quantize="none",
                                  validation=files.validation_csv, labels=files.labels_column)).bundle_path
    return read_bundle(path)


class _OneBundle:
    """The registry's bundle cache, holding one bundle (the seam Predictor reads bundles through)."""

    def latest(self, name: str) -> str:
        return "1.0.0"

    def get(self, name: str, version: str) -> Bundle:
        return bundle()


def records(count: int = 8) -> list[dict[str, Any]]:
    frame = pd.read_csv(example(KIND).validation_csv, dtype={"region": object}).drop(columns=["label"])
    return [{k: (float(v) if k != "region" else v) for k, v in row.items()} for row in frame.head(count).to_dict("records")]


@pytest.fixture(scope="module")
def agent_table() -> ServingTable:
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-server-records-agent-"))
    slot = ModelStore(StateDir(directory / "state").ensure()).stage(bundle())
    table = ServingTable()
    table.swap("wine", load_session(slot, load_profile("generic-x86_64")))
    return table


def test_server_and_agent_answer_the_same_records_alike(agent_table: ServingTable) -> None:
    rows = records()
    rows[3] = {**rows[3], "region": "south"}  # an unseen category is answered on both sides
    predictor = Predictor(_OneBundle())  # type: ignore[arg-type]
    manifest = predictor.manifest("wine", "1.0.0")
    server = predictor.predict("wine", "1.0.0", parse_feeds({"instances": rows}, manifest.inputs))
    agent = agent_table.predict("wine", {"instances": rows})
    assert server.predictions == agent.predictions and len(server.predictions) == len(rows)
    assert server.probabilities is not None and agent.probabilities is not None
    np.testing.assert_allclose(server.probabilities, agent.probabilities, atol=1e-6)


@pytest.mark.parametrize("change", [{"alcohol": "13.2"}, {"region": 3}, {"colour": "red"}])
def test_server_and_agent_refuse_the_same_records_alike(agent_table: ServingTable, change: dict[str, Any]) -> None:
    body = {"instances": [records(1)[0] | change]}
    with pytest.raises(InputError) as agent:
        agent_table.predict("wine", body)
    with pytest.raises(PredictInputError) as server:
        parse_feeds(body, bundle().manifest.inputs)
    assert agent.value.status == 400 and server.value.status_code == 422
    assert (agent.value.message, agent.value.fix) == (server.value.message, server.value.fix)
