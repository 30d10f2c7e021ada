"""Baseline 2: a bare Faust agent that forwards each record (``await topic.send()``).

This is what the paystream pipeline must beat: the same Faust machinery (consumer
thread, stream, acking, producer) with no work per record. Run it as its own worker
process::

    BENCH_FORWARD_SRC=a BENCH_FORWARD_DST=b BENCH_FORWARD_APP_ID=fwd-1 \\
    BENCH_FORWARD_DATADIR=/tmp/fwd KAFKA_BROKER_URL=... PAYSTREAM_BROKER_FLAVOR=tansu \\
        python -m paystream.bench.faust_forwarder

The app mirrors the paystream app's transport settings (raw serializers, acks=-1,
1 ms linger, 512 KiB producer batches, stream buffer and poll size, earliest offset
reset, partition count, no Faust environment overrides) and, like every process talking to
Tansu, applies ``broker_compat`` (short fetch wait, session timeouts, ...).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import faust

from paystream.bench.first_record import FirstRecordMark
from paystream.settings import load_settings
from paystream.streams import broker_compat
from paystream.streams.faust_transport import PRODUCER_MAX_BATCH_SIZE, max_poll_records
from paystream.streams.kafka_auth import faust_credentials

__all__ = ["app", "forward"]

settings = load_settings()
broker_compat.apply(settings)

_SRC = os.environ.get("BENCH_FORWARD_SRC", "bench.forward.in")
_DST = os.environ.get("BENCH_FORWARD_DST", "bench.forward.out")

app = faust.App(
    os.environ.get("BENCH_FORWARD_APP_ID", "paystream-bench-forwarder"),
    broker=settings.kafka_broker_url or "kafka://127.0.0.1:9092",
    broker_credentials=faust_credentials(settings),
    datadir=os.environ.get("BENCH_FORWARD_DATADIR", "/tmp/paystream-bench-forwarder"),  # noqa: S108
    store="memory://",
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    producer_linger_ms=1,
    # The worker's batch size, stream buffer and poll size: the same machinery, tuned alike.
    producer_max_batch_size=PRODUCER_MAX_BATCH_SIZE,
    stream_buffer_maxsize=settings.stream_buffer_maxsize,
    broker_max_poll_records=max_poll_records(settings.stream_buffer_maxsize),
    stream_wait_empty=False,
    topic_allow_declare=True,
    topic_replication_factor=settings.replication_factor,
    web_enabled=False,
    logging_config=None,
    # As the worker's app: no Faust environment variable (PRODUCER_ACKS, ...) overrides.
    env={},
    **broker_compat.faust_overrides(settings),
)

_topic_args: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
    "partitions": settings.partitions,
}
source = app.topic(_SRC, **_topic_args)
destination = app.topic(_DST, **_topic_args)


@app.agent(source, name="forward")
async def forward(stream: Any) -> None:
    """Forward each record unchanged: key, value and headers."""
    mark = FirstRecordMark()
    async for event in stream.events():
        mark()
        msg = event.message
        await destination.send(key=msg.key, value=msg.value, headers=msg.headers)


def main() -> None:
    os.makedirs(app.conf.datadir, exist_ok=True)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
