"""Record batches one producer writes to the commands topic that aiokafka's reader may
refuse, on every fetch, as it did a header name that is not UTF-8
(streams/record_batches.py): the worker's consumer crashed on each, and restarted on the
same offset crashed again; the partition's tenants waited for good (review h64j).

* snappy / lz4 / zstd: valid batches (what a librdkafka or Java producer with
  compression.type writes, or a broker or topic with compression.type writes for every
  producer): aiokafka needs cramjam for them (an install requirement since).
* a gzip batch whose payload is not gzip: a known gap, kept as a strict xfail. Real Kafka
  refuses a corrupt batch on produce; the embedded broker stores it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import raw_batches as rb

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

R = rb.record
_CE = [(b"ce_specversion", b"1.0"), (b"ce_id", b"poison-1"), (b"ce_source", b"x"),
       (b"ce_type", b"com.paystream.customer.create")]  # fmt: skip


def _poison(case: str, tenant: bytes) -> bytes:
    one = [R(0, tenant, b"{}", _CE)]
    return {
        "snappy": lambda: rb.batch(one, codec=rb.SNAPPY),
        "zstd": lambda: rb.batch(one, codec=rb.ZSTD),
        "lz4": lambda: rb.batch(one, codec=rb.LZ4),
        "gzip_not_gzip": lambda: rb.batch(one, codec=rb.GZIP, payload=b"\x1f\x8b\x08\x00junk"),
    }[case]()


_CORRUPT = pytest.mark.xfail(
    strict=True,
    reason="known gap: a batch aiokafka cannot read (corrupt: real Kafka refuses it on "
    "produce, the embedded broker stores it) crashes the worker on every fetch",
)


@pytest.mark.parametrize(
    "case", ["snappy", "lz4", "zstd", pytest.param("gzip_not_gzip", marks=_CORRUPT)]
)
async def test_one_batch_a_producer_writes_does_not_stop_the_worker(
    case: str, deployment_factory: Any
) -> None:
    tenant = f"poison-{case.replace('_', '-')}"
    dep = await deployment_factory()
    async with rb.worker_for(dep, tenant) as (worker, broker, partition):
        topic = dep.settings.commands_topic
        code = await rb.produce(broker, topic, partition, _poison(case, tenant.encode()))
        assert code == 0  # (stored)
        wait = 10 if case == "gzip_not_gzip" else 45  # (the known gap's: not for long)
        await rb.next_answered(dep, tenant, wait)
        assert not worker.exited()
