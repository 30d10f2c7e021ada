"""The insights runner's real two-step ``_produce`` over a stand-in for the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from paystream.agents import insights as module
from paystream.streams.batch_producer import SentBatch


def standin_broker(
    monkeypatch: pytest.MonkeyPatch, on_send: Callable[[list[Any]], None] = lambda records: None
) -> None:
    """Every send goes to ``on_send`` (which may raise, as a refusing broker or a worker
    killed mid-produce would) and is then acknowledged at once, on partition 0."""

    async def send_batches(producer: Any, records: Any) -> list[SentBatch]:
        records = list(records)
        on_send(records)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(type("Meta", (), {"offset": 0})())
        return [SentBatch(r.topic, r.partition, 1, done) for r in records]

    class Partitioner:
        def __init__(self, producer: Any) -> None:
            self.producer = producer

        async def partition(self, topic: str, key: Any) -> int:
            return 0

    producer = object()
    monkeypatch.setattr(module, "send_batches", send_batches)
    monkeypatch.setattr(module, "KeyPartitioner", Partitioner)
    monkeypatch.setattr(
        module.app, "producer", type("P", (), {"_ensure_producer": lambda s: producer})()
    )
