"""The device install stays small: agent/ never imports the server, the converter or heavy stacks."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[3] / "agent"
SHARED_PARSER = AGENT.parent / "edgefleet" / "inputs.py"  # the agent's request parser lives in the core
FORBIDDEN = ("fleet_server", "converter", "tensorflow", "sqlalchemy", "fastapi", "uvicorn", "sklearn", "onnx",
             "httpx", "pydantic", "alembic", "psycopg", "prometheus_client")


def test_no_agent_module_imports_the_server_or_the_converter() -> None:
    for path in [*sorted(AGENT.glob("*.py")), SHARED_PARSER]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_every_agent_module_loads_no_heavy_stack() -> None:
    modules = [f"agent.{p.stem}" for p in sorted(AGENT.glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_the_agent_cli_loads_no_runtime_until_a_handler_runs() -> None:
    code = ("import json, sys, agent.cli\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert not loaded & {"numpy", "onnxruntime", "paho", "tuf", *FORBIDDEN}


def test_the_public_surface_is_what_we_meant_and_resolves() -> None:
    import agent

    assert agent.__all__ == ["AgentError", "ModelSession", "ModelStore", "PredictionResult", "ServingStats",
                             "ServingTable", "Slot", "StateDir", "load_session"]
    for name in agent.__all__:
        assert getattr(agent, name).__name__ == name


def test_a_daemon_without_mqtt_never_loads_the_update_path() -> None:
    # agent.daemon imports agent.update_service only when it has a link: tuf and cryptography
    # cost an offline agent 15 MB of RSS.
    code = ("import json, sys, agent.daemon\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert not loaded & {"tuf", "cryptography"}, loaded & {"tuf", "cryptography"}
