"""Where `dlq replay` got to on each retry and dead-letter partition, kept in a compacted
topic beside its consumer group's committed offsets.

The replay assigns its partitions itself and commits only when it re-sends something.
Kafka drops such a group's offsets ``offsets.retention.minutes`` (7 days by default)
after its last commit, while parked records are kept until handled: after a quiet week,
every record ever parked read as waiting (`dlq list`, the backlog alert), and the next
replay re-sent them all, holding years of them back as stale with advice to re-send
them (review finding). The group's offsets stay the fence between two replays; these
positions are read only where the group has none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream.errors import PaystreamError
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth

__all__ = ["PositionsUnwritten", "ReplayPositions", "read_positions"]

log = logging.getLogger(__name__)

# How long reading the positions, or writing them, may take.
TIMEOUT_SECONDS = 30.0


class PositionsUnwritten(PaystreamError):
    """The replay's positions could not be written (its group's offsets were)."""


def _key(tp: TopicPartition) -> bytes:
    # (Kafka topic names hold no "/": one key per partition, compacted to its latest.)
    return f"{tp.topic}/{tp.partition}".encode()


async def read_positions(
    settings: Settings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The latest position written for each of ``partitions`` ({} where none was, or
    without the topic: a deployment that has not run `paystream topics` since)."""
    wanted = {_key(tp): tp for tp in partitions}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        return await asyncio.wait_for(_read(consumer, settings, wanted), TIMEOUT_SECONDS)
    except TimeoutError:
        raise PaystreamError(
            f"the broker did not give {settings.replay_positions_topic!r} within "
            f"{TIMEOUT_SECONDS:.0f} s: where replays got to is not known; run it again "
            "once the broker answers"
        ) from None
    finally:
        await consumer.stop()


async def _read(
    consumer: AIOKafkaConsumer, settings: Settings, wanted: Mapping[bytes, TopicPartition]
) -> dict[TopicPartition, int]:
    tps = await topic_partitions(consumer, settings.replay_positions_topic)
    if not tps:
        log.warning(
            "topic %s does not exist: run `paystream topics` (where replays got to is kept "
            "only in their consumer group's offsets, which Kafka drops after a while)",
            settings.replay_positions_topic,
        )
        return {}
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    found: dict[TopicPartition, int] = {}
    pending = {tp for tp in tps if ends[tp] > 0}
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=1000)
        for records in fetched.values():
            for r in records:
                named = wanted.get(r.key or b"")
                if named is not None and r.value is not None:
                    found[named] = int(orjson.loads(r.value)["offset"])
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    return found


class ReplayPositions:
    """Writes a replay's positions after each commit of its group's offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._missing = False

    async def write(self, committed: Mapping[TopicPartition, int]) -> None:
        if not committed:
            return
        try:
            await asyncio.wait_for(self._write(committed), TIMEOUT_SECONDS)
        except Exception as exc:
            raise PositionsUnwritten(
                f"re-sent records were committed, but where the replay got to could not be "
                f"written to {self.settings.replay_positions_topic!r} ({type(exc).__name__}: "
                f"{exc}); the next replay writes it again"
            ) from exc

    async def _write(self, committed: Mapping[TopicPartition, int]) -> None:
        topic = self.settings.replay_positions_topic
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(self.settings.require_broker()),
                **client_auth(self.settings),
                acks="all",
            )
            await producer.start()
            self._producer = producer
            cluster = await producer.client.fetch_all_metadata()
            # Never made by a send: a broker creating topics on demand makes one that is
            # neither compacted nor kept.
            self._missing = not cluster.partitions_for_topic(topic)
            if self._missing:
                log.warning(
                    "topic %s does not exist: run `paystream topics`; where this replay got "
                    "to is kept only in its consumer group's offsets",
                    topic,
                )
        if self._missing:
            return
        sends = [
            await self._producer.send(topic, key=_key(tp), value=orjson.dumps({"offset": offset}))
            for tp, offset in sorted(committed.items())
        ]
        await asyncio.gather(*sends)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
