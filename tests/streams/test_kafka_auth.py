"""The Kafka login and TLS settings: a half-given one is refused (it would be dropped
without a word, the connection made PLAINTEXT and anonymous all the same), and the
aiokafka clients paystream makes connect as Faust's own would (Faust's mapping)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from paystream.app import create_app
from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.streams.kafka_auth import client_auth, faust_credentials
from tests.e2e.test_kafka_tls import _certificates


def test_a_half_given_kafka_login_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SASL_USERNAME"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u")
    with pytest.raises(ConfigurationError, match="set SASL_SSL"):
        load_settings(kafka_sasl_username="u", kafka_sasl_password="p")
    with pytest.raises(ConfigurationError, match="in clear"):
        load_settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        )
    with pytest.raises(ConfigurationError, match="set SSL or SASL_SSL"):
        load_settings(kafka_ssl_cafile=str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigurationError, match="KEYFILE needs"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=str(tmp_path / "k.pem"))
    missing = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "no"))
    with pytest.raises(ConfigurationError, match="PAYSTREAM_KAFKA_SSL_"):
        client_auth(missing)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("PLAINTEXT", None),
        ("SSL", None),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ],
)
def test_clients_connect_as_faust_does(tmp_path: Path, protocol: str, mechanism: str) -> None:
    ca, cert, key = _certificates(tmp_path)
    fields: dict[str, object] = {"kafka_security_protocol": protocol}
    if "SSL" in protocol:
        fields |= {"kafka_ssl_cafile": ca, "kafka_ssl_certfile": cert, "kafka_ssl_keyfile": key}
    if mechanism:
        fields |= {
            "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": "paystream-worker",
            "kafka_sasl_password": "s3cret",
        }
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9093", **fields)
    ours = client_auth(settings)
    faust = dict(credentials_to_aiokafka_auth(faust_credentials(settings)))
    assert ours["security_protocol"] == protocol
    # A context that checks the broker's certificate and name, where TLS is on.
    context = ours.pop("ssl_context", None)
    assert (context is not None) == ("SSL" in protocol)
    if context is not None:
        assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    assert (faust.pop("ssl_context", None) is not None) == ("SSL" in protocol)
    assert ours == faust
    # The worker's Faust app is given them (its consumer, producer and topic creation).
    given = create_app(settings).conf.broker_credentials
    assert given is None if protocol == "PLAINTEXT" else given.protocol.value == protocol
