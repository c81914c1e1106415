"""docker/monitoring: the Prometheus rules equal the built-in drift rules; the dashboard's queries parse.

The thresholds in the PromQL are read back and compared with ``fleet_server.telemetry.alerts``
(``DRIFT_BANDS``, ``DEFAULT_DRIFT_MIN_ROWS``), and the rules are run by promtool on a sequence of
drift figures beside the built-in ``AlertEvaluator`` on the same sequence: both must fire and
resolve at the same steps (hysteresis, the edges themselves, too few rows neither firing nor
resolving). Every query of the Grafana dashboard is parsed by promtool (as a recording rule), and
its drift panels mark the built-in bands. That each query names series the server or the agent
exposes is checked against real scrapes (tests/integration/telemetry/test_prometheus.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.telemetry import DRIFT_ABOVE, STABLE_BELOW
from fleet_server.telemetry.alerts import (
    DEFAULT_DRIFT_MIN_ROWS,
    DRIFT_BANDS,
    AlertEvaluator,
    Observation,
    Rule,
)
from tests.support.monitoring import RULES, dashboard_panels, dashboard_queries, substituted

LABELS = {"model": "digits", "version": "1.0.0", "by": "label:site", "group": "site=b"}


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def thresholds(expr: str) -> tuple[float, float, int]:
    """(fire above, resolve below, min rows) as the expression has them."""
    fire = re.findall(r"\(edgefleet_model_drift_psi_max\) > ([0-9.]+)", expr)
    resolve = re.findall(r"\(edgefleet_model_drift_psi_max\) >= ([0-9.]+)", expr)
    judged = re.findall(r"\(edgefleet_model_drift_rows\) >= ([0-9]+)", expr)
    too_few = re.findall(r"\(edgefleet_model_drift_rows\) < ([0-9]+)", expr)
    assert len(fire) == len(resolve) == len(judged) == len(too_few) == 1, expr
    assert judged == too_few, expr
    return float(fire[0]), float(resolve[0]), int(judged[0])


def test_every_built_in_drift_band_has_a_rule_with_its_thresholds() -> None:
    rules = alert_rules()
    assert sorted(r["labels"]["band"] for r in rules) == sorted(DRIFT_BANDS)
    for rule in rules:
        fire, resolve = DRIFT_BANDS[rule["labels"]["band"]]
        assert thresholds(rule["expr"]) == (fire, resolve, DEFAULT_DRIFT_MIN_ROWS), rule["alert"]
        assert "for" not in rule  # the built-in rules' for_s defaults to 0
        assert f'ALERTS{{alertname="{rule["alert"]}", alertstate="firing"}}' in rule["expr"]  # its own hysteresis


# (max PSI, rows) per minute: around each band's edges, with and without enough rows.
SEQUENCE = [(0.05, 500), (0.3, 100), (0.3, 500), (0.2, 500), (0.1, 500), (0.3, 100), (0.04, 100), (0.04, 500),
            (0.26, 200), (0.25, 500), (0.09, 500), (0.25, 500), (0.11, 199), (0.11, 200), (0.06, 500),
            (0.05, 500), (0.049, 500), (0.1, 500), (0.5, 0), (0.0, 0)]


def built_in_states(band: str) -> list[bool]:
    """Whether the built-in rule of ``band`` is firing after each step of ``SEQUENCE``."""
    rule = Rule.from_dict({"name": band, "kind": "drift", "band": band})
    evaluator = AlertEvaluator([rule])
    states = []
    for minute, (psi, rows) in enumerate(SEQUENCE):
        evaluator.evaluate([Observation("drift", "digits@1.0.0 site=b", psi, rows=rows)], now=60.0 * minute)
        states.append(bool(evaluator.active()))
    return states


def expected_alert(rule: dict[str, Any]) -> dict[str, Any]:
    def filled(template: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: LABELS[m.group(1)], template)

    return {"exp_labels": {**LABELS, **rule["labels"]},
            "exp_annotations": {k: filled(v) for k, v in rule["annotations"].items()}}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: sudo apt-get install -y --no-install-recommends prometheus "
                    "(scripts/test installs it when run as root)")
    return found


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) > 10
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": substituted(q)}
                                                        for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_dashboard_drift_panels_mark_the_built_in_bands() -> None:
    drift = [p for p in dashboard_panels() if "drift_psi_max" in json_of(p)]
    assert len(drift) == 2  # the fleet's groups, and the agents'
    for panel in drift:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, STABLE_BELOW, DRIFT_ABOVE], panel["title"]


def json_of(panel: dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in panel.get("targets", []))


def test_promtool_fires_and_resolves_the_rules_where_the_built_in_evaluator_does(tmp_path: Path) -> None:
    selector = ",".join(f'{k}="{v}"' for k, v in LABELS.items())
    cases = []
    for rule in alert_rules():
        states = built_in_states(rule["labels"]["band"])
        assert True in states and states.count(False) > 1  # the sequence exercises this band
        cases += [{"eval_time": f"{minute}m", "alertname": rule["alert"],
                   "exp_alerts": [expected_alert(rule)] if firing else []} for minute, firing in enumerate(states)]
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # two replicas report the same figure: the rules fold them
            *({"series": f"edgefleet_model_drift_psi_max{{{selector},instance=\"{i}\"}}",
               "values": " ".join(str(psi) for psi, _ in SEQUENCE)} for i in ("a", "b")),
            *({"series": f"edgefleet_model_drift_rows{{{selector},instance=\"{i}\"}}",
               "values": " ".join(str(rows) for _, rows in SEQUENCE)} for i in ("a", "b")),
        ],
        "alert_rule_test": cases,
    }]}
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
