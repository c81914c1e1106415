"""TFLite bundles on the agent: float32 and full-integer int8, real interpreters, real numbers out.

Runs with ai_edge_litert here, and with tflite_runtime 2.14 + numpy<2 in the second environment
that scripts/test-tflite-runtime builds (bundles prebuilt there: no TensorFlow in that venv).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from agent.errors import InferenceError
from agent.health import check_health
from agent.runtime import ModelSession, load_session, tflite_interpreter_class
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile, load_profile
from tests.unit.agent.models import LABELS, linear_probabilities
from tests.unit.agent.parity import assert_reproduces_report
from tests.unit.agent.tflite_models import bundle_bytes

pytestmark = pytest.mark.tflite

ROWS = np.random.default_rng(5).normal(size=(64, 4)).astype(np.float32)


@functools.lru_cache(maxsize=3)
def cached(kind: str) -> bytes:
    return bundle_bytes(kind)


def staged(state: StateDir, kind: str) -> Slot:
    return ModelStore(state).stage(read_bundle(cached(kind)))


def session(state: StateDir, profile: Profile, kind: str) -> ModelSession:
    return load_session(staged(state, kind), profile)


def test_float32_matches_the_original_model(state: StateDir, profile: Profile) -> None:
    s = session(state, profile, "float32")
    roles = s.run_roles(ROWS)
    expected = linear_probabilities(ROWS, 0)
    np.testing.assert_allclose(roles["probabilities"], expected, atol=1e-5)
    assert roles["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]
    forced = os.environ.get("EDGEFLEET_TFLITE_RUNTIME")
    assert s.runtime == (forced or "ai_edge_litert") and s.providers == (s.runtime,)


def test_int8_model_takes_and_gives_real_numbers(state: StateDir, profile: Profile) -> None:
    slot = staged(state, "int8")
    assert slot.manifest.input.dtype == "int8" and slot.manifest.input.quantization is not None
    s = load_session(slot, profile)
    roles = s.run_roles(ROWS)
    probs = roles["probabilities"]
    assert probs.dtype == np.float32 and probs.shape == (64, 3)
    assert (probs >= 0).all() and (probs <= 1.0001).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.03)  # dequantized, not raw int8 codes
    np.testing.assert_allclose(probs, linear_probabilities(ROWS, 0), atol=0.05)
    agreement = np.mean(roles["label"] == np.array(LABELS)[linear_probabilities(ROWS, 0).argmax(axis=1)])
    assert agreement >= 0.9


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_golden_samples_pass_the_health_check(state: StateDir, profile: Profile, kind: str) -> None:
    slot = staged(state, kind)
    report = check_health(load_session(slot, profile), slot.manifest, slot.golden(), latency_runs=10)
    assert report.passed, report.message
    assert report.agreement is not None and report.agreement >= slot.manifest.health_check.min_agreement


def test_the_converters_int8_bundle_reproduces_its_report(state: StateDir) -> None:
    slot = staged(state, "converter")
    assert slot.manifest.input.dtype == "int8" and slot.manifest.format == "tflite"
    assert_reproduces_report(slot, load_session(slot, load_profile(slot.manifest.profiles[0])))


def test_batches_of_any_size_and_one_row(state: StateDir, profile: Profile) -> None:
    s = session(state, profile, "int8")
    for n in (1, 7, 1, 64):
        assert s.run_roles(ROWS[:n])["probabilities"].shape == (n, 3)


def test_concurrent_calls_are_serialized_safely(state: StateDir, profile: Profile) -> None:
    from concurrent.futures import ThreadPoolExecutor

    s = session(state, profile, "float32")
    expected = s.run_roles(ROWS)["probabilities"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: s.run_roles(ROWS[:n])["probabilities"], [64, 3, 64, 9, 64, 1] * 3))
    for result in results:
        np.testing.assert_allclose(result, expected[: len(result)], atol=1e-6)


def test_a_missing_interpreter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_TFLITE_RUNTIME", "no_such_runtime")
    with pytest.raises(InferenceError) as caught:
        tflite_interpreter_class()
    assert "no_such_runtime" in caught.value.message and "edgefleet[litert]" in str(caught.value.fix)


def test_a_corrupt_tflite_model_is_an_inference_error(state: StateDir, profile: Profile) -> None:
    slot = staged(state, "float32")
    slot.model_path.write_bytes(b"\x00" * 64)
    with pytest.raises(InferenceError, match="cannot load iris@1.0.0"):
        load_session(slot, profile)
