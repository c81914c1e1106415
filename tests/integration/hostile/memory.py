"""Measuring what a hostile input costs in memory: the real CLI in a subprocess, or a server's process.

``run_cli`` runs ``edgefleet ARGS`` as a user would and reports two peaks: psutil's RSS samples
taken every few milliseconds while it runs (what a watcher sees), and the kernel's exact peak
(``ru_maxrss`` from ``wait4``), which no sampling interval can miss. ``PeakWatch`` does the
same for a long-running process (the server): it resets the kernel's high-water mark
(``/proc/PID/clear_refs``) and reads ``VmHWM`` after the request, beside psutil samples.
Tests compare against the same command's peak on a small input that is refused for a benign
reason, so imports and the interpreter cancel out and only the input's cost remains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[3]
MIB = 1 << 20


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, the kernel's exact high-water mark
    sampled_rss: int  # bytes, the highest psutil sample


def run_cli(args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 180) -> Measured:
    """``edgefleet ARGS`` in a fresh process, with its peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", *args], stdout=out, stderr=err, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        watched = psutil.Process(proc.pid)
        sampled = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                if watched.status() == psutil.STATUS_ZOMBIE:
                    break
                sampled = max(sampled, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.002)  # the sampling interval; the exact peak comes from wait4 below
        # wait4 rather than Popen.wait: it returns this child's own rusage, peak RSS included.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        usage.ru_maxrss * 1024, sampled)


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmHWM")


class PeakWatch:
    """The peak RSS of process ``pid`` over a ``with`` block, above its RSS when the block began."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.idle = 0
        self.peak = 0  # exact: VmHWM after clear_refs
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, self.process.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> PeakWatch:
        self.idle = self.process.memory_info().rss
        # "5" resets the kernel's peak-RSS counter to the current RSS (Linux 4.0+, proc(5)).
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = _hwm(self.process.pid)

    @property
    def growth(self) -> int:
        return max(self.peak, self.sampled) - self.idle

    def describe(self) -> str:
        return (f"idle {self.idle / MIB:.1f} MiB, peak {self.peak / MIB:.1f} MiB (VmHWM), "
                f"sampled {self.sampled / MIB:.1f} MiB (psutil)")
