"""PNG plots of a run document (matplotlib, Agg backend): latency distributions and the rollout curve.

Only figures; the numbers come from the run document. Returns the paths written; a section
missing from the run yields no plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def latency_plot(section: Mapping[str, Any], path: Path) -> Path | None:
    models = section.get("models", [])
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for kind, results in model["results"].items():
            clients = sorted(results, key=int)
            p50 = [results[c]["p50_ms"] for c in clients]
            p99 = [results[c]["p99_ms"] for c in clients]
            xs = [int(c) for c in clients]
            line = ax.plot(xs, p50, marker="o", label=f"{kind} p50")[0]
            ax.fill_between(xs, p50, p99, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("single-row latency, ms (band: p50-p99)")
        ax.set_title(model["model"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cdf_plot(section: Mapping[str, Any], path: Path, clients: str = "1") -> Path | None:
    """Single-row latency CDF per path at one concurrency (runs that kept quantiles only)."""
    from bench.stats import QUANTILES

    models = [m for m in section.get("models", [])
              if any(r.get(clients, {}).get("quantiles_ms") for r in m["results"].values())]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for kind, results in model["results"].items():
            quantiles = results.get(clients, {}).get("quantiles_ms")
            if quantiles:
                ax.plot(quantiles, QUANTILES, label=kind)
        ax.set_xscale("log")
        ax.set_xlabel(f"single-row latency, ms ({clients} client{'s' if clients != '1' else ''})")
        ax.set_ylabel("percentile")
        ax.set_title(model["model"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rollout_plot(section: Mapping[str, Any], path: Path) -> Path | None:
    # Mosquitto's curve over fleet sizes (a NATS run, where there is one, is a point of its own in the tables).
    sizes = [s for s in section.get("sizes", []) if "error" not in s and s.get("broker", "mosquitto") == "mosquitto"]
    if not sizes:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    devices = [s["devices"] for s in sizes]
    ax.plot(devices, [s["create_to_last_commit_s"] for s in sizes], marker="o", label="create -> last commit")
    ax.plot(devices, [s["create_to_completed_s"] for s in sizes], marker="s", label="create -> completed")
    ax.axhline(60, color="grey", linestyle="--", linewidth=1, label="target for 1,000: 60 s")
    ax.set_xscale("log")
    ax.set_xlabel("devices (single 100% wave)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(doc: Mapping[str, Any], directory: Path, stem: str) -> list[Path]:
    benchmarks = doc.get("benchmarks", {})
    made = []
    if isinstance(benchmarks.get("inference"), Mapping):
        made.append(latency_plot(benchmarks["inference"], directory / f"{stem}-latency.png"))
        made.append(cdf_plot(benchmarks["inference"], directory / f"{stem}-latency-cdf.png"))
    if isinstance(benchmarks.get("rollout"), Mapping):
        made.append(rollout_plot(benchmarks["rollout"], directory / f"{stem}-rollout.png"))
    return [p for p in made if p is not None]
