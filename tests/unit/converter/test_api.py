"""The converter's public surface: what other parts import must not shrink or grow by accident."""

from __future__ import annotations

import subprocess
import sys

import converter


def test_exported_names() -> None:
    assert sorted(converter.__all__) == [
        "ConversionResult", "ConvertOptions", "ConverterError", "DataError", "DataShapeError", "ExampleFiles",
        "ModelNotFoundError", "NotAModelError", "OptionsError", "ToleranceError", "UnsupportedOpError",
        "convert", "write_example",
    ]
    assert all(issubclass(getattr(converter, n), converter.ConverterError)
               for n in converter.__all__ if n.endswith("Error") and n != "ConverterError")


def test_importing_the_package_loads_no_heavy_library() -> None:
    code = ("import sys, converter, converter.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'onnx', 'onnxruntime', 'sklearn', 'skl2onnx', 'tensorflow', 'onnx2tf', 'joblib'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_edgefleet_command_starts_without_the_conversion_pipeline_numpy_or_light_devices() -> None:
    # Every `edgefleet` process (an agent, the server, each CLI command) builds the parser, which
    # imports converter and simulation to register their subcommands (edgefleet/lazy.py).
    code = ("import sys, edgefleet.cli; edgefleet.cli.build_parser(); "
            "print(sorted(m for m in ('numpy', 'converter.conversion', 'converter.examples', "
            "'simulation.lightdevice') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
    from converter import ConvertOptions, convert  # still there, imported on first use

    assert callable(convert) and ConvertOptions.__module__ == "converter.conversion"
