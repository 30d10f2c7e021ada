"""How every Kafka client of paystream connects: TLS and a SASL login from settings.

One place builds them, for Faust (``broker_credentials``) and for the aiokafka clients
the CLI, the client and the agents make themselves, so that a worker and a `paystream
send` never connect differently (tests hold the two against Faust's own mapping).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from paystream.errors import ConfigurationError
from paystream.settings import KafkaSecurityProtocol, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = ["client_auth", "faust_credentials"]

_SASL = (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)
_TLS = (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)


def client_auth(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin, client)."""
    protocol = settings.kafka_security_protocol
    auth: dict[str, Any] = {"security_protocol": protocol.value}
    if protocol in _TLS:
        auth["ssl_context"] = _ssl_context(settings)
    if protocol in _SASL:
        password = settings.kafka_sasl_password
        auth["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        auth["sasl_plain_username"] = settings.kafka_sasl_username
        auth["sasl_plain_password"] = password.get_secret_value() if password else None
    return auth


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the configured protocol (None: PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials  # (Faust: the worker only)

    auth = client_auth(settings)
    protocol = settings.kafka_security_protocol
    if protocol is KafkaSecurityProtocol.PLAINTEXT:
        return None
    if protocol is KafkaSecurityProtocol.SSL:
        return SSLCredentials(auth["ssl_context"])
    return SASLCredentials(
        username=auth["sasl_plain_username"],
        password=auth["sasl_plain_password"],
        ssl_context=auth.get("ssl_context"),  # (with one, Faust says SASL_SSL)
        mechanism=auth["sasl_mechanism"],
    )


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client context that checks the brokers' certificates and host names."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        )
        if settings.kafka_ssl_certfile is not None:
            keyfile = settings.kafka_ssl_keyfile
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile), str(keyfile) if keyfile else None
            )
    except (OSError, ssl.SSLError) as exc:  # a missing or unreadable file: say which
        raise ConfigurationError(f"Kafka TLS files (PAYSTREAM_KAFKA_SSL_*): {exc}") from exc
    return context
