"""`edgefleet agent predict` on the DataFrame pipeline bundle, as a user runs it (issue 12): the
converter's own validation CSV (a label column it skips, "region" as text) and the same rows as
Parquet give the answers the converter's in-process ONNX run gives."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.integration.agent.harness import cli, dev_state
from tests.integration.agent.test_records import bundle, converter_answers, records
from tests.support.bundles import example


def test_agent_predict_reads_the_pipelines_csv_and_parquet_by_column_name(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    installed = cli("agent", "install", str(bundle()), "--state-dir", str(state.path), "--json")
    assert installed.returncode == 0, installed.stderr
    labels, _ = converter_answers(records(45))
    csv_file = example("wine-pipeline").validation_csv
    parquet_file = tmp_path / "rows.parquet"
    frame = pd.read_csv(csv_file, dtype={"region": object})
    frame[list(reversed(frame.columns))].to_parquet(parquet_file)  # another column order: names decide
    for source in (csv_file, parquet_file):
        out = tmp_path / f"{source.stem}.jsonl"
        ran = cli("agent", "predict", "--model", "wine", "--input", str(source), "--output", str(out),
                  "--state-dir", str(state.path), "--json")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout.splitlines()[-1])["rows"] == 45
        assert [json.loads(line)["prediction"] for line in out.read_text().splitlines()] == labels

    npy = tmp_path / "rows.npy"
    npy.write_bytes(b"")
    refused = cli("agent", "predict", "--model", "wine", "--input", str(npy), "--output", str(tmp_path / "x.csv"),
                  "--state-dir", str(state.path))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "an .npy array has no column names" in refused.stderr
