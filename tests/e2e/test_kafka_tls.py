"""Workers, the client and the CLI reach a broker over TLS (PAYSTREAM_KAFKA_SECURITY_
PROTOCOL=SSL) and check its certificate: every connection passes a TLS-terminating proxy
in front of the test's own broker, which advertises the proxy's port (the embedded
broker has no TLS listener of its own). Before, every client connected PLAINTEXT and
anonymous, with no way to say otherwise (review finding)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from paystream.cli import cli
from paystream.settings import load_settings
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth
from tests.e2e.proxied_stack import proxied_stack
from tests.e2e.threaded_proxy import ThreadedProxy

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "tls-a"


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(hours=1)}
    valid["not_valid_after"] = now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paystream test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, **valid)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")])
    cert = (
        x509.CertificateBuilder(subject_name=name, issuer_name=ca_name, **valid)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_workers_and_clients_reach_the_broker_over_tls(
    deployment_factory: Any, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    tls = {
        "paystream_kafka_security_protocol": "SSL",
        "paystream_kafka_ssl_cafile": str(ca),
    }
    terminating = lambda port: ThreadedProxy(port, ssl=server)  # noqa: E731
    async with proxied_stack(deployment_factory, terminating, TENANT, **tls) as stack:
        dep = stack.dep
        broker = dep.settings.require_broker()
        with dep.worker() as worker:
            worker.wait_ready([TENANT], partitions=dep.settings.partitions)
            async with dep.client() as client:
                out = await client.command("customer.create", TENANT, {}, timeout=60)
                assert out.get_type() == "com.paystream.customer.created"
            # The CLI too (its own clients: tenants, send).
            listed = await asyncio.to_thread(
                CliRunner().invoke, cli, ["tenants", "list"], env=dep.env
            )
            assert listed.exit_code == 0 and TENANT in listed.output, listed.output
        # A client without TLS gets no answer it can read; one that trusts another CA
        # refuses the broker's certificate.
        (tmp_path / "other").mkdir()
        other_ca = _certificates(tmp_path / "other")[0]
        for settings in (
            load_settings(kafka_broker_url=broker),
            load_settings(
                kafka_broker_url=broker, kafka_security_protocol="SSL", kafka_ssl_cafile=other_ca
            ),
        ):
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(broker),
                request_timeout_ms=3000,
                **client_auth(settings),
            )
            with pytest.raises(KafkaConnectionError):
                await producer.start()
            await producer.stop()
