"""edgefleet's converter: a trained model in, a verified bundle for a firmware profile out.

Public API::

    from converter import ConvertOptions, convert
    result = convert(ConvertOptions(model_path, "rpi4-64", "digits", "1.0.0", out_dir, quantize="int8-static",
                                    calibration=calibration_csv))
    result.bundle_path, result.sha256, result.manifest, result.report

Heavy libraries (skl2onnx, onnxruntime, TensorFlow) are imported when a conversion runs, not
when this package is imported.
"""

from converter.conversion import ConversionResult, ConvertOptions, convert
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
from converter.examples import ExampleFiles, write_example

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
