"""The server's MQTT link over TLS (mqtts://) to a real Mosquitto, verifying the broker's certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet_server.context import ServerContext
from simulation.fleet import mosquitto_binary
from tests.integration.server.harness import free_port, server_config


def _cert(subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None,
          *, ca: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    ca_key, ca_cert = _cert("edgefleet test CA", None, None, ca=True)
    key, cert = _cert("127.0.0.1", ca_key, ca_cert.subject, ca=False)
    ca = _pem(tmp_path / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    crt = _pem(tmp_path / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    pkey = _pem(tmp_path / "server.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", f"cafile {ca}", f"certfile {crt}", f"keyfile {pkey}",
             "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # keep read access to the 0600 key in pytest's 0700 tmp dir
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "mosquitto exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto (TLS) did not listen"
                time.sleep(0.05)
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(5)


def test_server_connects_over_tls_with_the_ca(tls_broker: tuple[int, Path], tmp_path: Path) -> None:
    port, ca = tls_broker
    config = server_config(tmp_path / "data", broker_url=f"mqtts://127.0.0.1:{port}", broker_ca_file=ca)
    ctx = ServerContext.open(config)
    try:
        ctx.start_network(wait_connected=10)
        assert ctx.mqtt.connected.is_set()
    finally:
        ctx.close()


def test_server_refuses_a_broker_certificate_it_cannot_verify(tls_broker: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_broker
    config = server_config(tmp_path / "data", broker_url=f"mqtts://127.0.0.1:{port}")  # system CAs only
    ctx = ServerContext.open(config)
    try:
        ctx.start_network(wait_connected=2)
        assert not ctx.mqtt.connected.is_set()
    finally:
        ctx.close()
