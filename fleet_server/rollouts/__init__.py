"""Rollouts: a model version taken to the devices a selector matches, wave by wave.

``machine``      ``Rollout``: the pure rollout state machine (no database, broker or clock)
``waves``        selectors and seeded, stratified wave plans (pure)
``reports``      a device's ``reported`` document read for rollouts: what it serves, its last outcome (pure)
``assignments``  signed per-device assignments: issued, stored and published
``store``        a rollout as a header row plus one row per device, and the copy held in memory by revision
``engine``       ``RolloutEngine``: drives the machine from the database and the broker
``api``          the ``/api/v1/rollouts`` REST routes

Nothing is imported here, so importing one module does not pull in SQLAlchemy or FastAPI.
See docs/rollouts.md.
"""
