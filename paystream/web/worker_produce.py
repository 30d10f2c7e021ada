"""Commands a worker's web requests produce (a webhook's refresh, its HTTP ingress): through
the worker's own Faust producer."""

from __future__ import annotations

from paystream.app import app, settings
from paystream.streams.codec import KafkaRecord
from paystream.web.produce import acknowledged

__all__ = ["produce_command"]


async def produce_command(rec: KafkaRecord, tenant: str, why: str = "ingress") -> None:
    """Produce a command to the commands topic and wait for the broker's acknowledgement
    (NotProduced otherwise)."""
    await acknowledged(
        lambda: app.producer.send(
            settings.commands_topic, rec.key, rec.value, None, None, list(rec.headers)
        ),
        tenant,
        why,
    )
