"""The queries of docker/monitoring (the Grafana dashboard and the Prometheus rules), and the
metric names a /metrics scrape exposes, for the tests that check one against the other."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parents[2] / "docker" / "monitoring"
DASHBOARD = MONITORING / "edgefleet-dashboard.json"
RULES = MONITORING / "edgefleet-rules.yml"
_NAME = re.compile(r"\b(edgefleet_[a-z0-9_]+)\b")
# What a dashboard variable stands for when a query is checked: any value.
VARIABLES = {"$model": ".*", "$version": ".*", "$by": ".*"}


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return list(_panels(dashboard()["panels"]))


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its variables' label_values."""
    queries = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), \w+\)", variable["query"]["query"])
            assert match, variable
            queries.append(match.group(1))
    return queries


def rule_queries() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def substituted(query: str) -> str:
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    return query


def metric_names(query: str) -> set[str]:
    return set(_NAME.findall(query))


def exposed(scrape: str) -> set[str]:
    """The series names a scrape offers: its samples, and what its families declare (a counter's
    ``_total``, a histogram's ``_bucket`` and ``_count``) even where they have no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names
