"""Baseline 1: a raw aiokafka consume-and-produce loop, the ceiling of the Kafka client.

Run as its own process (``python -m paystream.bench.raw_passthrough SRC DST``) so that,
like the worker and the Faust forwarder, it does not share an interpreter with the
load generator. It reads every partition of ``SRC`` from the beginning (assigned, no
group: no join delay), produces each record unchanged (key, value, headers) to ``DST``
and awaits the batch's acks before fetching the next one, the durability a
commit-after-produce consumer needs. It fetches as the worker does (same max wait
and min bytes). Broker settings come from the environment
(``KAFKA_BROKER_URL``, ``PAYSTREAM_BROKER_FLAVOR``) and ``broker_compat`` applies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from paystream.bench.first_record import FirstRecordMark
from paystream.settings import load_settings
from paystream.streams import broker_compat
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth

__all__ = ["passthrough"]


async def passthrough(
    broker_url: str, src: str, dst: str, fetch_max_wait_ms: int, fetch_min_bytes: int = 1
) -> None:
    """Forward ``src`` → ``dst`` until cancelled."""
    servers = bootstrap_servers(broker_url)
    auth = client_auth(load_settings())  # (a secured cluster's: KAFKA_BROKER_URL set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        **auth,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        fetch_min_bytes=fetch_min_bytes,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    # Same durability and batching knobs as the paystream app's producer (acks=-1, 1 ms).
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=1, **auth)
    await consumer.start()
    await producer.start()
    try:
        tps = await topic_partitions(consumer, src)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        mark = FirstRecordMark()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch:
                mark()
            futures = [
                await producer.send(dst, r.value, key=r.key, headers=list(r.headers or ()))
                for records in batch.values()
                for r in records
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
        await consumer.stop()


async def _main(src: str, dst: str) -> None:
    settings = load_settings()
    broker_compat.apply(settings)
    task = asyncio.create_task(
        passthrough(
            settings.require_broker(),
            src,
            dst,
            broker_compat.worker_fetch_max_wait_ms(settings),
            broker_compat.worker_fetch_min_bytes(settings),
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    asyncio.run(_main(args.src, args.dst))


if __name__ == "__main__":
    main()
