"""ONNX Runtime sessions: outputs by role, execution-provider fallback, threads from the profile."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from agent.errors import InferenceError
from agent.runtime import choose_providers, load_session, roles_from_outputs
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile
from tests.unit.agent.models import LABELS, BundleMaker, linear_probabilities


def staged(state: StateDir, data: bytes) -> Slot:
    return ModelStore(state).stage(read_bundle(data))


def test_classifier_gives_probabilities_and_labels_by_argmax(state: StateDir, profile: Profile,
                                                             linear_bundle: BundleMaker) -> None:
    session = load_session(staged(state, linear_bundle()), profile)
    x = np.random.default_rng(7).normal(size=(64, 4)).astype(np.float32)
    roles = session.run_roles(x)
    expected = linear_probabilities(x, 0)
    np.testing.assert_allclose(roles["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert roles["probabilities"].shape == (64, 3) and roles["probabilities"].dtype == np.float32
    assert roles["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]
    assert session.providers == ("CPUExecutionProvider",) and session.runtime == "onnxruntime"
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run_roles(x)


def test_missing_providers_fall_back_with_one_log_line_each(state: StateDir, profile: Profile,
                                                           linear_bundle: BundleMaker,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    wanted = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider")
    jetson_like = dataclasses.replace(profile, execution_providers=wanted, intra_op_threads=1)
    with caplog.at_level(logging.WARNING, logger="agent.runtime"):
        session = load_session(staged(state, linear_bundle()), jetson_like)
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.runtime"]
    assert len(lines) == 3, lines
    for provider, line in zip(wanted[:3], lines, strict=True):
        assert provider in line and "falling back to" in line
    assert lines[-1].endswith("falling back to CPUExecutionProvider")
    assert session.providers == ("CPUExecutionProvider",)
    assert session.run_roles(np.zeros((1, 4), np.float32))["probabilities"].shape == (1, 3)


def test_provider_choice_keeps_order_and_always_ends_on_the_cpu() -> None:
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]) == (
        ["CPUExecutionProvider"], ["CUDAExecutionProvider"])
    assert choose_providers(["XnnpackExecutionProvider"], ["XnnpackExecutionProvider", "CPUExecutionProvider"]) == (
        ["XnnpackExecutionProvider", "CPUExecutionProvider"], [])


def test_a_corrupt_model_is_an_inference_error(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> None:
    slot = staged(state, linear_bundle())
    slot.model_path.write_bytes(b"not onnx")  # bypasses the slot check on purpose: the runtime must still not crash
    with pytest.raises(InferenceError, match="onnxruntime cannot load iris@1.0.0"):
        load_session(slot, profile)


def test_wrong_width_at_the_runtime_is_an_inference_error(state: StateDir, profile: Profile,
                                                          linear_bundle: BundleMaker) -> None:
    session = load_session(staged(state, linear_bundle()), profile)
    with pytest.raises(InferenceError, match="failed to run"):
        session.run_roles(np.zeros((2, 5), np.float32))


def test_regression_values_are_flat_float32(state: StateDir, linear_bundle: BundleMaker) -> None:
    manifest = dataclasses.replace(read_bundle(linear_bundle()).manifest, task="regression", class_labels=None,
                                   outputs=(dataclasses.replace(read_bundle(linear_bundle()).manifest.outputs[0],
                                                                name="v", role="value"),))
    out = roles_from_outputs(manifest, {"v": np.arange(3, dtype=np.float64).reshape(3, 1)}, 3)
    assert out["value"].dtype == np.float32 and out["value"].tolist() == [0.0, 1.0, 2.0]
