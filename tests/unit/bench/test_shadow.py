"""The shadow benchmark's report: the off/on table and the p99 budget's verdict (no processes)."""

from __future__ import annotations

from typing import Any

from bench.report import shadow_tables, targets


def _section(p99_on_16: float) -> dict[str, Any]:
    row = {"p50_off_ms": 0.2, "p50_on_ms": 0.21, "p99_off_ms": 1.0, "p99_on_ms": 0.9, "p99_ratio": 0.9}
    return {"model": "bench-mlp", "sample": 1.0, "repeats": 3, "duration_s": 1.0,
            "shadow_work": {"compared": 10.0, "skipped": 5.0},
            "summary": {"1": row, "16": {**row, "p99_on_ms": p99_on_16, "p99_ratio": p99_on_16 / 1.0}}}


def test_the_table_puts_off_and_on_side_by_side() -> None:
    (table,) = shadow_tables(_section(1.05))
    assert table.headers == ("clients", "p50 off ms", "p50 on ms", "p99 off ms", "p99 on ms", "p99 on/off")
    assert [row[0] for row in table.rows] == ["1", "16"]
    assert "10 compared, 5 shed" in table.title


def test_the_p99_budget_is_met_up_to_ten_percent_and_missed_above() -> None:
    def verdicts(p99: float) -> list[bool | None]:
        doc = {"benchmarks": {"shadow": _section(p99)}}
        return [t.met for t in targets(doc) if t.target.startswith("served p99 with shadow on")]

    assert verdicts(1.1) == [True, True]
    assert verdicts(1.2) == [True, False]
    assert [t.met for t in targets({"benchmarks": {}}) if "shadow" in t.target] == [None, None]
