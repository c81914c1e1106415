"""The MQTT broker side of the server: its connection, the broker's accounts, the embedded broker.

``connection``  ``FleetMqtt``: the server's paho-mqtt connection (subscribe, publish)
``accounts``    the ``BrokerAccounts`` seam: who may talk to the broker (Mosquitto or unmanaged)
``auth``        Mosquitto's password and ACL files, rendered and reloaded
``embedded``    the embedded amqtt broker for a server started without ``--broker``
``nats_ingest`` ``JetStreamIngest``: device messages from a NATS cluster's JetStream stream, acked after commit
``nats_auth``   ``AuthCallout``: per-device permissions on a NATS cluster, answered at each CONNECT

This package knows nothing of devices' rows or payloads: the registry tells it who may
connect, and handlers given to ``FleetMqtt`` parse what arrives. Nothing is imported here.
"""
