"""The edgefleet fleet server: registry, trust, rollouts, telemetry, the REST API and its CLI.

Where to start: ``fleet_server.app.create_app(config)`` builds the FastAPI application from a
``fleet_server.config.ServerConfig``; ``fleet_server.context.ServerContext`` wires storage, keys,
the TUF repository and the broker; ``fleet_server.cli`` adds the ``edgefleet server``, ``keys``,
``models``, ``devices`` and ``rollouts`` commands. The top level holds what every part shares
(``api``, ``db``, ``tables``, ``errors``, ``credentials``, ``backlog``, ``config``); one sub-package
per concept holds the rest:

    trust/      signing keys, the TUF repository, key rotation
    broker/     the server's MQTT connection, broker accounts, the embedded broker
    registry/   model versions and their bundles; devices, enrollment and presence
    rollouts/   the rollout state machine, wave plans, signed assignments, the engine
    telemetry/  ingest, fleet views, drift, alerts, /metrics
    cli/        the commands and the REST client they use

docs/architecture.md says which may import which. Heavy dependencies (FastAPI, SQLAlchemy, paho)
are imported by the modules that need them, not here, so ``import fleet_server`` stays cheap for
the CLI. Every error the server raises on purpose derives from ``ServerError`` (see
``fleet_server.errors``).
"""

from __future__ import annotations

from fleet_server.errors import ServerError

__all__ = ["ServerError"]
