"""Converter-made ONNX bundles on the agent: its outputs agree with the converter's report
(tests/unit/agent/parity.py says how); the converter's int8 TFLite bundle is checked the same
way in tests/unit/agent/test_tflite.py, under both TFLite runtimes."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

from agent.install import InstallError, install_bundle
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from tests.support.bundles import make_broken_bundle, make_onnx_bundle
from tests.unit.agent.parity import assert_reproduces_report


@functools.cache
def bundle(kind: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"edgefleet-agent-parity-{kind}-"))
    maker = {"onnx": make_onnx_bundle, "broken": make_broken_bundle}[kind]
    return maker(directory)


def staged(tmp_path: Path, kind: str) -> Slot:
    return ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle(kind)))


def test_agent_reproduces_the_converters_report(tmp_path: Path) -> None:
    slot = staged(tmp_path, "onnx")
    assert_reproduces_report(slot, load_session(slot, load_profile(slot.manifest.profiles[0])))


def test_predictions_over_the_serving_table_match_the_session(tmp_path: Path) -> None:
    slot = staged(tmp_path, "onnx")
    golden = slot.golden()
    table = ServingTable()
    table.swap("digits", load_session(slot, load_profile("generic-x86_64")))
    names = slot.manifest.input.feature_names or ()
    first = dict(zip(names, golden["inputs"][0], strict=True))
    by_rows = table.predict("digits", {"inputs": golden["inputs"]})
    by_name = table.predict("digits", {"instances": [first]})
    assert by_rows.predictions == golden["outputs"]["label"]
    assert by_name.predictions == by_rows.predictions[:1]


def test_a_bundle_whose_golden_samples_disagree_is_not_installed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    with pytest.raises(InstallError, match="failed its health check"):
        install_bundle(state, bundle("broken"), load_profile("generic-x86_64"), latency_runs=5)
    assert ModelStore(state).models() == []
