"""send_batches' size checks (review h69b): aiokafka's record batch builder takes any
first record, whatever its size (the broker decides what it accepts), so an empty batch
never refuses one; the ``count == 0`` raises could never fire. Pinned here without a
broker, so that an aiokafka that changed this fails a test instead of send_batches
looping on an empty batch."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from paystream.streams.batch_producer import OutRecord, send_batches

BATCH_SIZE = 1024


def test_an_empty_record_batch_takes_a_record_of_any_size() -> None:
    batch = BatchBuilder(BATCH_SIZE, 0)
    assert batch.append(key=b"k", value=b"x" * (50 * BATCH_SIZE), timestamp=None, headers=[])
    assert batch.append(key=b"k", value=b"y", timestamp=None, headers=[]) is None  # full


class _Producer:
    """aiokafka's batch API with its real builder; every batch acknowledged at once."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(BATCH_SIZE, 0)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, batch._relative_offset))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_records_larger_than_a_batch_each_go_in_a_batch_of_their_own() -> None:
    big = b"z" * (4 * BATCH_SIZE)
    records = [
        OutRecord("t", 0, None, big),  # first of its partition: into the empty batch
        OutRecord("t", 0, None, b"a"),
        OutRecord("t", 0, None, big),  # after a batch with room: the next one's first
        OutRecord("t", 0, None, big),
    ]
    producer = _Producer()
    sent = await send_batches(producer, records)  # type: ignore[arg-type]
    for batch in sent:
        await batch.future
    assert [b.count for b in sent] == [1, 1, 1, 1]
    assert [c for _, _, c in producer.batches] == [b.count for b in sent]
