"""Which quantizations suit a model on a profile, and why: a line per mode in every report.

Issue 12 asked the converter to be honest about quantization: a mode that changes nothing is
refused (``quantize``), and the report says for this model on this profile which modes apply
and why, so a user does not learn it one refusal at a time. The judgement is made from what
the model is made of (its op types: weights in MatMul/Gemm/Conv are what int8 quantizes,
ai.onnx.ml ops such as tree ensembles stay float32 and have no float16 kernels) and from the
profile (its formats, its accelerator, its size budget), before any mode is tried.

Pure: op types, the format and the profile in, advice out. It converts and runs nothing; the
proof of the chosen mode is the report's own figures.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from converter.quantize import QUANTIZED_OPS, WEIGHTED_OPS
from edgefleet.profiles import Profile

# What int8 quantizes, in float form or already quantized: the quantizer's own lists, so the
# advice and the refusal ("nothing to quantize") can never disagree.
WEIGHT_OPS = WEIGHTED_OPS | QUANTIZED_OPS
CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})
ONNX_MODES = ("none", "fp16", "int8-dynamic", "int8-static")
TFLITE_MODES = ("none", "fp16", "int8-dynamic", "int8")
_FLOAT16_ACCELERATORS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "CoreMLExecutionProvider")


@dataclass(frozen=True)
class Advice:
    quantization: str
    suits: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"quantization": self.quantization, "suits": self.suits, "why": self.why}


def quantization_advice(fmt: str, ops: Collection[str], ml_ops: Collection[str], profile: Profile, *,
                        calibration: bool) -> list[Advice]:
    """One ``Advice`` per quantization of ``fmt`` for a model with these op types (``ml_ops``: those
    of the ai.onnx.ml domain; both empty when not known, as for a Keras source going to TFLite)."""
    weights = sorted(set(ops) & WEIGHT_OPS)
    convs = bool(set(ops) & CONV_OPS)
    known = bool(ops) or bool(ml_ops)
    gpu = any(p in _FLOAT16_ACCELERATORS for p in profile.execution_providers) and profile.accelerator not in ("", "none")
    advice = [Advice("none", True, "float32 as trained: the reference every other mode is measured against")]
    if ml_ops:
        advice.append(Advice("fp16", False, f"its {', '.join(sorted(ml_ops)[:3])} op(s) (ai.onnx.ml) have no float16 "
                                            "kernels: they stay float32, so fp16 saves little and may not load"))
    elif gpu:
        advice.append(Advice("fp16", True, f"halves the weights; {profile.name}'s {profile.accelerator} accelerator "
                                           "runs float16 natively"))
    else:
        advice.append(Advice("fp16", True, f"halves the weights; {profile.name} has no float16 accelerator, so it "
                                           "saves size, not time"))
    int8 = "int8-static" if fmt == "onnx" else "int8"
    if known and not weights:
        why = ("nothing to quantize: int8 rewrites the weights of MatMul, Gemm, Conv and recurrent ops and this "
               "model has none"
               + (f" ({', '.join(sorted(ml_ops)[:3])} stay float32)" if ml_ops else ""))
        advice += [Advice("int8-dynamic", False, why), Advice(int8, False, why)]
        return advice
    if convs and fmt == "onnx":
        advice.append(Advice("int8-dynamic", False, "its convolutions would be re-quantized on every call: smaller, "
                                                    "but several times slower on a CPU (MobileNetV2: 20x)"))
    else:
        advice.append(Advice("int8-dynamic", True, "int8 weights, activations quantized per call: about a quarter of "
                                                   "the size, no calibration data needed"))
    if calibration:
        advice.append(Advice(int8, True, "int8 weights and activations from the calibration data: the smallest and, "
                                         "on CPUs and int8 accelerators, the fastest; check its agreement"))
    else:
        advice.append(Advice(int8, True, "the smallest and fastest, but needs --calibration data (or --validation, "
                                         "used in its place) of the inputs the devices see"))
    return advice
