"""Alembic environment: runs migrations on the engine the server hands over.

There is no alembic.ini: ``fleet_server.db.alembic_config`` builds the configuration in code
and passes the engine in ``config.attributes["engine"]``, so the server, the tests and
``alembic`` itself all migrate the database the server is configured with. The target metadata
is ``fleet_server.tables.Base.metadata``, which holds every table of the server.
"""

from __future__ import annotations

from alembic import context

from fleet_server.tables import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations through fleet_server.db.upgrade, which provides the engine")

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
