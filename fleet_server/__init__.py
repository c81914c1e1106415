"""The edgefleet fleet server: model registry (a TUF repository), device enrollment and the REST API.

Where to start: ``fleet_server.app.create_app(config)`` builds the FastAPI application from a
``fleet_server.config.ServerConfig``; ``fleet_server.context.ServerContext`` wires storage, keys,
the TUF repository and the broker; ``fleet_server.cli.admin`` adds the ``edgefleet server|keys|models|devices``
commands. Heavy dependencies (FastAPI, SQLAlchemy, paho) are imported by the modules that need
them, not here, so ``import fleet_server`` stays cheap for the CLI. Every error the server raises
on purpose derives from ``ServerError`` (see ``fleet_server.errors``).
"""

from __future__ import annotations

from fleet_server.errors import ServerError

__all__ = ["ServerError"]
