"""Telemetry: what devices report, stored, read back as fleet views, scored and alerted on.

``ingest``       MQTT ``telemetry`` and ``events`` in, rows stored once per (device, sequence)
``views``        the stored telemetry read back: device columns, fleet drift, alert inputs
``drift``        fleet drift scores from devices' reference-bin counts (pure)
``alerts``       alert rules and their episodes (pure, time injected)
``alert_sinks``  where alert events go: the log, a webhook, a retraining command
``monitor``      the alert loop: rules against the stored data, episodes in the database
``metrics``      ``/metrics`` for Prometheus
``api``          the drift, server-side predict and ``/metrics`` REST routes

Nothing is imported here, so importing one module does not pull in SQLAlchemy or FastAPI.
See docs/telemetry.md.
"""
