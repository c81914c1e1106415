"""``Converted``: what a format builder (``onnxbuild``, ``tflite``) hands to ``conversion``.

A value and its checks, nothing more: the builders import it to return one, and
``conversion.convert`` imports it to prove and pack one. It lives apart from both so that
neither imports the other (the builders used to import it from ``conversion``, which imports
them back). This module builds, runs and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from converter.errors import ConverterError
from converter.predictors import Predictor
from edgefleet.manifest import FORMATS


@dataclass(frozen=True)
class Converted:
    """A converted model, ready to be packed: model bytes, a predictor over them, specs and needs."""

    format: str
    model_bytes: bytes
    predictor: Predictor
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    runtime: Mapping[str, Any]
    float_bytes: int

    def __post_init__(self) -> None:
        if self.format not in FORMATS or not self.model_bytes or not self.inputs or not self.outputs:
            raise ConverterError(f"internal: the {self.format} builder returned an incomplete model",
                                 fix="report this as a bug with the model type and options used")
