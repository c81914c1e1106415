"""Which quantizations suit a model on a profile, and why (converter.advice, issue 12)."""

from __future__ import annotations

from pathlib import Path

from converter import ConvertOptions, convert
from converter.advice import quantization_advice
from converter.report import format_report
from edgefleet.profiles import load_profile
from tests.support.bundles import example

PI, JETSON = load_profile("rpi4-64"), load_profile("jetson-orin-nano")


def suits(advice: list) -> dict[str, bool]:  # type: ignore[type-arg]
    return {a.quantization: a.suits for a in advice}


def test_a_tree_ensemble_is_told_int8_and_fp16_do_not_suit_it() -> None:
    advice = quantization_advice("onnx", {"TreeEnsembleClassifier", "ZipMap"}, ["TreeEnsembleClassifier", "ZipMap"],
                                 PI, calibration=True)
    assert suits(advice) == {"none": True, "fp16": False, "int8-dynamic": False, "int8-static": False}
    assert "nothing to quantize" in advice[2].why and "TreeEnsembleClassifier" in advice[2].why
    assert "no float16" in advice[1].why


def test_dense_layers_suit_every_mode_and_fp16_is_for_a_float16_accelerator() -> None:
    on_pi = quantization_advice("onnx", {"Gemm", "Relu", "Softmax"}, [], PI, calibration=True)
    assert suits(on_pi) == {"none": True, "fp16": True, "int8-dynamic": True, "int8-static": True}
    assert "saves size, not time" in on_pi[1].why
    on_jetson = quantization_advice("onnx", {"Gemm"}, [], JETSON, calibration=False)
    assert "runs float16 natively" in on_jetson[1].why
    assert "needs --calibration" in on_jetson[3].why


def test_convolutions_are_told_dynamic_int8_is_slow_on_onnx_and_tflite_is_judged_without_ops() -> None:
    assert not suits(quantization_advice("onnx", {"Conv", "Relu"}, [], PI, calibration=True))["int8-dynamic"]
    assert suits(quantization_advice("tflite", set(), [], PI, calibration=True)) == {
        "none": True, "fp16": True, "int8-dynamic": True, "int8": True}


def test_the_conversion_report_carries_and_prints_the_advice(tmp_path: Path) -> None:
    files = example("digits-mlp")
    result = convert(ConvertOptions(files.model_path, "rpi4-64", "digits", "1.0.0", tmp_path, quantize="none",
                                    validation=files.validation_csv, labels=files.labels_column))
    advice = {a["quantization"]: a for a in result.report["quantizations"]}
    assert set(advice) == {"none", "fp16", "int8-dynamic", "int8-static"} and advice["int8-static"]["suits"]
    printed = format_report(result.report)
    assert "suits" in printed and "int8-static" in printed


def test_the_advice_and_the_quantizer_agree_on_what_int8_can_quantize() -> None:
    # An LSTM has weights the quantizer rewrites: the advice must not call it "nothing to quantize".
    assert suits(quantization_advice("onnx", {"LSTM", "Softmax"}, [], PI, calibration=True))["int8-static"]
