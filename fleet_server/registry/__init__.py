"""The registry: model versions (bundles, TUF targets) and devices (enrollment, presence).

``models``        ``Registry``: validated bundles in, TUF targets and database rows out
``artifacts``     ``ArtifactStore``: where uploaded bundles and reports are kept by key
``bundle_cache``  published bundles read back, with a small LRU in front
``predict``       server-side inference of the registry's bundles (the hybrid path)
``devices``       ``Devices``: enrollment tokens, enrollment, labels, revocation, presence rows
``presence``      device presence parsed from MQTT messages, and the handler that stores it

Nothing is imported here, so importing one module does not pull in SQLAlchemy or ONNX Runtime.
"""
