"""A real fleet for end-to-end tests: Mosquitto, `edgefleet server` and agent processes.

Built from simulation/fleet.py (the same code the demo runs); the model is the converter's
digits MLP as ONNX for rpi4-64 (tests/support/bundles.py), one version per call of ``push``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet_server.cli.client import AdminClient, ClientSettings
from simulation.fleet import AgentProcess, MosquittoProcess, ServerProcess, Supervisor, wait_until
from tests.support.bundles import make_onnx_bundle

# States a rollout does not leave by itself; a halted one may still be rolled back or aborted.
_FINAL = frozenset({"completed", "aborted", "rolled_back"})


def _ended(wanted: str) -> frozenset[str]:
    """The states from which a rollout never reaches ``wanted`` without an operator."""
    return _FINAL | {"halted"} if wanted == "completed" else _FINAL

PROFILE = "rpi4-64"


class Stack:
    def __init__(self, root: Path, *, broker_hosts: Sequence[str] = (), server_env: dict[str, str] | None = None,
                 server_port: int | None = None, broker_port: int | None = None) -> None:
        self.root = root
        self.supervisor = Supervisor(root / "logs")
        self.broker = MosquittoProcess(self.supervisor, root / "mosquitto", extra_hosts=broker_hosts,
                                       port=broker_port).start()
        self.server = ServerProcess(self.supervisor, root / "server", broker=self.broker, env=server_env,
                                    port=server_port).start()
        self.admin = AdminClient(ClientSettings(self.server.url, self.server.admin_token), timeout=30)
        self.agents: list[AgentProcess] = []

    def add_agents(self, n: int, **agent_options: Any) -> list[AgentProcess]:
        made = []
        for _ in range(n):
            name = f"dev-{len(self.agents):02d}"
            token = self.admin.create_enrollment_token(PROFILE, {"site": "e2e"}, 900)["token"]
            # No prediction traffic in these tests: a short probation that needs no requests.
            options = {"probation_s": 1.0, "probation_min_requests": 0, **agent_options}
            agent = AgentProcess(self.supervisor, name, self.root / "devices" / name, **options)
            agent.enroll(self.server.url, token).start()
            self.agents.append(agent)
            made.append(agent)
        wait_until(lambda: self.online() >= len(self.agents), 60, "every agent online at the server")
        return made

    def online(self) -> int:
        return sum(1 for d in self.admin.list_devices() if d["online"])

    def push(self, version: str) -> None:
        bundle = make_onnx_bundle(self.root / "bundles", version=version, profile=PROFILE, quantize="none")
        self.admin.push_model(bundle)

    def rollout(self, version: str, *, waves: Sequence[float] = (100.0,), bake_s: float = 1.0,
                timeout_s: float = 120.0) -> dict[str, Any]:
        body = {"model": "digits", "version": version, "selector": "site=e2e", "waves": list(waves),
                "bake_seconds": bake_s, "max_failure_rate": 0.0, "min_success_rate": 1.0,
                "device_timeout_seconds": timeout_s, "seed": 1}
        return dict(self.admin.request("POST", "/api/v1/rollouts", json=body))

    def view(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.admin.request("GET", f"/api/v1/rollouts/{rollout_id}", params={"devices": "true"}))

    def wait_state(self, rollout_id: str, state: str, timeout: float = 90.0) -> dict[str, Any]:
        """The rollout's view once it is in ``state``; a rollout that ends in another state fails at once,
        with its halt reason and the first wave's stage (waiting out the timeout would hide both)."""
        def reached() -> dict[str, Any] | None:
            view = self.view(rollout_id)
            if view["state"] != state and view["state"] in _ended(state):
                stage = view["waves"][0].get("stage") if view["waves"] else None
                raise AssertionError(f"rollout {rollout_id} ended {view['state']}, not {state}: "
                                     f"{view['halt_reason']!r}; first wave's stage: {stage}")
            return view if view["state"] == state else None

        found: dict[str, Any] = wait_until(reached, timeout, f"rollout {rollout_id} to be {state}", every=0.3)
        return found

    def versions(self) -> dict[str, str | None]:
        """What every device reports running, by device id."""
        return {d["id"]: ((d.get("reported") or {}).get("models") or {}).get("digits", {}).get("version")
                for d in self.admin.list_devices()}

    def close(self) -> None:
        self.admin.close()
        self.supervisor.stop_all()
