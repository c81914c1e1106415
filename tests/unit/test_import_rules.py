"""The import rules of docs/architecture.md, checked on every module's syntax tree.

A rule broken anywhere fails here, naming the module, the line and the rule: the agent stays
free of the server and the converter, the core imports none of the parts built on it, no
shipped package imports the tests, and fleet_server's sub-packages import each other one way.
Every import counts: at module level, inside a function (the lazy imports), relative, and
``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edgefleet", "agent", "fleet_server", "converter", "simulation", "bench", "firmware_profiles")

# package -> top-level packages it must never import
FORBIDDEN = {
    "edgefleet": {"agent", "fleet_server", "converter", "simulation", "bench", "tests"},
    "agent": {"fleet_server", "converter", "tests"},
    "converter": {"tests"},
    "fleet_server": {"tests"},
    "simulation": {"tests"},
    "bench": {"tests"},
    "firmware_profiles": {"tests"},
}
# fleet_server sub-package -> the sub-packages it may import (the shared top-level modules are free)
FLEET_SERVER_LAYERS = {
    "trust": set(),
    "broker": {"trust"},
    "registry": {"broker", "trust"},
    "telemetry": {"registry", "broker", "trust"},
    "rollouts": set(),
    "cli": {"trust"},
    "console": set(),  # a client of /api/v1 only (issue 16): no second path to the database
    "migrations": set(),
}


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """The dotted name of a source file under ``root``, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imported(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every (line, absolute module name) the module imports; ``from a import b`` yields a and a.b."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A module's level 1 is its package; a package __init__'s level 1 is itself.
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"}))):
            yield node.lineno, node.args[0].value


def broken_rule(importer: str, target: str) -> str | None:
    """Why ``importer`` may not import ``target``, or None if it may."""
    package, target_top = importer.split(".")[0], target.split(".")[0]
    if target_top in FORBIDDEN.get(package, set()):
        return f"{package}/ never imports {target_top}/"
    mine, theirs = importer.split("."), target.split(".")
    if package == "fleet_server" == target_top and len(mine) > 1 and len(theirs) > 1:
        sub, other = mine[1], theirs[1]
        if sub in FLEET_SERVER_LAYERS and other in FLEET_SERVER_LAYERS and other != sub \
                and other not in FLEET_SERVER_LAYERS[sub]:
            return f"fleet_server/{sub}/ never imports fleet_server/{other}/ (docs/architecture.md)"
    return None


def violations(root: Path) -> list[str]:
    """One line per import statement that breaks a rule: ``path:line imports module: rule``."""
    found: dict[tuple[str, int, str], str] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "results" in path.relative_to(root).parts:  # bench/results: measurements, not code
                continue
            name, is_package = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for line, target in imported(tree, name, is_package):
                rule = broken_rule(name, target)
                if rule:
                    found.setdefault((str(path.relative_to(root)), line, rule), target)
    return [f"{where}:{line} imports {target}: {rule}" for (where, line, rule), target in sorted(found.items())]


def test_the_tree_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


BROKEN = [
    ("agent/link.py", "from fleet_server.api import require_admin\n", "agent/ never imports fleet_server/"),
    ("agent/link.py", "import converter.cli\n", "agent/ never imports converter/"),
    ("agent/link.py", "def lazy():\n    import fleet_server.app\n", "agent/ never imports fleet_server/"),
    ("agent/link.py", "import importlib\nimportlib.import_module('converter')\n", "agent/ never imports converter/"),
    ("edgefleet/topics.py", "from agent import slots\n", "edgefleet/ never imports agent/"),
    ("edgefleet/topics.py", "import fleet_server\n", "edgefleet/ never imports fleet_server/"),
    ("bench/ingest.py", "from tests.support.mosquitto import MosquittoBroker\n", "bench/ never imports tests/"),
    ("simulation/fleet.py", "def f():\n    from tests import support\n", "simulation/ never imports tests/"),
    ("fleet_server/rollouts/engine.py", "from fleet_server.registry.devices import Devices\n",
     "fleet_server/rollouts/ never imports fleet_server/registry/"),
    ("fleet_server/broker/connection.py", "from ..telemetry import ingest\n",
     "fleet_server/broker/ never imports fleet_server/telemetry/"),
    ("fleet_server/registry/__init__.py", "from ..telemetry import views\n",
     "fleet_server/registry/ never imports fleet_server/telemetry/"),
    ("fleet_server/trust/keys.py", "from fleet_server import broker\n",
     "fleet_server/trust/ never imports fleet_server/broker/"),
]

ALLOWED = [
    ("agent/link.py", "import edgefleet.topics\nfrom agent.state import StateDir\n"),
    ("fleet_server/telemetry/views.py", "from fleet_server.registry.bundle_cache import BundleCache\n"),
    ("fleet_server/rollouts/engine.py", "from fleet_server.db import Database\nfrom . import machine\n"),
    ("fleet_server/context.py", "from fleet_server.rollouts.engine import RolloutEngine\n"),
    ("bench/ingest.py", "import simulation.fleet\nimport tests_of_the_bench\n"),
    ("edgefleet/topics.py", "import json\n"),
]


def _tree(tmp_path: Path, relative: str, source: str) -> Path:
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("relative", "source", "rule"), BROKEN)
def test_a_broken_rule_is_reported(tmp_path: Path, relative: str, source: str, rule: str) -> None:
    found = violations(_tree(tmp_path, relative, source))
    assert len(found) == 1 and found[0].startswith(relative) and rule in found[0], found


@pytest.mark.parametrize(("relative", "source"), ALLOWED)
def test_an_allowed_import_is_not_reported(tmp_path: Path, relative: str, source: str) -> None:
    assert violations(_tree(tmp_path, relative, source)) == []
