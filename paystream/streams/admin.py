"""Create paystream's topics explicitly before workers start (brokers may auto-create wrongly)."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from paystream.settings import Settings

__all__ = ["bootstrap_servers", "ensure_topics"]


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:9092;h2:9092`` → ``h1:9092,h2:9092`` for aiokafka."""
    return ",".join(s for s in url.removeprefix("kafka://").split(";") if s)


async def ensure_topics(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """Create any missing paystream topic; returns the names that were created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.topic_names(), *(extra or [])]
        new = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"}
                if name == settings.tenants_topic
                else {},
            )
            for name in wanted
            if name not in existing
        ]
        if new:
            # another process may win the race to create a topic; that is fine
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return [t.name for t in new]
    finally:
        await admin.close()
