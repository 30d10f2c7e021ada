"""The outcome partitioner's cache of key → partition stays bounded."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka.partitioner import DefaultPartitioner

from paystream.streams.batch_producer import KeyPartitioner

pytestmark = pytest.mark.asyncio


class StandInProducer:
    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


async def test_made_up_keys_do_not_grow_the_cache_without_end() -> None:
    """Outcomes are keyed by the command's tenant id, made-up ones included (answered
    unknown_tenant), and dead letters by their raw key: a producer sending unique keys
    grew the cache by one entry each (36 MB for 100,000 keys of 240 bytes)."""
    partitioner = KeyPartitioner(cast(Any, StandInProducer()))
    partitions = [0, 1, 2, 3]
    for n in range(3 * KeyPartitioner.CACHE_MAX):
        key = f"made-up-{n}".encode()
        expected = DefaultPartitioner()(key, partitions, partitions)
        assert await partitioner.partition("events", key) == expected
    assert len(partitioner._cache) <= KeyPartitioner.CACHE_MAX
