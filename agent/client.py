"""A small client for the local API over the agent's Unix socket (``agent status``, reload).

Standard library only (http.client over AF_UNIX). It is for the CLI talking to its own
daemon, not a general SDK: applications can use any HTTP client against the same API.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from agent.errors import AgentError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class DaemonUnavailable(AgentError):
    """No daemon answers on the state directory's socket."""


def request_json(socket_path: Path, method: str, path: str, body: Any = None, *, timeout: float = 5.0) -> tuple[int, Any]:
    """One request to the daemon; returns (status, decoded JSON)."""
    connection = _UnixConnection(Path(socket_path), timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DaemonUnavailable(f"no agent answers on {socket_path} ({exc})",
                                fix="start it: edgefleet agent run (or systemctl start edgefleet-agent)") from exc
    finally:
        connection.close()
