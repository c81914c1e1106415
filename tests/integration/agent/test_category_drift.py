"""An unseen category on a real agent shows in the drift it reports (issue 12): the converter's
DataFrame pipeline bundle (string column "region") serves named records on a real agent process
connected to a real Mosquitto; the telemetry batches a plain subscriber decodes count the unseen
"south" in region's last drift count, and the agent's status names region as the drifting feature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.bundle import read_bundle
from edgefleet.telemetry import UNSEEN, ReferenceProfile
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import eventually
from tests.integration.agent.test_records import bundle, records
from tests.integration.agent.test_telemetry import Batches, start_agent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(None, tmp_path / "mosquitto", auth=False, persistence=True) as running:
        yield running


def test_an_unseen_category_is_answered_and_counted_in_the_drift_the_agent_reports(
        tmp_path: Path, broker: MosquittoProcess) -> None:
    reference = ReferenceProfile.from_dict(read_bundle(bundle()).reference())
    region = reference.feature_names.index("region")
    assert reference.features[region].bin_names[-1] == UNSEEN
    like_training = records(45)  # the validation rows the reference was counted on
    unseen = [{**row, "region": "south"} for row in like_training]
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, bundle(), broker)
    try:
        url = f"{agent.url}/v1/models/wine/predict"
        for rows in (like_training, unseen):
            answer = httpx.post(url, json={"instances": rows}, timeout=10)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == 45

        def drift_counts() -> list[list[int]] | None:
            per_feature = [[0] * f.bins for f in reference.features]
            for batch in batches.unique():
                for record in batch.models:
                    if record.model == "wine":
                        for i, counts in enumerate(record.drift):
                            per_feature[i] = [a + b for a, b in zip(per_feature[i], counts, strict=True)]
            return per_feature if sum(per_feature[region]) == 90 else None

        counts = eventually(drift_counts, timeout=30)
        assert counts is not None, f"the agent's telemetry did not count 90 rows:\n{agent.log()}"
        assert counts[region][-1] == 45  # every "south" in the unseen count
        assert counts[region][:-1] == list(reference.features[region].counts[:-1])  # the first 45, as counted
        assert all(sum(c) == 90 for c in counts)  # every row counted once in every feature

        status = httpx.get(f"{agent.url}/v1/status", timeout=5).json()
        (model,) = [m for m in status["models"] if m["name"] == "wine"]
        assert model["drift"]["rows"] == 90 and model["drift"]["feature"] == "region"
        assert model["drift"]["band"] == "drift"
    finally:
        agent.terminate()
        batches.close()
