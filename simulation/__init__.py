"""The main job and the fleet simulator: real processes, real brokers, real devices or light ones.

    demo.py         ``edgefleet demo``: the whole story (convert, enroll, roll out, halt and roll
                    back, drift, retrain) with real processes, checked step by step
    simulate.py     ``edgefleet simulate``: a fleet, a rollout, injected faults, a report
    fleet.py        the processes: Mosquitto, ``edgefleet server``, ``edgefleet agent``, and the
                    supervisor that leaves none behind
    faults.py       which faults, in whom, when (pure)
    report.py       latency, failures, lost and duplicated messages (pure)
    load.py         prediction traffic through the agents' local APIs
    bundles.py      the demo's model versions, including one whose golden samples disagree
    lightdevice.py  hundreds to thousands of light devices in one process: real MQTT and
                    signatures, no model runtime

The package exports the light-device API; the rest is used through the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported on first use: `edgefleet` imports this package for every command (simulation.cli).
__getattr__ = lazy_exports(__name__, globals(), dict.fromkeys(__all__, "simulation.lightdevice"))
