"""Record batches one producer writes to the commands topic that aiokafka's reader may
refuse, on every fetch, as it did a header name that is not UTF-8
(streams/record_batches.py): the worker's consumer crashed on each, and restarted on the
same offset crashed again; the partition's tenants waited for good (review h64j).

* snappy / lz4 / zstd: valid batches (what a librdkafka or Java producer with
  compression.type writes, or a broker or topic with compression.type writes for every
  producer): aiokafka needs cramjam for them (an install requirement since).
* a batch no parser reads (its CRC wrong, its gzip payload not gzip): real Kafka refuses
  one on produce, the embedded broker stores it. It is dead-lettered `unreadable_batch`
  (streams/record_batches.py).
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
        "crc": lambda: rb.batch(one, bad_crc=True),
    }[case]()


_UNREADABLE = {"gzip_not_gzip": "EOFError", "crc": "CRC does not match"}


@pytest.mark.parametrize("case", ["snappy", "lz4", "zstd", "gzip_not_gzip", "crc"])
async def test_one_batch_a_producer_writes_does_not_stop_the_worker(
    case: str, deployment_factory: Any
) -> None:
    tenant = f"poison-{case.replace('_', '-')}"
    dep = await deployment_factory()
    async with rb.worker_for(dep, tenant) as (worker, broker, partition):
        topic = dep.settings.commands_topic
        poison = _poison(case, tenant.encode())
        code = await rb.produce(broker, topic, partition, poison)
        assert code == 0  # (stored)
        await rb.next_answered(dep, tenant, 45)
        assert not worker.exited()
    if case not in _UNREADABLE:
        return
    dead = await dep.read_topic(dep.settings.dlq_topic, idle_polls=2)
    [letter] = [r for r in dead if r.key is None]
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"unreadable_batch", headers
    detail = headers["paystream-dlq-detail"].decode()
    assert f"record batch at {topic}[{partition}] offsets " in detail
    assert _UNREADABLE[case] in detail
    assert headers["paystream-source"].startswith(f"{topic}/{partition}/".encode())
    # No card scan vouches for a batch's framing: its bytes are not copied, and the
    # detail says where they are (reviews h65a, h65c).
    assert letter.value == b""
    assert detail.endswith(f"its {len(poison)} bytes are not copied")
