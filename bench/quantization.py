"""Benchmark 2, quantization: the table a user reads to choose a format and a quantization.

Each model is converted once per variant (float32, fp16, int8-dynamic, int8-static ONNX;
float32 and full-int8 TFLite) through the real converter, which runs the original and the
converted model side by side on the held-out rows. The model bytes of a variant do not depend
on the profile, so per profile (rpi4-64, jetson-orin-nano, rpi-zero-2w) the table shows which
variants the profile allows and whether each meets that profile's tolerance and size budget.
Host latency is the converter's single-row p50 on this machine, not on the device.
Tree ensembles have no TFLite path (the converter refuses them); that row says so.

Beside the three benchmark models, a full run converts MobileNetV2 (alpha 0.35, 96x96, random
weights: ``bench.models.prepare_mobilenet``) from Keras to every variant, for its sizes and host
latencies; with random weights its agreement means little (the table says so). ``--quick``
leaves it out (about three minutes of conversions).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.models import (
    MOBILENET,
    BenchModel,
    convert_keras_variant,
    convert_variant,
    prepare,
    prepare_mobilenet,
)

PROFILES = ("rpi4-64", "jetson-orin-nano", "rpi-zero-2w")
# (format, converter quantization); "none" is float32.
VARIANTS = (("onnx", "none"), ("onnx", "fp16"), ("onnx", "int8-dynamic"), ("onnx", "int8-static"),
            ("tflite", "none"), ("tflite", "int8"))
# A profile that allows both formats, used to build every variant once.
BUILD_PROFILE = "generic-x86_64"
RANDOM_WEIGHTS_NOTE = "random weights: agreement means little; sizes and latencies are real"

# Converts one model to (format, quantization) into a directory, returning the ConversionResult.
Build = Callable[[str, str, Path], Any]


def _variant(build: Build, fmt: str, quantize: str, out: Path) -> dict[str, Any]:
    from converter.errors import ConverterError

    row: dict[str, Any] = {"format": fmt, "quantization": "float32" if quantize == "none" else quantize}
    try:
        report = build(fmt, quantize, out / f"{fmt}-{quantize}").report
    except ConverterError as exc:
        return {**row, "error": str(exc)}
    original, converted = report.get("accuracy_original"), report.get("accuracy_converted")
    return {**row, "bytes": report["size_after"], "agreement": report.get("agreement"),
            "accuracy": converted,
            "accuracy_delta_points": round(100 * (converted - original), 2) if original is not None else None,
            "host_p50_ms": report["latency"]["converted"]["p50_ms"],
            "original_p50_ms": report["latency"]["original"]["p50_ms"],
            "metrics": {k: report.get(k) for k in ("max_abs_error", "mean_abs_error", "accuracy_original")}}


def _fit(row: dict[str, Any], task_metrics: dict[str, Any], profile_name: str) -> str:
    """'ok', 'not allowed' or the profile's reasons for refusing this variant."""
    from converter.proof import tolerance_failures
    from edgefleet.profiles import load_profile

    profile = load_profile(profile_name)
    if row["format"] not in profile.allowed_formats:
        return "format not allowed"
    if "error" in row:
        return "cannot convert"
    failures = tolerance_failures("classification", task_metrics, row["bytes"], profile)
    return "ok" if not failures else "; ".join(failures)


def _model_rows(model: BenchModel, variants: tuple[tuple[str, str], ...], profiles: tuple[str, ...],
                work: Path) -> dict[str, Any]:
    def build(fmt: str, quantize: str, out: Path) -> Any:
        return convert_variant(model, BUILD_PROFILE, fmt, quantize, out)
    return _rows(model.name, build, variants, profiles, work / model.name)


def _rows(name: str, build: Build, variants: tuple[tuple[str, str], ...], profiles: tuple[str, ...],
          work: Path) -> dict[str, Any]:
    rows = [_variant(build, fmt, quantize, work) for fmt, quantize in variants]
    float_bytes = next((r["bytes"] for r in rows if r["format"] == "onnx" and r["quantization"] == "float32"), None)
    for row in rows:
        if "bytes" in row:
            row["size_vs_float32_onnx"] = round(row["bytes"] / float_bytes, 4) if float_bytes else None
            drop = max(0.0, -row["accuracy_delta_points"] / 100) if row["accuracy_delta_points"] is not None else None
            metrics = {"agreement": row["agreement"], "accuracy_drop": drop}
        else:
            metrics = {}
        row["profiles"] = {p: _fit(row, metrics, p) for p in profiles}
    return {"model": name, "variants": rows}


def _mobilenet_rows(work: Path) -> dict[str, Any]:
    files = prepare_mobilenet()

    def build(fmt: str, quantize: str, out: Path) -> Any:
        return convert_keras_variant(files, BUILD_PROFILE, fmt, quantize, out)
    return {**_rows(MOBILENET, build, VARIANTS, PROFILES, work / MOBILENET), "note": RANDOM_WEIGHTS_NOTE}


def _one_model(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-quant-") as tmp:
        try:
            if name == MOBILENET:
                return _mobilenet_rows(Path(tmp))
            return _model_rows(prepare(name), VARIANTS, PROFILES, Path(tmp))
        except BenchError as exc:
            return {"model": name, "error": str(exc)}


def run(*, quick: bool = False, models: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The quantization section of a run document."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    names = models or (("mlp",) if quick else ("mlp", "forest", "cnn", MOBILENET))
    section: dict[str, Any] = {"profiles": list(PROFILES), "models": []}
    for name in names:
        # One fresh process per model: once onnx2tf has loaded tf_keras (an sklearn model's TFLite
        # path), loading a Keras 3 .keras file in the same process fails to deserialize InputLayer.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            section["models"].append(pool.submit(_one_model, name).result())
    return section
