"""``python -m bench.profile``: where the agent's CPU goes per request, by py-spy, under bench load.

It starts the real ``edgefleet agent run --no-mqtt`` with a bench model (``bench.models``),
drives it with the bench's load generator (``bench.loadgen``, same request, same pinning as
``bench.inference``), samples it with ``py-spy record`` (raw, collapsed stacks) for the middle
of the run, and puts every sample in one bucket (``classify``): the innermost frame that a rule
knows decides, so the runtime's ``run`` called by the serving table counts as "onnxruntime run",
not "serving table". With the agent's CPU time per request (psutil over the same window), each
share is also given in microseconds per request.

py-spy is a test and bench tool, not part of ``edgefleet[agent]``: ``pip install py-spy``. It
pauses the process for each sample, so throughput under the profiler is lower than the bench's;
the shares are what it is for. On a shared machine the absolute figures move from run to run:
compare shares of one run, or two runs back to back.

Pure part: ``classify`` and ``shares`` (collapsed stack lines in, buckets out). The rest is I/O.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import processes
from bench.errors import BenchError
from bench.loadgen import Target, run_load
from bench.models import PROFILE, prepare

# (bucket, file suffix or None, function names or None): the innermost frame that matches one
# rule decides a sample's bucket. Files are matched by their end (py-spy shortens paths).
RULES: tuple[tuple[str, str | None, frozenset[str] | None], ...] = (
    ("onnxruntime run", "onnxruntime_inference_collection.py", None),
    ("input check (to_feeds/to_matrix)", "edgefleet/inputs.py", None),
    ("telemetry (metrics, drift, feedback memory)", "agent/metrics.py", None),
    ("telemetry (metrics, drift, feedback memory)", "agent/drift.py", None),
    ("telemetry (metrics, drift, feedback memory)", "agent/reporter.py", None),
    ("telemetry (metrics, drift, feedback memory)", "edgefleet/telemetry.py", None),
    ("telemetry (metrics, drift, feedback memory)", "agent/serving.py",
     frozenset({"_notify", "_release", "_observe", "_observe_many"})),
    ("JSON encode", "agent/api.py", frozenset({"_json_body", "_encode", "_predicted"})),
    ("JSON encode", "agent/serving.py", frozenset({"to_dict", "_jsonable"})),
    ("JSON decode", "agent/api.py", frozenset({"_loads", "_decode"})),
    ("socket write", "asyncio/selector_events.py", frozenset({"write"})),
    ("socket read", "asyncio/selector_events.py", frozenset({"_read_ready__data_received", "_read_ready",
                                                              "_read_ready__get_buffer"})),
    ("HTTP framing (head parse, response head)", "agent/api.py",
     frozenset({"_read_head", "_parse_head", "_response", "_step", "_send", "data_received", "_process",
                "_answer_now", "_reply", "_finish", "_batched", "_inline", "_cost", "_rows"})),
    ("micro-batcher", "agent/batcher.py", None),
    ("runtime wrapper (run_roles)", "agent/runtime.py", None),
    ("serving table (other)", "agent/serving.py", None),
    ("asyncio event loop", "asyncio/", None),
    ("selectors (epoll)", "selectors.py", None),
)
OTHER = "other"


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame, ``func (path/file.py:123)`` or ``func (path/file.py)``."""
    func, _, rest = text.partition(" (")
    where = rest.rstrip(")")
    path, _, line = where.rpartition(":")
    return func, (path if line.isdigit() else where)


def classify(stack: str) -> str:
    """The bucket of one collapsed stack (frames root first, ``;``-separated)."""
    for raw in reversed(stack.split(";")):
        func, path = _frame(raw)
        for bucket, suffix, names in RULES:
            if suffix is not None and suffix not in path:
                continue
            if names is not None and func.rpartition(".")[2] not in names:  # py-spy writes Class.method
                continue
            return bucket
    return OTHER


def shares(lines: Iterable[str]) -> tuple[Counter[str], int]:
    """Samples per bucket of py-spy's raw output (``stack count`` lines) and the total."""
    counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[classify(stack)] += int(count)
        total += int(count)
    return counts, total


def profile(model_name: str = "mlp", clients: int = 16, seconds: float = 10.0, rate: int = 250,
            raw_out: Path | None = None) -> dict[str, Any]:
    """Run the agent under load with py-spy attached; shares of its samples and CPU per request."""
    import psutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed", fix="pip install py-spy (a bench tool, not an agent dependency)")
    model = prepare(model_name)
    features, _ = model.validation()
    body = {"inputs": [features[0].tolist()]}
    server_cores, load_cores = processes.split_cores()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-profile-") as tmp:
        state = Path(tmp) / "agent"
        processes.install_bundle(model.bundle_path, state, PROFILE)
        with processes.agent(state, cores=server_cores) as agent:
            target = Target(f"/v1/models/bench-{model.name}/predict", unix_socket=str(agent.socket_path))
            run_load(target, body, clients, 1.0, cpus=load_cores)  # warm: lazy imports, caches, thread choice
            raw = Path(tmp) / "spy.txt"
            proc = psutil.Process(agent.proc.pid)
            result: dict[str, Any] = {}

            def load() -> None:
                result["load"] = run_load(target, body, clients, seconds + 2.0, cpus=load_cores)

            driver = threading.Thread(target=load)
            driver.start()
            before, began = proc.cpu_times(), time.perf_counter()
            spied = subprocess.run([spy, "record", "-p", str(agent.proc.pid), "-f", "raw", "-r", str(rate),
                                    "-d", str(int(seconds)), "-o", str(raw), "--nonblocking"],
                                   capture_output=True, text=True, check=False)
            after, spied_s = proc.cpu_times(), time.perf_counter() - began
            driver.join()
            if spied.returncode != 0 or not raw.exists():
                raise BenchError(f"py-spy failed: {spied.stderr.strip()[-400:]}",
                                 fix="py-spy needs ptrace rights over the agent (root, or ptrace_scope 0)")
            lines = raw.read_text().splitlines()
            if raw_out is not None:
                raw_out.write_text("\n".join(lines) + "\n")
    counts, total = shares(lines)
    summary = result["load"]
    cpu_s = (after.user + after.system) - (before.user + before.system)
    served = summary.throughput_rps * spied_s  # the load runs on either side of the sampled window
    cpu_us = 1e6 * cpu_s / served if served else None
    return {"model": model.name, "clients": clients, "seconds": seconds, "samples": total,
            "throughput_rps": round(summary.throughput_rps), "cpu_us_per_request": cpu_us and round(cpu_us, 1),
            "shares": {bucket: {"share": round(n / total, 4),
                                "us_per_request": round(cpu_us * n / total, 1) if cpu_us else None}
                       for bucket, n in counts.most_common()} if total else {}}


def _table(doc: dict[str, Any]) -> str:
    rows = [f"{doc['model']}, {doc['clients']} clients, {doc['seconds']} s: {doc['throughput_rps']} req/s under "
            f"py-spy, {doc['cpu_us_per_request']} us CPU/request, {doc['samples']} samples",
            "| what | share | us/request |", "|---|---|---|"]
    rows += [f"| {bucket} | {v['share']:.0%} | {v['us_per_request']} |" for bucket, v in doc["shares"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        doc = profile(args.model, args.clients, args.seconds, args.rate, args.raw)
    except BenchError as exc:
        print(f"bench.profile: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else _table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
