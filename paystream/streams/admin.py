"""Create paystream's topics explicitly before workers start (brokers may auto-create wrongly)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from paystream.settings import Settings
from paystream.streams.kafka_auth import client_auth

__all__ = [
    "RECORD_MAX_BYTES",
    "TABLE_NAMES",
    "TopicCreationError",
    "bootstrap_servers",
    "changelog_configs",
    "changelog_topics",
    "durability_configs",
    "ensure_topics",
    "large_record_topics",
    "record_limits",
    "topic_partitions",
    "undersized_topics",
]

#: The largest record paystream writes: a dead letter keeps its command (up to 768 KiB)
#: with headers saying why, a table changelog value reaches 512 KiB. Every topic it
#: writes must accept one (Kafka's default, message.max.bytes 1048588, does); a smaller
#: limit fails the batch holding such a record on every redelivery.
RECORD_MAX_BYTES = 1024 * 1024


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:9092;h2:9092`` → ``h1:9092,h2:9092`` for aiokafka."""
    return ",".join(s for s in url.removeprefix("kafka://").split(";") if s)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """``topic``'s partitions ([] if it does not exist), asked of the cluster.

    Not ``consumer.partitions_for_topic``: a consumer that has not subscribed has asked
    Kafka for no topic's metadata (the embedded broker answers such a request with every
    topic, which hid this), and ``consumer.topics()`` fills a copy that the consumer
    never reads. Nor a request naming the topic: a broker may auto-create it.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]


# The broker stamps each command with the time it was appended: the tenant limits'
# clock, which a producer could otherwise set to any past time (stepping back a day
# at a time, every day's quota again). The embedded broker ignores it (doctor says so).
COMMAND_TIMESTAMPS = {"message.timestamp.type": "LogAppendTime"}


# Parked commands and dead letters wait for a person, however long that takes: the
# broker's default retention (7 days on Kafka) would delete a parked payment the
# provider may have charged, unseen by `dlq list`. A replay commits past what it re-sent.
KEPT_UNTIL_HANDLED = {"retention.ms": "-1", "retention.bytes": "-1"}


def durability_configs(settings: Settings) -> dict[str, str]:
    """What every topic paystream writes needs beside its replication factor: workers
    produce with acks=all and commit a command once its outcome and state are acknowledged,
    but acks=all waits only for the replicas in sync, which Kafka's default
    (min.insync.replicas=1) lets shrink to the leader alone: an acknowledged write on one
    disk. With three replicas or more, two must have it (a write fails instead, and is
    retried)."""
    return {"min.insync.replicas": "2"} if settings.replication_factor >= 3 else {}


# The tables (tables/definitions.py, agents/insights.py), whose changelogs are
# "<app id>-<name>-changelog": topics paystream writes as it writes its own.
TABLE_NAMES = (
    "customers",
    "payment_methods",
    "payments",
    "refunds",
    "disputes",
    "subscriptions",
    "invoices",
    "payouts",
    "tax_rates",
    "tax_calculations",
    "connected_accounts",
    "transfers",
    "idempotency",
    "limits",
    "insights",
    "insights_seen",
)


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelog topics of this app id (not another deployment's)."""
    return [f"{settings.app_id}-{name}-changelog" for name in TABLE_NAMES]


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Configs a table's changelog is made with (Faust declares it): durable writes, and
    the tombstone of a deleted key kept after compaction well past the age at which a
    worker's store of it is rebuilt rather than caught up (tables/stale_stores.py): a
    day at least, as Kafka's default, whatever a broker's own default says."""
    keep_ms = max(24 * 3600, 2 * settings.table_store_max_age_seconds) * 1000
    return {
        **durability_configs(settings),
        "delete.retention.ms": str(keep_ms),
        # A key's older values (an erased customer's data among them) compacted away
        # within a week, not whenever the cleaner gets to a quiet segment (review h59j).
        "max.compaction.lag.ms": str(CHANGELOG_COMPACTION_LAG_MS),
    }


# How long a changelog keeps a key's superseded values at most (Kafka rolls the active
# segment for it).
CHANGELOG_COMPACTION_LAG_MS = 7 * 24 * 3600 * 1000


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """Configs a paystream topic is created with."""
    configs = durability_configs(settings)
    if name in (settings.tenants_topic, settings.replay_positions_topic):
        configs["cleanup.policy"] = "compact"
    elif name == settings.commands_topic:
        configs.update(COMMAND_TIMESTAMPS)
    elif name in (settings.retry_topic, settings.dlq_topic, settings.ledger_dlq_topic):
        configs.update(KEPT_UNTIL_HANDLED)
    return configs


async def ensure_topics(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """Create any missing paystream topic; returns the names that were created.

    Raises :class:`TopicCreationError` when the existing commands or events topic has
    another partition count than ``PAYSTREAM_PARTITIONS``: workers started with that
    setting would wait for partitions that do not exist (an upgrade that changed it, run as
    the setup step, must stop there)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.require_broker()), **client_auth(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await _check_partition_counts(admin, settings, existing)
        wanted = [*settings.topic_names(), *(extra or [])]
        new = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=topic_configs(settings, name),
            )
            for name in wanted
            if name not in existing
        ]
        if new:
            # another process may win the race to create a topic; that is fine
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(new)
                _raise_failures(response.topic_errors)
        return [t.name for t in new]
    finally:
        await admin.close()


class TopicCreationError(RuntimeError):
    """The broker refused to create some topics (the answer names each and why), or
    existing ones do not have the configured partition count."""


async def _check_partition_counts(
    admin: AIOKafkaAdminClient, settings: Settings, existing: set[str]
) -> None:
    # The agents' sources: their tables' changelogs are co-partitioned with them. (Dead
    # letters, parked commands and the registry may have any count.)
    sources = (settings.commands_topic, settings.events_topic)
    cluster = await admin._client.fetch_all_metadata()
    wrong = [
        f"{name} has {count} partitions"
        for name in sources
        if name in existing
        and (count := len(cluster.partitions_for_topic(name) or ())) != settings.partitions
    ]
    if wrong:
        raise TopicCreationError(
            f"{'; '.join(wrong)}, but PAYSTREAM_PARTITIONS is {settings.partitions}: set it to "
            "the topics' count (never add partitions to the tenant registry; README, Running "
            "against real Kafka, PostgreSQL and Redis)"
        )


def _raise_failures(topic_errors: list[tuple[object, ...]]) -> None:
    """CreateTopics answers per topic and never raises: a refused topic (e.g. a replication
    factor above the broker count) would otherwise pass as created."""
    failed = [
        f"{name}: {for_code(code).__name__}{f' ({detail[0]})' if detail and detail[0] else ''}"
        for name, code, *detail in topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if failed:
        raise TopicCreationError("the broker refused to create " + "; ".join(map(str, failed)))


async def record_limits(
    settings: Settings, topics: Sequence[str]
) -> tuple[dict[str, int], list[str]]:
    """Each existing topic's ``max.message.bytes`` where the broker says (Kafka answers
    the effective value, the broker's default included; the embedded broker knows only
    configs given at creation), and the topics whose configs it would not describe (no
    DescribeConfigs permission, say)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.require_broker()), **client_auth(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = sorted({t for t in topics if t in existing})
        if not wanted:
            return {}, []
        # All configs: the embedded broker drops the connection when asked for named ones.
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in wanted]
        )
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    unread: list[str] = []
    for response in responses:
        for code, _message, _type, name, entries in response.resources:
            if code != 0:
                unread.append(name)
                continue
            value = next((e[1] for e in entries if e[0] == "max.message.bytes"), None)
            if value is not None and str(value).isdigit():
                limits[name] = int(value)
    return limits, sorted(unread)


def large_record_topics(settings: Settings) -> list[str]:
    """paystream's own topics that get its largest records (outcomes, dead letters,
    parked commands, the ledger's dead letters); its tables' changelogs do too. The
    commands, registry and aggregate topics carry only small ones."""
    return [
        settings.events_topic,
        settings.dlq_topic,
        settings.retry_topic,
        settings.ledger_dlq_topic,
    ]


async def undersized_topics(
    settings: Settings, topics: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The topics that would refuse paystream's largest records, each with its limit, and
    those whose limit could not be read."""
    limits, unread = await record_limits(settings, topics)
    small = [
        f"{name} (max.message.bytes={limit})"
        for name, limit in sorted(limits.items())
        if limit < RECORD_MAX_BYTES
    ]
    return small, unread
