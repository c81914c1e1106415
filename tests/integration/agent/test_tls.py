"""mqtts:// against a real Mosquitto TLS listener: the agent trusts STATE_DIR/ca.pem and
refuses a broker whose certificate that CA did not sign."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.link import Backoff, Link
from simulation.fleet import MosquittoProcess

DEVICE = "dev-tls"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(directory: Path, label: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / f"{label}-ca.pem", directory / f"{label}-cert.pem", directory / f"{label}-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsBroker(MosquittoProcess):
    def __init__(self, workdir: Path, ca: Path, cert: Path, key: Path) -> None:
        super().__init__(None, workdir, auth=False, persistence=False)
        self.tls_files = ca, cert, key

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config_file = super()._write_config()
        ca, cert, key = self.tls_files
        with config_file.open("a") as config:
            config.write(f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
        return config_file


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[TlsBroker, Path]]:
    ca, cert, key = make_pki(tmp_path, "fleet")
    with TlsBroker(tmp_path / "tls-broker", ca, cert, key) as running:
        yield running, ca


def test_mqtts_connects_when_the_state_dirs_ca_signed_the_broker(broker: tuple[TlsBroker, Path]) -> None:
    running, ca = broker
    link = Link(DEVICE, running.url, ca_file=ca, backoff=Backoff(initial=0.1, maximum=0.3))
    link.start()
    try:
        assert link.wait_connected(10)
    finally:
        link.stop()


def test_mqtts_refuses_a_broker_signed_by_another_ca(broker: tuple[TlsBroker, Path], tmp_path: Path) -> None:
    running, _ = broker
    other_ca, _, _ = make_pki(tmp_path, "impostor")
    link = Link(DEVICE, running.url, ca_file=other_ca, backoff=Backoff(initial=0.1, maximum=0.3))
    link.start()
    try:
        assert not link.wait_connected(2)
    finally:
        link.stop()
