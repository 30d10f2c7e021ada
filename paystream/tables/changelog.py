"""Changelog writes that the command agent publishes and awaits with its outcomes.

Faust sends a table's changelog records through its producer buffer and flushes that
buffer before committing offsets. The flush gives up after 100 ms without progress and
can return while the buffer's task holds a popped, not yet produced record, so an
offset could be committed before the table change it depends on is durable; after a
crash the command would not be redelivered and its change would be gone.

While a batch is being collected, writes to a ``BatchedChangelogTable`` are queued
here instead; the agent produces them (in write order, before the outcomes) and awaits
their delivery before the batch is acknowledged. Writes outside a batch (recovery,
other agents) keep Faust's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import faust
from faust.types import FutureMessage
from faust.types.codecs import CodecArg

__all__ = ["BatchedChangelogTable", "collect_changelog", "publish_changelog"]

_batch: ContextVar[list[FutureMessage] | None] = ContextVar("changelog_batch", default=None)


class BatchedChangelogTable(faust.Table):
    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> FutureMessage:
        batch = _batch.get()
        if batch is None:
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        fut = self.changelog_topic.as_future_message(
            key=key,
            value=value,
            partition=partition,
            key_serializer=key_serializer or self.key_serializer,
            value_serializer=value_serializer or self.value_serializer,
            callback=self._on_changelog_sent,
            eager_partitioning=True,
        )
        batch.append(fut)
        return fut


@contextmanager
def collect_changelog() -> Iterator[list[FutureMessage]]:
    """Queue changelog writes made in this context (and tasks it starts) for the caller."""
    batch: list[FutureMessage] = []
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)


async def publish_changelog(batch: list[FutureMessage]) -> list[FutureMessage]:
    """Hand the queued writes to the producer in order; await the returned futures."""
    for fut in batch:
        await fut.message.channel.publish_message(fut, wait=False)
    return batch
