"""The edgefleet agent: the daemon that runs on each Raspberry Pi or Jetson.

    state      the state directory (identity, credentials, profile, paths)
    slots      model slots on disk, the active/previous pointers, rollback
    runtime    ONNX Runtime and TFLite/LiteRT sessions with real-number outputs by role
    inputs     request input to a checked float32 matrix
    serving    the session table that swaps models without failing a request
    api        the local HTTP/1.1 API on loopback TCP and a Unix socket
    link       the MQTT link to the fleet server (presence, desired, commands)
    enroll     redeeming an enrollment token for the device's trust bundle
    install    installing a bundle file locally (development)
    batch      batch prediction over CSV, NPY and Parquet files
    daemon     ``edgefleet agent run``: all of the above together

The agent never imports fleet_server/ or converter/, and imports its runtimes lazily so that
``pip install edgefleet[agent]`` stays small. Names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StateDir": "agent.state",
    "ModelStore": "agent.slots",
    "Slot": "agent.slots",
    "load_session": "agent.runtime",
    "ModelSession": "agent.runtime",
    "ServingTable": "agent.serving",
    "PredictionResult": "agent.serving",
    "ServingStats": "agent.serving",
    "AgentError": "agent.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
