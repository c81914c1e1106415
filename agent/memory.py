"""The memory budget for a second model: does a candidate fit beside the serving version?

A shadow or canary stage (issue 18) loads a candidate next to the model that serves, so for its
duration the agent holds two models. Before it loads the candidate, the updater asks
``check_before_load``; after loading it, ``check_after_load`` with the RSS growth it measured.
Both are pure: the figures come in, a ``MemoryVerdict`` goes out.

The budget is a share of the firmware profile's ``ram_mb`` (``candidate_ram_share`` in
agent.toml, default 0.5: the rest is the operating system's and the device's own
application's). The agent's whole resident set with the candidate loaded must stay within it.

The estimate before loading is honest about being one: ``ESTIMATE_FACTOR`` times the model
file's size plus ``SESSION_OVERHEAD_BYTES``. Measured on this machine (x86_64, ONNX Runtime
1.32, single-threaded session, one warm-up run; the RSS growth of loading a SECOND session of
a dense float32 model in a process that already holds one): a 0.07 MiB file grew RSS by
0.2 MiB, a 4 MiB file by 8 MiB (2.0x), a 32 MiB file by 36 MiB (1.1x): the weights are copied
into the session, and small models pay the kernels' pre-packed copies on top. ``2 x file + 8
MiB`` bounds all three from above. LiteRT maps the file and costs less; the same bound is kept
for both (one rule, on the safe side). After loading (and after the golden samples ran, since
ONNX Runtime allocates its arenas on first use) the MEASURED growth replaces the estimate, and
a candidate whose real cost breaks the budget is unloaded and refused all the same. A
measurement in a live process is noisy (requests allocate too, the allocator reuses freed
memory): the after-load check guards against an estimate that was far off, not against a few
MiB.

Not here: reading /proc (agent.metrics.ResourceReader does), loading models, what a refusal
does (agent/updater.py emits ``failed`` with reason ``memory_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

MIB = 1024 * 1024
ESTIMATE_FACTOR = 2.0
SESSION_OVERHEAD_BYTES = 8 * MIB
DEFAULT_RAM_SHARE = 0.5


def estimate_model_bytes(model_file_bytes: int) -> int:
    """What loading a model of this file size is expected to add to the agent's RSS (see the docstring)."""
    if model_file_bytes < 0:
        raise AgentError(f"a model file cannot be {model_file_bytes} bytes")
    return int(ESTIMATE_FACTOR * model_file_bytes) + SESSION_OVERHEAD_BYTES


@dataclass(frozen=True)
class MemoryVerdict:
    """Whether the agent with a second model fits its budget, and the figures behind the answer."""

    fits: bool
    rss_bytes: int
    cost_bytes: int
    budget_bytes: int
    measured: bool  # the cost is the RSS growth measured after loading, not the estimate

    @property
    def message(self) -> str:
        what = "measured" if self.measured else "estimated"
        total = self.rss_bytes + (0 if self.measured else self.cost_bytes)
        verdict = "fits" if self.fits else "does not fit"
        return (f"the candidate ({what} {self.cost_bytes / MIB:.1f} MiB) {verdict}: the agent would hold "
                f"{total / MIB:.1f} MiB against its budget of {self.budget_bytes / MIB:.1f} MiB")

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "rss_mb": round(self.rss_bytes / MIB, 1), "cost_mb": round(self.cost_bytes / MIB, 1),
                "budget_mb": round(self.budget_bytes / MIB, 1), "measured": self.measured}


def budget_bytes(ram_mb: int, share: float) -> int:
    """The agent's share of the device's RAM."""
    if ram_mb <= 0 or not 0.0 < share <= 1.0:
        raise AgentError(f"a memory budget needs ram_mb > 0 and a share in (0, 1], not {ram_mb} and {share}",
                         fix="set candidate_ram_share in agent.toml to a number in (0, 1], e.g. 0.5")
    return int(ram_mb * MIB * share)


def check_before_load(rss_bytes: int, model_file_bytes: int, *, ram_mb: int, share: float) -> MemoryVerdict:
    """Before loading: the agent's RSS now plus the candidate's estimated cost, against the budget."""
    cost = estimate_model_bytes(model_file_bytes)
    budget = budget_bytes(ram_mb, share)
    return MemoryVerdict(rss_bytes + cost <= budget, rss_bytes, cost, budget, measured=False)


def check_after_load(rss_before: int, rss_after: int, *, ram_mb: int, share: float) -> MemoryVerdict:
    """After loading: the RSS with the candidate loaded (its growth is the measured cost) against the budget."""
    budget = budget_bytes(ram_mb, share)
    return MemoryVerdict(rss_after <= budget, rss_after, max(0, rss_after - rss_before), budget, measured=True)


__all__ = ["DEFAULT_RAM_SHARE", "ESTIMATE_FACTOR", "SESSION_OVERHEAD_BYTES", "MemoryVerdict", "budget_bytes",
           "check_after_load", "check_before_load", "estimate_model_bytes"]
