"""A command record whose header name is not UTF-8 (a broker keeps the bytes a producer
sends; librdkafka's may send any) is dead-lettered, and the worker goes on. aiokafka's
record parser raised UnicodeDecodeError on every fetch of its partition: the worker
crashed, restarted on the same offset and crashed again (streams/record_batches.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e import raw_batches as rb

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "rawname-a"

# aiokafka's Python record builder (AIOKAFKA_NO_EXTENSIONS) writes a header name as its
# str's encode() gives it: bytes that are not UTF-8.
_PRODUCE = r"""
import asyncio, sys
from aiokafka import AIOKafkaProducer

class Raw(str):
    def encode(self, *args, **kwargs):
        return b"ce_\xff\xfe"

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        headers = [(Raw("x"), b"v"), ("ce_id", b"raw-1")]
        await producer.send_and_wait(
            sys.argv[2], b"{}", key=sys.argv[3].encode(), headers=headers,
            partition=int(sys.argv[4]),
        )
    finally:
        await producer.stop()

asyncio.run(main())
"""


async def test_a_header_name_that_is_no_utf8_is_dead_lettered_and_the_worker_goes_on(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    async with rb.worker_for(dep, TENANT) as (worker, broker, partition):
        args = [broker, settings.commands_topic, TENANT, str(partition)]
        env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", _PRODUCE, *args], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        await rb.next_answered(dep, TENANT, 60)
        assert not worker.exited()
    dead = await dep.read_topic(settings.dlq_topic, idle_polls=2)
    [letter] = [r for r in dead if r.key == TENANT.encode()]
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"not_a_cloudevent", headers
    assert letter.value == b"{}"
