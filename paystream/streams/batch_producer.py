"""Produce a batch's records as whole Kafka record batches, one per topic-partition.

``producer.send()`` costs a future, a partitioner call and an accumulator lookup per
record, which was the largest single item in the worker's profile after the gateway.
The command agent already knows every record of a batch before it produces any, so it
builds one record batch per topic-partition (aiokafka's batch API) and awaits one
future per batch. Records keep their order within a partition.

A partition's share larger than one record batch goes as several, each submitted only
once the one before it is acknowledged. aiokafka sends them one after another anyway,
but gives up on one that timed out and still sends the next: that one landed, and the
caller's retry of the whole batch put it before the records it follows (review finding).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KeyPartitioner", "OutRecord", "SentBatch", "send_batches"]


class OutRecord(NamedTuple):
    """One record to produce. (A named tuple, immutable as the frozen dataclass it was,
    made in a quarter of a microsecond instead of half: every changelog record and
    outcome of a batch is one.)"""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class SentBatch:
    """One submitted record batch; ``future`` resolves to its metadata (base offset)."""

    topic: str
    partition: int
    count: int
    future: asyncio.Future[Any]


async def send_batches(
    producer: AIOKafkaProducer,
    records: Iterable[OutRecord],
    submitted: list[SentBatch] | None = None,
) -> list[SentBatch]:
    """Submit ``records`` grouped by topic-partition; await each ``future`` for delivery.
    ``submitted`` gets each batch as it is submitted (all of them, should this raise)."""
    grouped: dict[tuple[str, int], list[OutRecord]] = {}
    for record in records:
        grouped.setdefault((record.topic, record.partition), []).append(record)
    sent: list[SentBatch] = [] if submitted is None else submitted
    for (topic, partition), group in grouped.items():
        before: asyncio.Future[Any] | None = None  # this partition's previous batch
        batch, count = producer.create_batch(), 0
        for record in group:
            headers = list(record.headers)
            if not batch.append(
                key=record.key, value=record.value, timestamp=None, headers=headers
            ):
                # Full: the record starts the next batch. aiokafka's builder takes any
                # first record, whatever its size (the broker decides what it accepts;
                # tests/streams/test_batch_producer_sizes.py), so this cannot refuse it.
                sent.append(await _submit(producer, batch, topic, partition, count, before))
                before = sent[-1].future
                batch, count = producer.create_batch(), 0
                batch.append(key=record.key, value=record.value, timestamp=None, headers=headers)
            count += 1
        if count:
            sent.append(await _submit(producer, batch, topic, partition, count, before))
    return sent


async def _submit(
    producer: AIOKafkaProducer,
    batch: Any,
    topic: str,
    partition: int,
    count: int,
    before: asyncio.Future[Any] | None,
) -> SentBatch:
    if before is None:
        future = await producer.send_batch(batch, topic, partition=partition)
    else:
        future = asyncio.ensure_future(_after(before, producer, batch, topic, partition))
    return SentBatch(topic, partition, count, future)


async def _after(
    before: asyncio.Future[Any], producer: AIOKafkaProducer, batch: Any, topic: str, partition: int
) -> Any:
    """Submit ``batch`` once ``before`` (its partition's previous batch) is acknowledged;
    if that failed, never: this fails with it, and nothing lands after a lost batch."""
    await asyncio.shield(before)  # (cancelled, this leaves the earlier batch alone)
    return await (await producer.send_batch(batch, topic, partition=partition))


class KeyPartitioner:
    """The partition ``producer.send()`` would pick for a key (murmur2), cached.

    Keys are tenant ids, a small set, and aiokafka's murmur2 is pure Python. The cache
    is bounded all the same: made-up tenant ids (answered ``unknown_tenant``) and the raw
    keys of dead letters are keys too, and a producer sending unique ones would grow it
    without end.
    """

    CACHE_MAX = 4096

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._cache: dict[tuple[str, bytes], int] = {}

    async def partition(self, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self._partitions[topic] = partitions
        if key is None:
            return int(DefaultPartitioner()(None, partitions, partitions))
        found = self._cache.get((topic, key))
        if found is None:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()  # the tenants in use are cached again at once
            found = self._cache[(topic, key)] = int(
                DefaultPartitioner()(key, partitions, partitions)
            )
        return found
