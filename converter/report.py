"""The conversion report as text: what ``edgefleet convert`` and the demo print.

``format_report`` turns the report dict of ``ConversionResult.report`` (or of a
``ToleranceError``) into a key/value block plus a host-latency table. It formats only; the
numbers come from ``conversion`` and ``proof``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.console import format_kv, format_table, human_bytes

_METRICS = ("agreement", "accuracy_original", "accuracy_converted", "accuracy_drop", "max_abs_error",
            "mean_abs_error", "rel_error", "calibration_method", "calibration_rows")


def format_report(report: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        ("bundle", report.get("bundle", "(not written)")),
        ("sha256", report.get("sha256")),
        ("profile", report.get("profile")),
        ("format", report.get("format")),
        ("quantization", report.get("quantization")),
        ("proved on", f"{report.get('rows')} rows of {report.get('data')} data"),
    ]
    if "size_before" in report and "size_after" in report:
        ratio = report.get("size_ratio")
        share = f" ({ratio * 100:.1f}%)" if isinstance(ratio, (int, float)) else ""
        pairs.append(("size", f"{human_bytes(report['size_before'])} -> {human_bytes(report['size_after'])}{share}"))
    pairs += [(key.replace("_", " "), report[key]) for key in _METRICS if key in report]
    failures = list(report.get("failures", []))
    pairs.append(("result", "passed" if report.get("passed") else "FAILED: " + "; ".join(failures)))
    text = format_kv(pairs)
    advice = report.get("quantizations") or []
    if advice:
        suited = [(a["quantization"], "yes" if a["suits"] else "no", a["why"]) for a in advice]
        text += "\n\n" + format_table(["quantization", "suits", "why (this model on this profile)"], suited)
    latency = report.get("latency") or {}
    if latency:
        rows = [(model, t["p50_ms"], t["p95_ms"], f"{t['batch_rows_per_s']:,.0f}") for model, t in latency.items()]
        text += "\n\n" + format_table(["host latency", "p50 ms", "p95 ms", "batch rows/s"], rows)
    return text
