"""send_batches against the real broker: a partition's records beyond one record batch
are split into several, in order, none lost or doubled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import RequestTimedOutError
from aiokafka.structs import TopicPartition

from paystream.streams.batch_producer import OutRecord, send_batches


async def _read_all(
    bootstrap: str, tp: TopicPartition, count: int, polls: int = 100
) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got: list[bytes] = []
        for _ in range(polls):
            batch = await consumer.getmany(tp, timeout_ms=500)
            got += [m.value or b"" for m in batch.get(tp, [])]
            if len(got) >= count:
                break
        return got
    finally:
        await consumer.stop()


async def test_records_beyond_one_batch_are_split_in_order(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=16 * 1024)
    await producer.start()
    try:
        values = [f"{i:05d}".encode() + b"x" * 1000 for i in range(60)]  # ~60 KB on p0
        records = [OutRecord(topic, 0, b"k", v) for v in values]
        records.insert(7, OutRecord(topic, 1, b"other", b"one"))  # interleaved
        sent = await send_batches(producer, records)
        for batch in sent:
            await batch.future
    finally:
        await producer.stop()
    assert [b.partition for b in sent].count(0) >= 4  # split
    assert sum(b.count for b in sent if b.partition == 0) == 60
    assert await _read_all(kafka_bootstrap, TopicPartition(topic, 0), 60) == values
    assert await _read_all(kafka_bootstrap, TopicPartition(topic, 1), 1) == [b"one"]


async def test_a_record_is_never_dropped_for_its_size(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    """A record larger than a whole batch goes in a batch of its own (the broker decides
    what it accepts); the split path never skips it."""
    topic = await new_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=16 * 1024)
    await producer.start()
    try:
        big = b"y" * 40_000
        sent = await send_batches(
            producer, [OutRecord(topic, 0, None, b"a"), OutRecord(topic, 0, None, big)]
        )
        for batch in sent:
            await batch.future
    finally:
        await producer.stop()
    assert [b.count for b in sent] == [1, 1]  # the big one in a batch of its own
    assert await _read_all(kafka_bootstrap, TopicPartition(topic, 0), 2) == [b"a", big]


async def test_nothing_of_a_partition_is_sent_after_a_batch_that_failed(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    """aiokafka gives up on a record batch whose request timed out (a half-open
    connection) and still sends the partition's next one: that one landed, and the whole
    batch's retry put it before the records it follows (review finding). Now a batch
    goes only once the one before it is acknowledged; the other partitions go on."""
    topic = await new_topic(partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=16 * 1024)
    await producer.start()
    real = producer.send_batch
    calls = 0

    async def first_times_out(batch: Any, topic: str, partition: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the request never answered: aiokafka expires the batch
            lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lost.set_exception(RequestTimedOutError())
            return lost
        return await real(batch, topic, partition=partition)

    producer.send_batch = first_times_out  # type: ignore[method-assign]
    try:
        values = [f"{i:05d}".encode() + b"x" * 1000 for i in range(60)]  # ~60 KB on p0
        records = [OutRecord(topic, 0, b"k", v) for v in values]
        records.append(OutRecord(topic, 1, b"other", b"one"))
        sent = await send_batches(producer, records)
        results = await asyncio.gather(*(b.future for b in sent), return_exceptions=True)
    finally:
        await producer.stop()
    assert [b.partition for b in sent].count(0) >= 4
    failed = [b.partition for b, r in zip(sent, results, strict=True) if isinstance(r, Exception)]
    assert failed == [0] * [b.partition for b in sent].count(0)  # p0's all failed with it
    assert await _read_all(kafka_bootstrap, TopicPartition(topic, 1), 1) == [b"one"]
    # (Read after p1's record is: the broker had every chance to show one.)
    assert await _read_all(kafka_bootstrap, TopicPartition(topic, 0), 1, polls=4) == []


def test_an_out_record_is_immutable_with_its_fields_in_order() -> None:
    record = OutRecord("t", 3, b"k", b"v")
    assert (record.topic, record.partition, record.key, record.value, record.headers) == (
        "t",
        3,
        b"k",
        b"v",
        (),
    )
    assert OutRecord._fields == ("topic", "partition", "key", "value", "headers")
    assert record == OutRecord("t", 3, b"k", b"v", ())
    assert record != OutRecord("t", 3, b"k", b"other")
    with pytest.raises(AttributeError):
        record.value = b"changed"  # type: ignore[misc]
