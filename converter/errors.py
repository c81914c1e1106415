"""The converter's exceptions.

    EdgefleetError
    └── ConverterError          anything the converter refuses or cannot do
        ├── ModelNotFoundError  the model path does not exist
        ├── NotAModelError      the file exists but holds no model we can read
        ├── UnsupportedOpError  the model uses an op the target format or runtime lacks
        ├── OptionsError        the options do not fit together or with the profile
        ├── DataError           a calibration or validation file cannot be read
        │   └── DataShapeError  the data has the wrong number of columns
        └── ToleranceError      the converted model misses the profile's tolerance or size budget

Each message names the problem and, through ``fix``, what to do about it. Foreign errors
(skl2onnx, onnxruntime, TensorFlow) are wrapped where they enter our code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.errors import EdgefleetError


class ConverterError(EdgefleetError):
    """Base of every error the converter raises on purpose."""


class ModelNotFoundError(ConverterError):
    """The model path does not exist."""


class NotAModelError(ConverterError):
    """The file exists but holds nothing the converter can read as a model."""


class UnsupportedOpError(ConverterError):
    """The model uses an operator the requested format or the profile's runtime cannot run."""

    def __init__(self, message: str, *, op: str, fix: str | None = None) -> None:
        self.op = op
        super().__init__(message, fix=fix)


class OptionsError(ConverterError):
    """The conversion options do not fit together or with the firmware profile."""


class DataError(ConverterError):
    """A calibration or validation data file cannot be read."""


class DataShapeError(DataError):
    """Calibration or validation data has the wrong number of feature columns."""


class ToleranceError(ConverterError):
    """The converted model misses the profile's tolerance or size budget; nothing was written."""

    def __init__(self, message: str, *, report: Mapping[str, Any], fix: str | None = None) -> None:
        self.report = dict(report)
        super().__init__(message, fix=fix)
