"""The proof that a converted model still works: pure comparisons and the tolerance check.

Inputs are two ``Outputs`` for the same rows (original and converted) and, optionally,
labels; results are plain, JSON-ready numbers rounded so that the same models on the same
rows always give the same report (it goes into the deterministic manifest). No model runs
here and no clock is read: timings live in ``latency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from converter.predictors import Outputs
from edgefleet.profiles import Profile

DIGITS = 6


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def compare_classifier(original: Outputs, converted: Outputs, class_labels: Sequence[Any],
                       labels: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1 agreement, probability error and (with labels) accuracy of both models."""
    a = original.top1(class_labels)
    b = converted.top1(class_labels)
    result: dict[str, Any] = {"agreement": _round(np.mean(a == b))}
    if original.probabilities is not None and converted.probabilities is not None:
        diff = np.abs(np.asarray(original.probabilities, np.float64) - np.asarray(converted.probabilities, np.float64))
        result["max_abs_error"] = _round(diff.max())
        result["mean_abs_error"] = _round(diff.mean())
    if labels is not None:
        truth = np.asarray(labels, dtype=object)
        original_accuracy = np.mean(_same(a, truth))
        converted_accuracy = np.mean(_same(b, truth))
        result["accuracy_original"] = _round(original_accuracy)
        result["accuracy_converted"] = _round(converted_accuracy)
        result["accuracy_drop"] = _round(max(0.0, original_accuracy - converted_accuracy))
    return result


def _same(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    # CSV labels may come back as "3" where the model says 3: compare as text.
    return np.array([str(p) == str(t) for p, t in zip(predicted, truth, strict=True)])


def compare_regressor(original: Outputs, converted: Outputs) -> dict[str, Any]:
    """Absolute errors, and the relative error the tolerance uses: mean |diff| / std(original)."""
    a = original.regression()
    b = converted.regression()
    diff = np.abs(a - b)
    spread = float(np.std(a))
    result: dict[str, Any] = {"max_abs_error": _round(diff.max()), "mean_abs_error": _round(diff.mean())}
    # A constant output has no spread: fall back to its magnitude so the ratio stays meaningful.
    scale = spread if spread > 0 else max(float(np.abs(a).mean()), 1e-12)
    result["rel_error"] = _round(diff.mean() / scale)
    return result


def tolerance_failures(task: str, metrics: Mapping[str, Any], model_bytes: int, profile: Profile) -> list[str]:
    """Every way the conversion misses the profile's tolerance or size budget (empty: it passes)."""
    tol = profile.tolerance
    failures = []
    if task == "classification" and metrics["agreement"] < tol.min_agreement:
        failures.append(f"top-1 agreement {metrics['agreement']:.4f} is below the profile's min_agreement {tol.min_agreement}")
    if task == "regression" and metrics["rel_error"] > tol.max_rel_error:
        failures.append(f"relative error {metrics['rel_error']:.4f} is above the profile's max_rel_error {tol.max_rel_error}")
    drop = metrics.get("accuracy_drop")
    if drop is not None and drop > tol.max_accuracy_drop:
        failures.append(f"accuracy drops by {drop:.4f}, more than the profile's max_accuracy_drop {tol.max_accuracy_drop}")
    if model_bytes > profile.max_model_bytes:
        failures.append(f"the model is {model_bytes} bytes, over the profile's max_model_bytes {profile.max_model_bytes}")
    return failures
