"""Topic creation reports what the broker refused instead of passing it as created."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from paystream.settings import load_settings
from paystream.streams.admin import (
    TopicCreationError,
    _raise_failures,
    bootstrap_servers,
    changelog_configs,
    changelog_topics,
    topic_configs,
    topic_partitions,
)


def test_created_and_already_existing_topics_pass() -> None:
    _raise_failures([("a", 0), ("b", 36, None), ("c", 0, "")])


def test_a_refused_topic_is_an_error_naming_it_and_why() -> None:
    answer = [("ok", 0, None), ("big", 38, "Replication factor: 3 larger than brokers: 1.")]
    with pytest.raises(TopicCreationError) as err:
        _raise_failures(answer)
    assert "big: InvalidReplicationFactorError (Replication factor: 3" in str(err.value)
    assert "ok" not in str(err.value).replace("broker", "")


@pytest.mark.asyncio(loop_scope="session")
async def test_partitions_come_from_the_cluster_not_the_consumers_cache(
    deployment_factory: Any,
) -> None:
    """On Kafka a consumer that has not subscribed holds no topic metadata; Tansu hands it
    every topic anyway, so the cache is emptied here to stand for Kafka."""
    dep = await deployment_factory()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(dep.settings.require_broker()))
    await consumer.start()
    try:
        consumer._client.cluster._partitions.clear()
        assert consumer.partitions_for_topic(dep.settings.tenants_topic) is None
        tps = await topic_partitions(consumer, dep.settings.tenants_topic)
        assert [tp.partition for tp in tps] == list(range(dep.settings.partitions))
        assert await topic_partitions(consumer, f"{dep.settings.app_id}.absent") == []
    finally:
        await consumer.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_parked_and_dead_letter_topics_are_kept_until_handled(
    deployment_factory: Any,
) -> None:
    """A parked payment the provider may have charged must not expire unseen (Kafka's
    default retention is 7 days): the retry and dead-letter topics keep their records."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    dep = await deployment_factory()
    settings = dep.settings
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await admin.start()
    try:
        kept = (settings.retry_topic, settings.dlq_topic, settings.ledger_dlq_topic)
        for topic in (*kept, settings.events_topic):
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            (response,) = await admin.describe_configs([resource])
            (code, _message, _type, _name, entries), *_ = response.resources
            assert code == 0
            retention = next((e[1] for e in entries if e[0] == "retention.ms"), None)
            assert (retention == "-1") is (topic in kept), (topic, retention)
    finally:
        await admin.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_existing_topics_with_another_partition_count_are_refused(
    deployment_factory: Any,
) -> None:
    """`paystream topics` on an upgrade that changes PAYSTREAM_PARTITIONS: the topics exist
    with the old count, and workers started with the new one would own partitions that do
    not exist (never ready). The setup step must fail, naming them, not pass."""
    from paystream.streams.admin import ensure_topics

    dep = await deployment_factory()
    settings = dep.settings
    assert await ensure_topics(settings) == []  # all exist, with the configured count
    more = settings.model_copy(update={"partitions": settings.partitions * 2})
    with pytest.raises(TopicCreationError) as err:
        await ensure_topics(more)
    message = str(err.value)
    assert f"{settings.commands_topic} has {settings.partitions} partitions" in message
    assert f"PAYSTREAM_PARTITIONS is {settings.partitions * 2}" in message
    assert settings.events_topic in message and settings.dlq_topic not in message


def test_with_three_replicas_every_topic_needs_two_in_sync() -> None:
    """acks=all waits for the replicas in sync only; Kafka's default lets that be the
    leader alone: an acknowledged outcome on one disk (review finding). Tables'
    changelogs are made the same way (tables/definitions.py)."""
    from paystream.tables import definitions

    three = load_settings().model_copy(update={"replication_factor": 3})
    for name in three.topic_names():
        assert topic_configs(three, name)["min.insync.replicas"] == "2", name
    assert topic_configs(three, three.tenants_topic)["cleanup.policy"] == "compact"
    one = load_settings().model_copy(update={"replication_factor": 1})
    assert not any("min.insync.replicas" in topic_configs(one, n) for n in one.topic_names())
    # The tables of this (test) process: one replica, nothing to require; tombstones
    # kept a day at least, past the age at which a store is rebuilt whole.
    kept = definitions.payments.extra_topic_configs
    assert "min.insync.replicas" not in kept
    assert int(kept["delete.retention.ms"]) >= max(
        24 * 3600 * 1000, 2 * load_settings().table_store_max_age_seconds * 1000
    )
    assert changelog_configs(three)["min.insync.replicas"] == "2"


def test_the_changelog_names_doctor_reads_are_the_tables_a_worker_makes() -> None:
    """doctor names this app's changelogs exactly (another deployment's on the same
    cluster are not its own): they must be every table a worker with every role makes."""
    import os
    import subprocess
    import sys

    script = (
        "import paystream.worker; from paystream.app import app; "
        "print(' '.join(sorted(t.changelog_topic.get_topic_name() for t in app.tables.values())))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PAYSTREAM_AGENTS": "commands,ledger,insights"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    settings = load_settings()
    assert shown.stdout.split() == sorted(changelog_topics(settings)), shown.stderr[-2000:]


def test_changelogs_compact_superseded_values_within_a_week() -> None:
    """An erased customer's older values must not wait on the cleaner for ever (review
    h59j): a bound Kafka keeps by rolling the active segment."""
    from paystream.settings import load_settings
    from paystream.streams.admin import CHANGELOG_COMPACTION_LAG_MS

    configs = changelog_configs(load_settings())
    assert configs["max.compaction.lag.ms"] == str(CHANGELOG_COMPACTION_LAG_MS)
    assert CHANGELOG_COMPACTION_LAG_MS <= 7 * 24 * 3600 * 1000
