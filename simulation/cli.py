"""``edgefleet demo``, ``edgefleet simulate`` and ``edgefleet break-bundle``: the main job, the fleet simulator, and a bad release to rehearse with.

``demo`` tells the whole story (simulation/demo.py) with real processes on this machine;
``simulate`` drives a fleet against a running server (simulation/simulate.py). Both import
their heavy parts inside the handlers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.console import format_table, print_json

DEMO_HELP = """\
Tell the edgefleet story with real processes on this machine:

  1. train the models (scikit-learn's bundled data) and convert them: for rpi4-64 a digits
     classifier (ONNX int8) and a DataFrame pipeline with a string column (ONNX); for
     jetson-orin-nano the digits classifier (TFLite int8) and a camera CNN on 32x32 RGB
     pictures (TFLite full int8); show the conversion reports
  2. start a broker (Mosquitto if installed, enforcing the server's ACL; else embedded), the
     fleet server (SQLite) and N `edgefleet agent` processes, each enrolled with its own token
  3. roll out version 1 in waves while predictions flow through every device's local API:
     rows to the digits models, named records to the pipeline, PNG pictures to the camera
  4. roll out a version whose golden samples disagree with its model: the first wave fails
     its health check, the rollout halts by itself and the touched devices roll back
  5. shift the inputs of the site=b devices, show the drift figures, then roll out a
     retrained version 3 to the whole fleet
  6. roll out a version 4 trained on shifted data with a shadow stage: it passes its golden
     samples, but disagrees with version 3 on live requests, so the stage halts the rollout
     with the agreement as the reason and nobody switches

The summary shows each step's time, devices per version and failed requests (must be 0).
Exit status 0 only if every step turned out as described. Ctrl-C stops every process.

examples:
  edgefleet demo
  edgefleet demo --devices 4 --json
  edgefleet demo --data-dir ./demo --keep             # then look around in the console, or edgefleet rollouts list
"""


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the edgefleet story on embedded defaults (what scripts/demo runs)",
                          description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--devices", type=int, default=12, help="agent processes to start, half per profile (default 12)")
    demo.add_argument("--data-dir", type=Path, help="keep the demo's files here (default: a temporary directory); "
                                                    "a directory an earlier run kept reuses the models it trained "
                                                    "and converted")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                      help="MQTT broker: Mosquitto from PATH, the server's embedded one, or auto (default)")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    demo.add_argument("--keep", "--keep-running", dest="keep_running", action="store_true",
                      help="leave the server and agents running after the story until Ctrl-C, and print "
                           "the web console's URL and how to log in")
    demo.set_defaults(handler=_run_demo)
    broken = sub.add_parser(
        "break-bundle", help="copy a classifier bundle as a new version whose golden outputs are wrong (drills)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a copy of BUNDLE as VERSION with every golden output moved one class along: the model "
                    "and the archive stay well formed and it signs and verifies like any other, but a device's "
                    "health check fails it. For rehearsing a bad release (docs/walkthrough.md), never for a fleet "
                    "you care about.",
        epilog="example:\n  edgefleet break-bundle dist/digits-1.0.0.tar.gz --version 2.0.0 -o dist/")
    broken.add_argument("bundle", type=Path, help="a classifier bundle made by `edgefleet convert`")
    broken.add_argument("--version", required=True, help="the version of the broken copy, e.g. 2.0.0")
    broken.add_argument("-o", "--output", type=Path, default=Path("."), help="directory to write it to (default .)")
    broken.set_defaults(handler=_break_bundle)
    from simulation.simulate import register_simulate

    register_simulate(sub)


def _break_bundle(args: argparse.Namespace) -> int:
    from edgefleet.errors import BundleError
    from edgefleet.version import ModelVersion
    from simulation.bundles import break_golden

    ModelVersion.parse(args.version)  # a VersionError names the fix before anything is read
    if not args.bundle.is_file():
        raise BundleError(f"bundle {args.bundle} does not exist", fix="pass a .tar.gz made by `edgefleet convert`")
    try:
        path = break_golden(args.bundle, args.output, version=args.version)
    except ValueError as exc:
        raise BundleError(str(exc), fix="break a classifier bundle (its golden outputs are class labels)") from exc
    print(path)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from simulation.demo import Demo, DemoOptions

    try:
        options = DemoOptions(devices=args.devices, broker=args.broker)
    except ValueError as exc:
        from simulation.fleet import FleetError

        raise FleetError(str(exc), fix="e.g. edgefleet demo --devices 4") from exc
    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda _line: None) if args.json else (lambda line: print(line, flush=True))
    say(f"edgefleet demo in {workdir}")
    demo = Demo(options, workdir, say)
    demo.supervisor.handle_signals()
    summary = demo.run(keep_running=args.keep_running)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    if args.data_dir is None and summary["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["ok"] else 1


def format_summary(summary: dict[str, Any]) -> str:
    rows = [(s["step"], s["title"], "ok" if s["ok"] else "FAILED", f"{s['seconds']:.1f} s") for s in summary["steps"]]
    lines = ["", "summary", format_table(("step", "what", "result", "time"), rows), "",
             "devices per version: " + ", ".join(f"{k} {v}" for k, v in summary["devices_by_version"].items()),
             f"predictions: {summary['requests']} requests, {summary['failed_requests']} failed"
             + "".join(f"; {name} {m['ok']} {m['form']}" for name, m in summary.get("requests_by_model", {}).items()),
             ""]
    for step in summary["steps"]:
        lines += [f"step {step['step']}: {p}" for p in step["problems"]]
    lines.append("where to look next:")
    lines += [f"  {hint}" for hint in summary["next"]]
    lines.append(f"\n{'done' if summary['ok'] else 'FAILED'} in {summary['seconds']:.0f} s")
    return "\n".join(lines)
