"""The edgefleet fleet server: model registry (a TUF repository), device enrollment and the REST API.

Public surface: ``create_app`` (the FastAPI application), ``ServerConfig`` and the error base
``ServerError``. Heavy dependencies (FastAPI, SQLAlchemy, paho) are imported by the modules that
need them, not here, so ``import fleet_server`` stays cheap for the CLI.
"""

from __future__ import annotations

from fleet_server.errors import ServerError

__all__ = ["ServerError"]
