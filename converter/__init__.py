"""edgefleet's converter: a trained model in, a verified bundle for a firmware profile out.

Public API::

    from converter import ConvertOptions, convert
    result = convert(ConvertOptions(model_path, "rpi4-64", "digits", "1.0.0", out_dir, quantize="int8-static",
                                    calibration=calibration_csv))
    result.bundle_path, result.sha256, result.manifest, result.report

Heavy libraries (skl2onnx, onnxruntime, TensorFlow) are imported when a conversion runs, not
when this package is imported; the conversion pipeline and the examples (numpy and the
converter's own modules) when one of their names is first used. Every ``edgefleet`` command
imports this package (``converter.cli`` registers ``convert``), so ``edgefleet agent run``,
``edgefleet rollouts create`` and the rest do not pay for them at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from converter.errors import (
    ConverterError,
    DataError,
    DataShapeError,
    ModelNotFoundError,
    NotAModelError,
    OptionsError,
    ToleranceError,
    UnsupportedOpError,
)
from edgefleet.lazy import lazy_exports

if TYPE_CHECKING:
    from converter.conversion import ConversionResult, ConvertOptions, convert
    from converter.examples import ExampleFiles, write_example

# Public names imported on first use, and the module each comes from.
__getattr__ = lazy_exports(__name__, globals(), {
    "ConversionResult": "converter.conversion",
    "ConvertOptions": "converter.conversion",
    "convert": "converter.conversion",
    "ExampleFiles": "converter.examples",
    "write_example": "converter.examples",
})


__all__ = [
    "ConversionResult",
    "ConvertOptions",
    "ConverterError",
    "DataError",
    "DataShapeError",
    "ExampleFiles",
    "ModelNotFoundError",
    "NotAModelError",
    "OptionsError",
    "ToleranceError",
    "UnsupportedOpError",
    "convert",
    "write_example",
]
