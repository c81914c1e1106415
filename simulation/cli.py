"""``edgefleet demo``: the main job, told end to end on embedded defaults.

Today the demo covers the converter: it trains a small model on data that ships with
scikit-learn, converts it for two device profiles (ONNX int8 for the Raspberry Pi profile,
TFLite for the Pi Zero) and prints each conversion report. The fleet story (server, simulated
devices, rollouts, rollback, drift) joins as those parts land; see docs/demo.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.console import print_json


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the edgefleet story on embedded defaults (what scripts/demo runs)",
        description="Train a small model on scikit-learn's bundled digits data, convert it for a Raspberry Pi 4 "
        "(ONNX, int8 static quantization) and a Pi Zero 2 W (TFLite, full int8), and show the proof that each "
        "converted model still agrees with the original. Nothing is downloaded.",
    )
    demo.add_argument("--data-dir", type=Path, help="keep the demo's files here (default: a temporary directory)")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    demo.add_argument("--skip-tflite", action="store_true", help="skip the TFLite conversion (no TensorFlow needed)")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        return _demo_in(args.data_dir, args)
    with tempfile.TemporaryDirectory(prefix="edgefleet-demo-") as tmp:
        return _demo_in(Path(tmp), args)


def _demo_in(workdir: Path, args: argparse.Namespace) -> int:
    from converter import ConvertOptions, convert
    from converter.examples import write_example
    from converter.report import format_report

    say = (lambda *_: None) if args.json else print
    steps: list[dict[str, Any]] = []
    started = time.monotonic()
    say(f"edgefleet demo in {workdir}\n")
    say("1. training an MLP classifier on scikit-learn's digits data")
    example = write_example(workdir / "example")
    steps.append({"step": "train", "seconds": round(time.monotonic() - started, 2)})
    targets = [("rpi4-64", "onnx", "int8-static")]
    if not args.skip_tflite:
        targets.append(("rpi-zero-2w", "tflite", "int8"))
    ok = True
    for profile, fmt, quantize in targets:
        t0 = time.monotonic()
        say(f"\n2. converting for {profile}: {fmt}, {quantize}")
        result = convert(ConvertOptions(
            model_path=example.model_path, profile=profile, name=f"digits-{profile}", version="1.0.0",
            output_dir=workdir / "bundles", format=fmt, quantize=quantize,
            calibration=example.calibration_csv, validation=example.validation_csv, labels=example.labels_column,
        ))
        say(format_report(result.report))
        say(f"   bundle: {result.bundle_path} (sha256 {result.sha256[:16]}...)")
        steps.append({"step": f"convert:{profile}", "format": fmt, "quantize": quantize,
                      "seconds": round(time.monotonic() - t0, 2), "bundle": str(result.bundle_path),
                      "sha256": result.sha256, "report": result.report})
    summary = {"ok": ok, "workdir": str(workdir), "seconds": round(time.monotonic() - started, 2), "steps": steps}
    if args.json:
        print_json(summary)
    else:
        print(f"\ndone in {summary['seconds']} s. Inspect a bundle with: edgefleet bundle inspect {steps[-1]['bundle']}")
    return 0 if ok else 1
