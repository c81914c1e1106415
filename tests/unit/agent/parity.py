"""Parity of the agent's outputs with a converter's report (numpy only, so the tflite-runtime
environment can use it too).

The converter measured agreement and the worst probability error against the ORIGINAL model
on its validation rows and wrote them into the manifest's report; golden samples are the
original model's outputs. The agent, running the bundle with its own runtime code (provider
choice, int8 quantize and dequantize), must reproduce them within what the report claims.
"""

from __future__ import annotations

import numpy as np

from agent.runtime import ModelSession
from agent.slots import Slot


def assert_reproduces_report(slot: Slot, session: ModelSession) -> None:
    manifest, golden = slot.manifest, slot.golden()
    x = np.asarray(golden["inputs"], dtype=np.float32)
    roles = session.run_roles(x)
    labels = np.asarray(golden["outputs"]["label"])
    agreement = float(np.mean(roles["label"].astype(labels.dtype) == labels))
    report = manifest.report
    assert agreement >= manifest.health_check.min_agreement
    assert agreement >= min(1.0, float(report["agreement"])) - 1 / len(x)  # one row of slack on a small sample
    probs = roles["probabilities"]
    assert probs.dtype == np.float32 and probs.shape == (len(x), len(manifest.class_labels or ()))
    worst = float(np.max(np.abs(probs - np.asarray(golden["outputs"]["probabilities"], dtype=np.float32))))
    assert worst <= float(report["max_abs_error"]) + 1e-5, (worst, report["max_abs_error"])
