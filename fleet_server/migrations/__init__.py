"""Alembic migrations for the fleet server's database (run by ``fleet_server.db.upgrade``)."""
