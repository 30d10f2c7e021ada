"""RegistryMirror._end_offsets with fake consumers: an ask given up or failed as the
reader stops leaves no task behind and no exception unread (review h62f)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from paystream.settings import load_settings
from paystream.tenancy.mirror import RegistryMirror

pytestmark = pytest.mark.asyncio
TP = TopicPartition("tenants", 0)


class _Consumer:
    def __init__(self, answer: dict[TopicPartition, int] | None = None) -> None:
        self.answer = answer
        self.pending: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.asks = 0
        self.cancelled = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asks += 1
        if self.answer is not None:
            return self.answer
        try:
            return await self.pending
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _mirror() -> RegistryMirror:
    mirror = RegistryMirror(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    mirror.ready.set()
    mirror._loading = False
    return mirror


def _follow(mirror: RegistryMirror, consumer: _Consumer, read_to: int) -> None:
    mirror._reading = (consumer, [TP])  # type: ignore[assignment]
    mirror._read_to = {TP: read_to}
    mirror._turn()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_ask_that_fails_as_the_reader_stops_leaves_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        mirror = _mirror()
        old = _Consumer()
        _follow(mirror, old, 0)
        caught = asyncio.create_task(mirror.caught_up())
        await _settle()
        assert old.asks == 1
        # The reader stops (run()'s finally), and the question in flight fails with it
        # (a non-retriable error: the reader's own request failed alike).
        mirror._reading = None
        mirror._turn()
        old.pending.set_exception(TopicAuthorizationFailedError())
        await _settle()
        _follow(mirror, _Consumer({TP: 0}), 0)  # the new reader, nothing to read
        await asyncio.wait_for(caught, 1)
        del old, caught
        gc.collect()
        await _settle()
        never = [c for c in reported if "never retrieved" in str(c.get("message"))]
        assert never == [], [c["message"] for c in never]
    finally:
        loop.set_exception_handler(before)


async def test_the_caller_cancelled_mid_ask_cancels_the_ask() -> None:
    """(Checked sound: no task left behind, the ask cancelled.)"""
    mirror = _mirror()
    consumer = _Consumer()
    _follow(mirror, consumer, 0)
    before = len(asyncio.all_tasks())
    caught = asyncio.create_task(mirror.caught_up())
    await _settle()
    caught.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caught
    await _settle()
    assert consumer.cancelled == 1
    assert len(asyncio.all_tasks()) == before


async def test_an_ask_failing_while_the_reader_goes_on_asks_again_after_a_turn() -> None:
    """(Checked sound.)"""
    mirror = _mirror()
    consumer = _Consumer()
    _follow(mirror, consumer, 0)
    caught = asyncio.create_task(mirror.caught_up())
    await _settle()
    consumer.pending.set_exception(KafkaError("boom"))
    await _settle()
    assert not caught.done()
    consumer.answer = {TP: 3}
    _follow(mirror, consumer, 3)  # a turn of the same reader, read to the end
    await asyncio.wait_for(caught, 1)
    assert consumer.asks == 2
