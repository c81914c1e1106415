"""``edgefleet convert``: the converter's command line.

Registered by ``register(sub)`` from edgefleet/cli.py. Everything heavy is imported inside
the handler, so ``edgefleet --help`` on a device never loads skl2onnx or TensorFlow.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Convert a trained model into a verified bundle for one firmware profile.

The converter exports the model (scikit-learn, LightGBM, XGBoost, ONNX, Keras, SavedModel) to
ONNX or TFLite, quantizes it, runs the original and the converted model side by side on your
validation data, and writes DIR/NAME-VERSION.tar.gz only if the result meets the profile's
tolerance and size budget (see `edgefleet profiles show PROFILE`).

quantization:
  none          float32, as exported
  fp16          float16 weights: half the size, for GPU profiles (Jetson)
  int8-dynamic  int8 weights, activations quantized at run time: no calibration data needed
  int8-static   int8 weights and activations (ONNX QDQ), ranges from --calibration data
  int8          full-integer TFLite (int8 input and output too); for ONNX the same as int8-static

examples:
  edgefleet convert digits.joblib --profile rpi4-64 --name digits --version 1.0.0 \\
      --quantize int8-static --calibration calib.csv --validation val.csv --labels label -o dist/
  edgefleet convert digits.joblib --profile rpi4-64 --name digits-lite --version 1.0.0 \\
      --format tflite --quantize int8 --calibration calib.csv -o dist/ --json
  edgefleet convert camera.onnx --profile jetson-orin-nano --name camera --version 1.0.0 \\
      --image image --image-spec image.toml --validation photos/ -o dist/

Unpickling (.joblib, .pkl) runs code stored in the file: convert only models you trust.
"""


def register(sub: Any) -> None:
    parser = sub.add_parser("convert", help="convert a trained model into a verified bundle for a firmware profile",
                            description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model file (.joblib, .pkl, .onnx, .keras) or SavedModel directory")
    parser.add_argument("--profile", required=True, help="firmware profile name (see `edgefleet profiles list`) or .toml path")
    parser.add_argument("--name", required=True, help="model name in the registry (lowercase, e.g. digits)")
    parser.add_argument("--version", required=True, help="semantic version of this bundle, e.g. 1.0.0")
    parser.add_argument("--format", choices=["onnx", "tflite"], default=None,
                        help="output format (default: the profile's default_format; TFLite for Keras sources)")
    parser.add_argument("--quantize", choices=["none", "fp16", "int8-dynamic", "int8-static", "int8"], default=None,
                        help="quantization (default: the profile's default_quantization)")
    parser.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                        help="calibration rows for static/full int8 (CSV, NPY, NPZ or Parquet)")
    parser.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                        help="how int8-static ONNX quantization picks activation ranges (default: minmax)")
    parser.add_argument("--validation", type=Path, default=None, metavar="FILE",
                        help="held-out rows to prove the converted model on (else the calibration rows)")
    parser.add_argument("--labels", default=None, metavar="COLUMN",
                        help="label column in the data files (header name or 0-based index): "
                             "taken out of the features and used for accuracy")
    parser.add_argument("--image", action="append", default=[], metavar="INPUT",
                        help="treat this model input as an image (layout and size from its shape, RGB or GRAY, "
                             "bilinear resize, scale 1/255): data may then be a folder of PNG/JPEG images (labels "
                             "from subfolder names), and devices take image/png, image/jpeg and multipart bodies")
    parser.add_argument("--image-spec", type=Path, default=None, metavar="FILE",
                        help="TOML file with one table per image input ([image] color, resize, scale, mean, std, "
                             "layout, height, width): see docs/converter.md")
    parser.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR",
                        help="directory for the bundle (default: the current directory)")
    parser.add_argument("--force", action="store_true", help="write the bundle even if the tolerance or size budget is missed")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from converter.conversion import STEPS, ConvertOptions, convert
    from converter.errors import ToleranceError
    from converter.image_inputs import read_declarations
    from edgefleet.console import Progress

    options = ConvertOptions(
        model_path=args.model, profile=args.profile, name=args.name, version=args.version, output_dir=args.output,
        format=args.format, quantize=args.quantize, calibration=args.calibration, validation=args.validation,
        labels=args.labels, calibration_method=args.calibration_method, force=args.force,
        images=read_declarations(args.image, args.image_spec),
    )
    with Progress("converting", total=len(STEPS), enabled=not args.json) as progress:
        try:
            result = convert(options, progress=lambda _step: progress.update())
        except ToleranceError as exc:
            progress.close()
            _print_report(exc.report, args.json)
            raise
    _print_report(result.report, args.json)
    return 0


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    from converter.report import format_report
    from edgefleet.console import print_json

    if as_json:
        print_json(report)
    else:
        print(format_report(report))
