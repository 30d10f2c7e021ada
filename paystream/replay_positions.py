"""Where `dlq replay` got to on each retry and dead-letter partition, kept in a compacted
topic beside its consumer group's committed offsets.

The replay assigns its partitions itself and commits only when it re-sends something.
Kafka drops such a group's offsets ``offsets.retention.minutes`` (7 days by default)
after its last commit, while parked records are kept until handled: after a quiet week,
every record ever parked read as waiting (`dlq list`, the backlog alert), and the next
replay re-sent them all (review finding). The group's offsets stay the fence between two
replays; these positions are read only where the group has none.

A position names the offset replays got to and the timestamp of the record before it:
one whose record is not there any more (the topic deleted and made again, which drops
the group's offsets too) is not trusted, or the new topic's first records would be
passed over as replayed (review finding).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream.errors import PaystreamError
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth

__all__ = ["Position", "PositionsUnwritten", "ReplayPositions", "read_positions"]

log = logging.getLogger(__name__)

# How long reading the positions, or writing them, may take.
TIMEOUT_SECONDS = 30.0


class Position(NamedTuple):
    """Replays got to ``offset``; the record before it has ``timestamp_ms`` (None: at 0)."""

    offset: int
    timestamp_ms: int | None


class PositionsUnwritten(PaystreamError):
    """The replay's positions could not be written (its group's offsets were)."""


# Said once per process: the worker reads positions every minute.
_missing_said = False


def _say_missing(topic: str) -> None:
    global _missing_said
    if not _missing_said:
        _missing_said = True
        log.warning(
            "topic %s is missing or not visible to this principal (run `paystream topics`; "
            "its ACLs: README, Kafka over TLS): where replays got to is kept only in their "
            "consumer group's offsets, which Kafka drops a while after a replay's last "
            "commit",
            topic,
        )


def _key(tp: TopicPartition) -> bytes:
    # (Kafka topic names hold no "/": one key per partition, compacted to its latest.)
    return f"{tp.topic}/{tp.partition}".encode()


async def read_positions(
    settings: Settings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, Position]:
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
    try:
        await consumer.start()
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
) -> dict[TopicPartition, Position]:
    tps = await topic_partitions(consumer, settings.replay_positions_topic)
    if not tps:
        _say_missing(settings.replay_positions_topic)
        return {}
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    found: dict[TopicPartition, Position] = {}
    pending = {tp for tp in tps if ends[tp] > 0}
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=1000)
        for records in fetched.values():
            for r in records:
                named = wanted.get(r.key or b"")
                if named is not None and r.value is not None:
                    stored = orjson.loads(r.value)
                    found[named] = Position(int(stored["offset"]), stored.get("timestamp_ms"))
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    return found


class ReplayPositions:
    """Writes a replay's positions after each commit of its group's offsets (those that
    moved since it last wrote them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._missing = False
        self._written: dict[TopicPartition, Position] = {}

    async def write(self, positions: Mapping[TopicPartition, Position]) -> None:
        moved = {tp: p for tp, p in positions.items() if self._written.get(tp) != p}
        if not moved:
            return
        try:
            await asyncio.wait_for(self._write(moved), TIMEOUT_SECONDS)
        except Exception as exc:
            raise PositionsUnwritten(
                f"re-sent records were committed, but where the replay got to could not be "
                f"written to {self.settings.replay_positions_topic!r} ({type(exc).__name__}: "
                f"{exc}); the next replay writes it again"
            ) from exc
        self._written.update(moved)

    async def _write(self, positions: Mapping[TopicPartition, Position]) -> None:
        topic = self.settings.replay_positions_topic
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(self.settings.require_broker()),
                **client_auth(self.settings),
                acks="all",
            )
            self._producer = producer  # (stopped by close, started or not)
            await producer.start()
            cluster = await producer.client.fetch_all_metadata()
            # Never made by a send: a broker creating topics on demand makes one that is
            # neither compacted nor kept.
            self._missing = not cluster.partitions_for_topic(topic)
            if self._missing:
                _say_missing(topic)
        if self._missing:
            return
        sends = [
            await self._producer.send(
                topic,
                key=_key(tp),
                value=orjson.dumps({"offset": p.offset, "timestamp_ms": p.timestamp_ms}),
            )
            for tp, p in sorted(positions.items())
        ]
        await asyncio.gather(*sends)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
