"""A topic read as it is written, from its beginning, by one consumer for a whole test.

Deployment.read_topic reads a topic anew each time, until three half-second polls bring
nothing: a check polled until it held (an analytics window published, a tombstone
written) cost a consumer's start and 1.5 s of idle polls a round. A tail keeps its
consumer and its records; a check looks at them every 50 ms."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from aiokafka import AIOKafkaConsumer

from paystream.streams.admin import bootstrap_servers, topic_partitions
from tests.fixtures.pipeline import Deployment

__all__ = ["TopicTail"]

R = TypeVar("R")
T = TypeVar("T")


class TopicTail(Generic[R]):
    """``async with TopicTail(dep, topic, decode) as tail``: ``tail.records`` holds every
    record of ``topic`` read so far, as ``decode`` made it, oldest first per partition."""

    def __init__(self, dep: Deployment, topic: str, decode: Callable[[Any], R]) -> None:
        self.dep = dep
        self.topic = topic
        self.decode = decode
        self.records: list[R] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.dep.settings.require_broker()),
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self._consumer = consumer
        tps = await topic_partitions(consumer, self.topic)
        assert tps, f"topic {self.topic} does not exist"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        async for record in consumer:
            self.records.append(self.decode(record))

    async def until(self, check: Callable[[list[R]], T], timeout: float = 30) -> T:
        """``check(records)`` once it is truthy, or its last (falsy) answer after
        ``timeout`` seconds: the caller's assertion says what was missing."""
        deadline = time.monotonic() + timeout
        while True:
            self._reading()
            found = check(self.records)
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def caught_up(self, timeout: float = 30) -> list[R]:
        """The records once the tail has read to the topic's end as of this call."""
        consumer = self._consumer
        assert consumer is not None
        ends = await consumer.end_offsets(list(consumer.assignment()))
        deadline = time.monotonic() + timeout
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            assert time.monotonic() < deadline, f"{self.topic}: not read to its end"
            self._reading()
            await asyncio.sleep(0.05)
        return self.records

    def _reading(self) -> None:
        """Raises the reader's failure, if it failed."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise AssertionError(f"the reader of {self.topic} stopped")

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
