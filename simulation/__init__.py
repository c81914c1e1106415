"""Simulated devices for large fleets: real MQTT, real signatures, no model runtime.

``simulation.lightdevice`` runs hundreds to thousands of light devices in one process. Each
speaks the real MQTT protocol to the real broker with its own credentials, verifies the
real director signature on its assignments, and answers with the events a real agent sends.
It deliberately does not load models or run inference: the real agent (``agent/``) is the
thing to use when that matters.
"""

from __future__ import annotations

from simulation.lightdevice import (
    Behaviour,
    DeviceIdentity,
    LightDevice,
    LightFleet,
    Outcome,
    SimulationError,
    Step,
    plan_update,
)

__all__ = [
    "Behaviour",
    "DeviceIdentity",
    "LightDevice",
    "LightFleet",
    "Outcome",
    "SimulationError",
    "Step",
    "plan_update",
]
