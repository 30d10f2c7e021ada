"""The command agent: consumes `paystream.commands` in batches and emits outcomes.

Batching is where throughput comes from: a batch's commands are grouped by tenant,
tenants run concurrently (one tenant's commands stay in order, and their simulator
calls share Redis round trips), and the batch's table changes (last write per key) and
outcomes are produced together as one record batch per topic-partition and awaited
before the batch is acknowledged, so an offset is committed only after its outcome and
state are durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from faust.streams import _current_event
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer
from faust.types import EventT

from paystream import metrics
from paystream.agents.handlers import Tables
from paystream.agents.pipeline import CommandProcessor, Emit, Inbound
from paystream.app import app, settings
from paystream.gateways.registry import GatewayDeps
from paystream.streams.batch_producer import KeyPartitioner, OutRecord, SentBatch, send_batches
from paystream.streams.topics import commands_topic
from paystream.tables import definitions as t
from paystream.tables.changelog import collect_changelog
from paystream.tables.views import ActivityLog
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.policy import call_policy
from paystream.tenancy.secrets import secret_opener

__all__ = ["BATCH_MAX", "BATCH_WITHIN", "CommandRunner", "process_commands", "runner"]

log = logging.getLogger(__name__)

BATCH_MAX = 500
# Longest a lone command waits for company; bounds the latency batching adds.
BATCH_WITHIN = 0.002
# A batch whose records the broker has not acknowledged by then is logged (once).
DELIVERY_WARN_SECONDS = 5.0


class CommandRunner:
    """Owns the processor and its resources (Redis, gateways) for this worker process."""

    def __init__(self) -> None:
        self._processor: CommandProcessor | None = None
        self._partitioner: KeyPartitioner | None = None
        self.processed = 0
        self.activity = ActivityLog()

    async def aclose(self) -> None:
        """Close provider clients and the Redis pool (worker shutdown)."""
        if self._processor is not None:
            await self._processor.gateways.aclose()
            redis_client = self._processor.gateways.deps.redis
            if redis_client is not None:
                await redis_client.aclose()
            self._processor = None

    async def processor(self) -> CommandProcessor:
        if self._processor is None:
            redis_client = None
            if settings.redis_url:
                import redis.asyncio as aioredis

                # No socket timeout: redis-py would wrap every read and write in its own
                # asyncio timeout task; provider calls are already bounded by the policy.
                redis_client = aioredis.from_url(settings.redis_url, socket_timeout=None)
            pool = GatewayPool(
                GatewayDeps(settings=settings, redis=redis_client),
                open_secret=secret_opener(settings),
                call_policy=call_policy(settings),
            )
            tables = Tables(
                customers=t.customers,
                payment_methods=t.payment_methods,
                payments=t.payments,
                refunds=t.refunds,
                disputes=t.disputes,
            )
            self._processor = CommandProcessor(settings, tables, t.idempotency, t.tenants, pool)
        return self._processor

    async def run_batch(self, events: Sequence[EventT]) -> None:
        processor = await self.processor()
        by_tenant: dict[bytes | None, list[EventT]] = defaultdict(list)
        for event in events:
            by_tenant[event.message.key].append(event)
        with collect_changelog() as changelog:
            groups = await asyncio.gather(
                *(self._run_tenant(processor, group) for group in by_tenant.values())
            )
        emits = [e for group in groups for e in group]
        # Table changes and outcomes go out together as record batches; the batch is
        # acknowledged (its offsets become committable) only once all are durable.
        producer, partitioner = self._kafka()
        records = changelog.records()
        for e in emits:
            partition = await partitioner.partition(e.topic, e.record.key)
            records.append(
                OutRecord(e.topic, partition, e.record.key, e.record.value, e.record.headers)
            )
        sent = await send_batches(producer, records)
        await _delivered(sent, len(events))
        changelog.persisted(sent)
        await processor.gateways.close_retired()
        for e in emits:
            if e.summary is not None:
                self.activity.record(e.summary)
            elif e.topic == settings.dlq_topic:
                self.activity.dead_letters += 1
            elif e.topic == settings.retry_topic:
                self.activity.parked += 1
        now = time.time()
        for event in events:
            metrics.COMMAND_LATENCY.observe(max(0.0, now - event.message.timestamp))
        metrics.BATCH_SIZE.observe(len(events))
        self.processed += len(events)

    def _kafka(self) -> tuple[AIOKafkaProducer, KeyPartitioner]:
        """Faust's own aiokafka producer (started with the app) and a partitioner for it."""
        producer = cast(FaustAIOKafkaProducer, app.producer)._ensure_producer()
        if self._partitioner is None or self._partitioner.producer is not producer:
            self._partitioner = KeyPartitioner(producer)
        return producer, self._partitioner

    async def _run_tenant(self, processor: CommandProcessor, group: list[EventT]) -> list[Emit]:
        out: list[Emit] = []
        for event in group:
            # Table writes go to the changelog partition of the *current* event; in a
            # batch Faust only knows the last one, so each command sets its own.
            _current_event.set(weakref.ref(event))
            msg = event.message
            inbound = Inbound(
                key=msg.key,
                value=msg.value,
                headers=_headers(msg.headers),
                timestamp_ms=int(msg.timestamp * 1000),
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
            )
            try:
                out += await processor.process(inbound)
            except Exception:
                # A bug of ours must not stall the partition: dead-letter and move on.
                log.exception(
                    "unexpected failure on %s[%d]@%d", msg.topic, msg.partition, msg.offset
                )
                out += processor.dead_letter_bug(inbound)
        # The current event is still one of this tenant's: tombstones go to its partition.
        tenant = (group[-1].message.key or b"").decode("utf-8", "replace")
        if tenant:
            processor.purge_expired(tenant, time.time())
        return out


async def _delivered(sent: Sequence[SentBatch], commands: int) -> None:
    """Wait for every record batch; say so if the broker is slow (the partition is stuck
    until then: offsets are committed only after delivery)."""
    deliveries = asyncio.gather(*(b.future for b in sent))
    try:
        await asyncio.wait_for(asyncio.shield(deliveries), DELIVERY_WARN_SECONDS)
    except TimeoutError:
        pending = sorted({f"{b.topic}[{b.partition}]" for b in sent if not b.future.done()})
        log.warning(
            "%d commands waiting on the broker: %d record batches unacknowledged after %.0f s "
            "(%s); still waiting",
            commands,
            len(pending),
            DELIVERY_WARN_SECONDS,
            ", ".join(pending[:8]),
        )
        await deliveries
        log.warning("the delayed record batches were acknowledged")


def _headers(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    items = raw.items() if isinstance(raw, dict) else raw
    return {str(k): bytes(v or b"") for k, v in items}


runner = CommandRunner()


async def process_commands(stream: Any) -> None:
    """Run payment commands against gateways and tables; emit one outcome per command."""
    try:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
            await runner.run_batch(events)
    finally:
        await runner.aclose()


if settings.runs("commands"):
    process_commands_agent = app.agent(commands_topic, name="process_commands")(process_commands)
