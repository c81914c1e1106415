"""``python -m bench [--quick] [--json] [BENCHMARK ...]``: run benchmarks, print tables, keep the JSON.

Every run writes ``bench/results/<timestamp>.json`` (the run document: machine, load average
before and after each benchmark, each benchmark's section, the targets) and PNG plots next
to it; ``--reference`` also copies the document to ``bench/results/reference.json``, from
which docs/benchmarks.md's tables are made (``python -m bench --markdown FILE``). One failing
benchmark is recorded under ``errors`` and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


# benchmark name -> module; imported per benchmark so that `bench footprint` never loads TensorFlow.
MODULES = {"inference": "bench.inference", "quantization": "bench.quantization", "rollout": "bench.rollout_scale",
           "ingest": "bench.ingest", "footprint": "bench.footprint", "console": "bench.console",
           "shadow": "bench.shadow", "accounts": "bench.accounts"}


def _runner(name: str) -> Callable[[bool], dict[str, Any]]:
    module = importlib.import_module(MODULES[name])

    def call(quick: bool) -> dict[str, Any]:
        return dict(module.run(quick=quick))
    return call


BENCHMARKS = tuple(MODULES)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    memory = None
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    cores = os.cpu_count()
    return {"description": f"{cores}-core {platform.machine()} VM ({_cpu_model()}), {memory} GiB, shared with other work",
            "cpu_count": cores, "cpu_model": _cpu_model(), "memory_gib": memory, "platform": platform.platform(),
            "python": platform.python_version()}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_benchmarks(names: Sequence[str], *, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    started = datetime.now(UTC)
    doc: dict[str, Any] = {"schema": 1, "quick": quick, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "machine": machine(), "load_average": {"before": _load()}, "benchmarks": {},
                           "errors": {}, "seconds": {}}
    for name in names:
        say(f"==> {name} (load average {_load()})")
        t0 = time.perf_counter()
        load_before = _load()
        try:
            section = _runner(name)(quick)
            section["load_average"] = {"before": load_before, "after": _load()}
            doc["benchmarks"][name] = section
        except Exception as exc:  # one benchmark failing must not lose the others' figures
            logging.getLogger("bench").debug("%s failed", name, exc_info=True)
            doc["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(traceback.format_exc(limit=3))
        doc["seconds"][name] = round(time.perf_counter() - t0, 1)
    doc["load_average"]["after"] = _load()
    doc["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    from bench.report import targets

    doc["targets"] = [t.to_dict() for t in targets(doc)]
    return doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure edgefleet side by side with its baselines on this machine.",
        epilog="""\
benchmarks:
  inference     agent local API (TCP, Unix socket) vs FastAPI+uvicorn+onnxruntime, Flask+onnxruntime,
                Flask+joblib, raw onnxruntime (and the server's predict endpoint): single rows from
                1/16/64 clients, 5 repeats in rotated order, ratios over the same transport; an image
                model asked with PNG bodies against the FastAPI peer decoding them the same way
  quantization  size, agreement, accuracy and host latency of every format/quantization per profile
  rollout       one rollout to 100, 1,000, 5,000 and 10,000 light devices over a real Mosquitto
  ingest        telemetry messages/s stored by the server (SQLite, PostgreSQL, two replicas)
  footprint     agent RSS and CPU at idle, cold start, install size of edgefleet[agent]
  console       server time to render the console's fleet and devices pages at 1,000 and 10,000 devices
  shadow        served p50/p99 of two agents, one with a shadow candidate mirroring every request (issue 18)

examples:
  scripts/bench --quick                 every benchmark, small (under 3 minutes)
  scripts/bench inference footprint     two of them, full size
  scripts/bench --reference             full run, also saved as bench/results/reference.json
  python -m bench --markdown bench/results/reference.json    tables for docs/benchmarks.md

Timings are never asserted; each target is reported as met or missed.""")
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows, for a smoke check")
    parser.add_argument("--json", action="store_true", help="print the run document as JSON instead of tables")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where run documents and plots go")
    parser.add_argument("--reference", action="store_true", help="also save the run as bench/results/reference.json")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--markdown", type=Path, metavar="RUN_JSON", help="print the Markdown tables of a saved run and exit")
    parser.add_argument("--show", type=Path, metavar="RUN_JSON", help="print the tables of a saved run and exit")
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.report import render_markdown, render_text, write_run

    args = build_parser().parse_args(argv)
    if args.markdown or args.show:
        doc = json.loads((args.markdown or args.show).read_text())
        sys.stdout.write(render_markdown(doc) if args.markdown else render_text(doc))
        return 0
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)} (use any of {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    if args.reference and (args.quick or args.benchmarks):
        print("bench: --reference needs a full run of every benchmark (drop --quick and the names)", file=sys.stderr)
        return 2
    names = args.benchmarks or list(BENCHMARKS)
    doc = run_benchmarks(names, quick=args.quick, say=_say)
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_run(doc, args.out)
    plots: list[Path] = []
    if not args.no_plots:
        from bench.plots import write_plots

        plots = write_plots(doc, args.out, path.stem)
    if args.reference:
        shutil.copyfile(path, RESULTS / "reference.json")
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        sys.stdout.write(render_text(doc))
        print(f"\nrun document: {path}" + "".join(f"\nplot: {p}" for p in plots))
    return 1 if doc["errors"] else 0
