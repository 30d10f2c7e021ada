"""The command agent: consumes `paystream.commands` in batches and emits outcomes.

Batching is where throughput comes from: a batch's commands are grouped by tenant,
tenants run concurrently (one tenant's commands stay in order, but for those on
different payments that may run side by side: agents/tenant_chains.py; their simulator
calls share Redis round trips), and the batch's table changes (last write per key) and
outcomes are produced together as one record batch per topic-partition and awaited
before the batch is acknowledged, so an offset is committed only after its outcome and
state are durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from faust.streams import _current_event
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer
from faust.types import TP, EventT

from paystream import metrics, tracing
from paystream.agents.batching import take_batches
from paystream.agents.continuity import (
    BROKER_ASK_SECONDS,
    GAP_READ_MAX,
    SWEEP_INTERVAL_SECONDS,
    ContinuityGuard,
)
from paystream.agents.entity_probe import READ_ONLY
from paystream.agents.handlers import Tables
from paystream.agents.member_lease import MembershipLapsed, lease, still_a_member
from paystream.agents.offsets import DurableOffsets, commit_periodically, despite_cancellation
from paystream.agents.overlap import DeliveryChain
from paystream.agents.pipeline import CommandProcessor, Emit, Inbound
from paystream.agents.publish_health import PUBLISH, is_refusal
from paystream.agents.tenant_chains import run_tenant
from paystream.agents.tenants import registry
from paystream.app import app, settings, tables_settled
from paystream.built import frozen_record
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator.resp import use_hiredis_packing
from paystream.gc_pacing import full_collections
from paystream.log_limits import ThrottledLog, flush_all
from paystream.streams.admin import (
    RECORD_MAX_BYTES,
    large_record_topics,
    undersized_topics,
)
from paystream.streams.batch_producer import KeyPartitioner, OutRecord, SentBatch, send_batches
from paystream.streams.commands import PROVIDER_READS
from paystream.streams.topics import commands_topic
from paystream.tables import definitions as t
from paystream.tables.changelog import ChangelogBatch, collect_changelog
from paystream.tables.owners import OwnerIndex
from paystream.tables.retention import RetentionSweep
from paystream.tables.views import ActivityLog
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.limits import REPLAY_MEMORY
from paystream.tenancy.policy import call_policy
from paystream.tenancy.secrets import secret_opener

__all__ = [
    "BATCH_MAX",
    "BATCH_WITHIN",
    "CommandRunner",
    "has_backlog",
    "process_commands",
    "runner",
]

log = logging.getLogger(__name__)

BATCH_MAX = GAP_READ_MAX
# Longest a lone command waits for company; bounds the latency batching adds.
BATCH_WITHIN = 0.002
# Events queued for the agent from which on it is busy anyway: handing it more needs no
# loop turn of its own (streams/fast_delivery.py). Queues stay far shorter at 500/s.
BACKLOG_EVENTS = 64
# A batch whose records the broker has not acknowledged by then is logged (once).
DELIVERY_WARN_SECONDS = 5.0
# Longest wait between attempts to produce a batch while the broker is failing.
PUBLISH_RETRY_MAX_SECONDS = 5.0
# On shutdown, how long the batch in hand may take to finish before we exit without it.
SHUTDOWN_DRAIN_SECONDS = 30.0
# On shutdown, how long the final offset commit and closing resources may take.
SHUTDOWN_CLOSE_SECONDS = 10.0
# Exit status when a batch is abandoned uncommitted (EX_SOFTWARE).
EXIT_UNCOMMITTED = 70
# Exit status when the topics cannot take what the worker writes (EX_CONFIG).
EXIT_MISCONFIGURED = 78
# On a rebalance, how long the batch in hand may take to be delivered before the worker
# rejoins the group: well inside the rebalance timeout (6 s on the embedded broker).
REBALANCE_DRAIN_SECONDS = 3.0
# Furthest this worker's clock may run ahead of the broker's for it to delete what it
# judges expired (entities past retention, idempotency records past their window).
CLOCK_AHEAD_MAX_SECONDS = 86_400.0
# Furthest past the broker's newest command time idempotency records are judged expired
# by: they live the idempotency window (24 h by default), so the day above would let a
# worker that far ahead take records an hour old for expired (pipeline.py).
IDEMPOTENCY_CLOCK_AHEAD_SECONDS = 300.0
_clock_log = ThrottledLog(log, interval=300.0)
# Unexpected failures of ours, once a minute per exception type and place.
_BUGS = ThrottledLog(log)
# How often durable offsets are committed (Faust's default commit interval is 2.8 s).
COMMIT_INTERVAL_SECONDS = 1.0
# Records of a partition handled at most past its committed offset. The decisions kept
# for their redeliveries must all be there when they come again: the tenant limits keep
# REPLAY_MEMORY a tenant (a record of its own, read by every command), twice this. Past
# it the agent waits for a commit rather than go on: a commit stalled (aiokafka retries a
# coordinator error for ever), and a payment refused over its tenant's limits was charged
# on its redelivery, its decision dropped (review finding, reproduced).
MAX_UNCOMMITTED = 1_000
if REPLAY_MEMORY < 2 * MAX_UNCOMMITTED:  # (a redelivery's and a run's decisions, both)
    raise ImportError("REPLAY_MEMORY must hold twice MAX_UNCOMMITTED decisions")
# While waiting for a commit that does not land: how often it is tried, and said.
UNCOMMITTED_RETRY_SECONDS = 1.0
UNCOMMITTED_SAY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ProcessedBatch:
    """A batch whose commands have run; its records are not produced yet."""

    events: Sequence[EventT]
    emits: list[Emit]
    records: list[OutRecord]  # table changes first, then outcomes
    changelog: ChangelogBatch
    # The commands-topic partition each emit and each record came from (by index).
    emit_sources: list[int] = dataclasses.field(default_factory=list)
    record_sources: list[int] = dataclasses.field(default_factory=list)
    # Its processing deleted or minimised (idempotency purge, retention sweep, kept
    # answers' prune): the store has lost those records, and only this batch's
    # tombstones say so. Given up between two produce attempts, it ends the worker
    # rather than be dropped with it up (_deliver, _exit_if_deleted).
    deleted: bool = False

    def keep(self, partitions: set[int]) -> ProcessedBatch:
        """Only what the commands of these partitions produced."""
        return dataclasses.replace(
            self,
            emits=[
                e for e, p in zip(self.emits, self.emit_sources, strict=True) if p in partitions
            ],
            records=[
                r for r, p in zip(self.records, self.record_sources, strict=True) if p in partitions
            ],
            emit_sources=[p for p in self.emit_sources if p in partitions],
            record_sources=[p for p in self.record_sources if p in partitions],
        )


class CommandRunner:
    """Owns the processor and its resources (Redis, gateways) for this worker process."""

    def __init__(self) -> None:
        self._processor: CommandProcessor | None = None
        self._partitioner: KeyPartitioner | None = None
        self.processed = 0
        self.activity = ActivityLog()
        self.retention = RetentionSweep(
            # Payment methods before customers, invoices before subscriptions: each is
            # judged with its owner while the owner is still there (retention.expired).
            (
                t.payment_methods,
                t.customers,
                t.payments,
                t.refunds,
                t.disputes,
                t.invoices,
                t.subscriptions,
                t.payouts,
                t.tax_calculations,
                t.transfers,
            ),
            settings.entity_retention_seconds,
            commands_topic.get_topic_name(),
            _active_partitions,
        )
        # The newest broker time of a command handled (Unix seconds; 0: none yet).
        self.broker_time = 0.0
        self.retention.expiring.append((t.idempotency, self._idempotency_expired))

    def _idempotency_expired(self, key: Any, value: Any, now: float) -> bool:
        processor = self._processor
        return processor is not None and processor.idempotency_expired(key, value, now)

    def clock_for_deletes(self, events: Sequence[EventT]) -> float | None:
        """The time to judge what has expired by: this worker's clock, unless it runs
        more than CLOCK_AHEAD_MAX_SECONDS ahead of the broker's (the newest record time
        seen): then None, and nothing is deleted. A clock a retention ahead (a VM
        restored, a bad time source) had the sweep delete every settled entity for good,
        tombstones and all, and the purge every idempotency record (review finding)."""
        now = time.time()
        newest = max((e.message.timestamp or 0.0 for e in events), default=0.0)
        if newest <= now + CLOCK_AHEAD_MAX_SECONDS:  # (a producer's stamp on a CreateTime
            self.broker_time = max(self.broker_time, float(newest))  # topic may be 9999)
        if self.broker_time and now - self.broker_time > CLOCK_AHEAD_MAX_SECONDS:
            _clock_log.warning(
                "clock",
                "this worker's clock is %.0f s ahead of the newest command's broker time: "
                "no retention sweep or idempotency purge until it is right (or the "
                "commands it handles catch up: a backlog older than %.0f s)",
                now - self.broker_time,
                CLOCK_AHEAD_MAX_SECONDS,
            )
            return None
        return now

    def expiry_clock_cap(self) -> float | None:
        """The latest time idempotency records are judged expired by (pipeline.py's
        ``expiry_clock_cap``); None with no broker time seen yet: this clock alone."""
        if not self.broker_time:
            return None
        return self.broker_time + IDEMPOTENCY_CLOCK_AHEAD_SECONDS

    def rescan_expiry(self) -> None:
        """Partitions are moving: look for recovered idempotency records afresh, and
        walk the entities this worker will hold from the start."""
        if self._processor is not None:
            self._processor.rescan_expiry()
        self.retention.restart()

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
            # A registered tenant must never be taken for an unknown one.
            await registry.ready.wait()
            await _check_record_limits()
            redis_client = None
            if settings.redis_url:
                import redis.asyncio as aioredis

                # No socket timeout: redis-py would wrap every read and write in its own
                # asyncio timeout task; provider calls are already bounded by the policy.
                redis_client = use_hiredis_packing(
                    aioredis.from_url(settings.redis_url, socket_timeout=None)
                )
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
                subscriptions=t.subscriptions,
                invoices=t.invoices,
                payouts=t.payouts,
                tax_rates=t.tax_rates,
                tax_calculations=t.tax_calculations,
                connected_accounts=t.connected_accounts,
                transfers=t.transfers,
                # Rebuilt after each rebalance, once the partitions' tables are recovered
                # (by count too: a rejoin may keep the consumer generation).
                owners=OwnerIndex(
                    generation=lambda: (app.consumer_generation_id, app.rebalancing_count),
                    settled=tables_settled,
                ),
            )
            self._processor = CommandProcessor(
                settings,
                tables,
                t.idempotency,
                registry.tenants,
                pool,
                limits=t.limits,
                committed=lambda partition: COMMITTED.get(partition, -1),
                tracing=tracing.active(),  # set up by the worker at start (worker.py)
            )
        return self._processor

    async def run_batch(self, events: Sequence[EventT]) -> None:
        """Process a batch and deliver it (the agent overlaps the two; see overlap.py)."""
        await self.deliver_batch(await self.process_batch(events))

    async def process_batch(self, events: Sequence[EventT]) -> ProcessedBatch:
        """Run the batch's commands: table changes and outcomes, not yet produced."""
        processor = await self.processor()
        full_collections.busy()
        started = time.perf_counter()
        by_tenant: dict[bytes | None, list[EventT]] = defaultdict(list)
        for event in events:
            by_tenant[event.message.key].append(event)
        clock = self.clock_for_deletes(events)
        processor.expiry_clock_cap = self.expiry_clock_cap()
        taken_at = _assignments
        # Deletes only in a batch that will be delivered, on partitions that stay this
        # worker's: the idempotency purge as the sweep below (review finding: it purged
        # while the group rebalanced, its full scan then missing what the recovery after
        # brought, and in batches a hand-over gave up on).
        purge_clock = clock if _may_delete(events, taken_at) else None
        purged: list[int] = []  # (what each tenant's purge deleted)
        # The kept answers' prune deletes too: as the purge, checked when it would.
        answers = getattr(processor, "answers", None)  # (stand-ins may have none)
        if answers is not None:
            answers.may_drop = lambda: _may_delete(events, taken_at)
            answers.dropped = 0
        with collect_changelog(processor.committed) as changelog:
            groups = await asyncio.gather(
                *(
                    self._run_tenant(processor, group, purge_clock, taken_at, purged)
                    for group in by_tenant.values()
                )
            )
            # Settled entities past retention: their tombstones go with this batch. Not
            # while the group rebalances: which partitions are this worker's is changing.
            # Nor in a batch a hand-over gave up on meanwhile, never delivered (_deliver;
            # a rejoin may keep the generation): a minimisation reaches the store at
            # once, is skipped on later passes, and its changelog record would never be
            # produced (review findings).
            swept = 0
            if clock is not None and _may_delete(events, taken_at):
                self.retention.step(clock)
                swept = self.retention.changed  # deletes and minimisations written
        pruned = 0
        if answers is not None:
            # Outside a batch, prunes are not gated by this one (review h69j). (A batch
            # that raised ends the worker: no reset needed there.)
            pruned, answers.may_drop = answers.dropped, _always
        _, partitioner = self._kafka()
        records = changelog.records()
        # A changelog partition is its command's partition (co-partitioned tables).
        record_sources = [r.partition for r in records]
        emits: list[Emit] = []
        emit_sources: list[int] = []
        for group_emits in groups:
            # Each answer's source is its own command's partition: one tenant's commands
            # share one, but records without a key (answered or dead-lettered) come from
            # any, and a hand-over keeps or drops a batch's answers by source.
            for e, source in group_emits:
                partition = await partitioner.partition(e.topic, e.record.key)
                records.append(
                    OutRecord(e.topic, partition, e.record.key, e.record.value, e.record.headers)
                )
                record_sources.append(source)
                emits.append(e)
                emit_sources.append(source)
        # No provider call is in flight between processing stages (they never overlap).
        await processor.gateways.close_retired(processor.tenants)
        _PROCESS_SECONDS.observe(time.perf_counter() - started)
        return ProcessedBatch(
            events,
            emits,
            records,
            changelog,
            emit_sources,
            record_sources,
            # Only a delete (or minimisation) really written: the gate lets nearly every
            # batch purge, and a batch marked so is never given up with the worker up.
            deleted=bool(swept or sum(purged) or pruned),
        )

    async def deliver_batch(self, batch: ProcessedBatch) -> None:
        """Produce the batch's table changes and outcomes together and wait until the
        broker has them all: only then may the batch be acknowledged."""
        producer, _ = self._kafka()
        started = time.perf_counter()
        generation = app.consumer_generation_id
        abandoned_at = _abandoned_at  # (changed by a hand-over that gives this batch up)
        sent: list[SentBatch] = []

        async def still_ours() -> bool:
            # A send after the first (a retry, the rest of a batch that lands its
            # decisions first) goes only while this worker may still be a member: frozen
            # or cut off past the session timeout meanwhile, its partitions may be
            # another worker's, whose newer writes these would follow (review h68f).
            return not lease.lapsed() or await still_a_member(generation, "a batch's send")

        for i, records in enumerate(_delivery_order(batch)):
            if i and not await still_ours():
                raise DeliveryAbandoned("the rest of a batch is not produced")
            sent += await _publish(
                producer,
                records,
                len(batch.events),
                # After a hand-over, a retry could land records of partitions now another
                # worker's after its newer ones: the batch fails instead (and is redone).
                may_retry=lambda: (
                    app.consumer_generation_id == generation and _abandoned_at == abandoned_at
                ),
                still_ours=still_ours,
            )
        _PUBLISH_SECONDS.observe(time.perf_counter() - started)
        batch.changelog.persisted(sent)
        for e, source in zip(batch.emits, batch.emit_sources, strict=True):
            if e.summary is not None:
                # (its tenant's partition: the command was keyed by its tenant)
                self.activity.record(e.summary, source)
            elif e.topic == settings.dlq_topic:
                self.activity.dead_letters += 1
            elif e.topic == settings.retry_topic:
                self.activity.parked += 1
        now = time.time()
        for event in batch.events:
            metrics.COMMAND_LATENCY.observe(max(0.0, now - event.message.timestamp))
        metrics.BATCH_SIZE.observe(len(batch.events))
        self.processed += len(batch.events)

    def _kafka(self) -> tuple[AIOKafkaProducer, KeyPartitioner]:
        """Faust's own aiokafka producer (started with the app) and a partitioner for it."""
        producer = cast(FaustAIOKafkaProducer, app.producer)._ensure_producer()
        if self._partitioner is None or self._partitioner.producer is not producer:
            self._partitioner = KeyPartitioner(producer)
        return producer, self._partitioner

    async def _run_tenant(
        self,
        processor: CommandProcessor,
        group: list[EventT],
        clock: float | None,
        taken_at: int = -1,
        purged: list[int] | None = None,
    ) -> list[tuple[Emit, int]]:
        """Run one key's commands: each emit with its command's partition, in the
        commands' order; ``clock``: the time to purge expired idempotency records by
        (None: none). In order, one at a time, unless they split into chains that touch
        disjoint state (agents/tenant_chains.py): those run side by side."""
        inbounds = [_inbound_of(event) for event in group]
        runs = await run_tenant(
            processor,
            inbounds,
            lambda i: _run_one(processor, group[i], inbounds[i]),
            settings.tenant_concurrency,
        )
        out = [emitted for run in runs for emitted in run]
        # Chains set the current event in their own tasks' contexts: here it may still be
        # the batch's. The purge's tombstones go to this tenant's partition.
        _current_event.set(weakref.ref(group[-1]))
        tenant = (group[-1].message.key or b"").decode("utf-8", "replace")
        # (Again here: a rebalance may have begun since the batch did, and a hand-over may
        # have given up on it: its purge's first scan would run before the recovery and
        # miss what that brings, and its tombstones would never be produced while the
        # store had dropped the records; review findings.)
        if tenant and clock is not None and _may_delete(group, taken_at):
            count = processor.purge_expired(tenant, clock, read_at=group[-1].message.timestamp)
            if purged is not None and count:  # (stand-ins may return None)
                purged.append(count)
        return out


def _always() -> bool:
    return True


def _inbound_of(event: EventT) -> Inbound:
    msg = event.message
    return _inbound(
        msg.key,
        msg.value,
        _headers(msg.headers),
        int(msg.timestamp * 1000),
        msg.topic,
        msg.partition,
        msg.offset,
    )


async def _run_one(
    processor: CommandProcessor, event: EventT, inbound: Inbound
) -> list[tuple[Emit, int]]:
    """One command's emits, each with its command's partition."""
    # Table writes go to the changelog partition of the *current* event; in a batch
    # Faust only knows the last one, so each command sets its own.
    _current_event.set(weakref.ref(event))
    msg = event.message
    try:
        emitted = await processor.process(inbound)
    except Exception as exc:
        # A bug of ours must not stall the partition: dead-letter and move on.
        # (Throttled: every record that meets it would log its traceback.)
        _BUGS.bug(exc, "unexpected failure on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
        emitted = processor.dead_letter_bug(inbound)
    partition = msg.partition
    return [(e, partition) for e in emitted]  # (one, nearly always)


async def _check_record_limits() -> None:
    """Refuse to run against topics that would refuse the worker's largest records.

    A record over a topic's limit fails its batch on every redelivery: the worker exits,
    its partitions move to the next worker, which fails the same way. Better to say so
    once, before the first command, than to take the fleet down one worker at a time.
    """
    tables = (
        t.customers,
        t.payment_methods,
        t.payments,
        t.refunds,
        t.disputes,
        t.subscriptions,
        t.invoices,
        t.payouts,
        t.tax_rates,
        t.tax_calculations,
        t.connected_accounts,
        t.transfers,
    )
    topics = [
        *large_record_topics(settings),
        *(table.changelog_topic.get_topic_name() for table in (*tables, t.idempotency, t.limits)),
    ]
    try:
        small, unread = await asyncio.wait_for(
            undersized_topics(settings, topics), BROKER_ASK_SECONDS
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not read the topics' record size limits (%r): not checked", exc)
        return
    if unread:
        log.warning("could not read the record size limits of %s: not checked", ", ".join(unread))
    if small:
        log.critical(
            "these topics refuse records paystream writes (up to %d bytes): %s; set their "
            "max.message.bytes to at least %d (Kafka's default 1048588 is enough)",
            RECORD_MAX_BYTES,
            ", ".join(small),
            RECORD_MAX_BYTES,
        )
        flush_all(final=True)  # (os._exit skips the atexit flush: log_limits.py)
        logging.shutdown()
        os._exit(EXIT_MISCONFIGURED)


_PROCESS_SECONDS = metrics.BATCH_SECONDS.labels("process")
_PUBLISH_SECONDS = metrics.BATCH_SECONDS.labels("publish")


def _delivery_order(batch: ProcessedBatch) -> list[list[OutRecord]]:
    """The batch's records in the groups to produce one after another.

    Record batches of different topic-partitions land independently: a worker that
    dies while producing may leave some of a batch's written and not others. Each
    command's own writes survive that (its outcome carries its entities' post-images),
    but a rejection decided on state writes no entity, nor does a read-only command (an
    export) or a park: were its decision (idempotency record, or the answer kept in the
    limits table) lost while a later command's entity of the same batch landed, its
    redelivery would be decided again on that later state (a payment refused
    `not_found` charged once its customer exists; an export listing a payment it had not
    seen, under the same event id). So such a batch produces its decisions first and
    waits for them, then the rest: whatever of the rest landed, every decision did. (One
    broker round trip more, for those batches only.)

    So does a batch that changes an entity some commands read without writing (a
    payment's customer and payment method, an attach's customer, a refund's dispute):
    with a charge's own writes lost and a later detach of its payment method landed, the
    charge's redelivery was refused `invalid_state`, its card charged at the provider
    under that key and no payment recorded (review finding)."""
    read_by_others = {
        _changelog_name(table) for table in (t.customers, t.payment_methods, t.disputes)
    }
    if not any(_decided_without_entity(e) for e in batch.emits) and not any(
        r.topic in read_by_others for r in batch.records
    ):
        return [batch.records]
    decisions = {_changelog_name(t.idempotency), _changelog_name(t.limits)}
    first = [r for r in batch.records if r.topic in decisions]
    rest = [r for r in batch.records if r.topic not in decisions]
    return [group for group in (first, rest) if group]


# Commands whose answer a run again need not repeat: a refresh reads the provider (no
# key, no stored answer there), and its redelivery may find another status. Its outcome
# landed without its decision, the redelivery answered the same command id a second time
# (another event, same entity version: the ledger kept the first as current). Decided
# first, a redelivery replays its answer, whatever else of the batch landed.
# An onboarding link writes no entity either (its URL is kept nowhere): its outcome landed
# without its decision, the redelivery made a second link, a second answer (another URL)
# to one command id; decided first, it is answered from its decision (`url` null).
_DECIDED_FIRST = READ_ONLY | PROVIDER_READS | {"connected_account.onboarding_link"}


def _decided_without_entity(emit: Emit) -> bool:
    """An answer (or a park) whose only record is its decision: no entity it wrote
    carries it, or one a run again could answer otherwise (see _delivery_order)."""
    if emit.topic == settings.retry_topic:
        return True
    summary = emit.summary or {}
    return (
        summary.get("outcome") in _ANSWERED_WITHOUT_WHAT_THEY_READ
        or summary.get("command") in _DECIDED_FIRST
    )


# Answers that write none of what they were decided on: a rejection, and a refund the
# provider failed (its payment read, not written; with a later refund's write of that
# payment landed and its own lost, its redelivery was refused `invalid_state`: review).
_ANSWERED_WITHOUT_WHAT_THEY_READ = frozenset({"command.rejected", "refund.failed"})


def _changelog_name(table: Any) -> str:
    return str(table.changelog_topic.get_topic_name())


async def _publish(
    producer: AIOKafkaProducer,
    records: list[OutRecord],
    commands: int,
    may_retry: Callable[[], bool] = lambda: True,
    still_ours: Callable[[], Awaitable[bool]] | None = None,
) -> list[SentBatch]:
    """Produce the batch's records until the broker has all of them.

    Transient broker trouble is retried for as long as it lasts: the partition waits, and
    nothing is acknowledged meanwhile. A retry may produce some records twice; changelog
    values are the same and duplicate outcomes are byte-identical (same event id).
    """
    global _producing
    try:
        for attempt in itertools.count(1):
            submitted: list[SentBatch] = []
            _producing += 1
            try:
                sent = await send_batches(producer, records, submitted=submitted)
                await _delivered(sent, commands)
                PUBLISH.delivered()
                return sent
            except KafkaError as exc:
                PUBLISH.failed(exc)
                # Every record batch of the attempt settles first (aiokafka gives each
                # up within its request timeout): from then on nothing of this batch is
                # with the producer, and a hand-over may give it up without an exit.
                pending = [b.future for b in submitted if not b.future.done()]
                if pending:
                    await asyncio.wait(pending)
                failure = exc
            finally:
                _producing -= 1
            # KafkaTimeoutError is aiokafka's own wait running out (for metadata, or for
            # room behind an earlier batch of the same partition that a leaderless
            # partition keeps queued until it expires): marked not retriable, and as safe
            # to retry as the rest. So is any refusal of the broker's
            # (TOPIC_AUTHORIZATION_FAILED, POLICY_VIOLATION, ...): nothing of the refused
            # record batch landed, and failing the batch ended the worker, then each next
            # owner of its partitions in turn (review h69b).
            if isinstance(failure, _NEVER_TAKEN):
                # The broker's error names no record, and the restart's topic check
                # passes (the topics take 1 MiB; this record is bigger): say which.
                log.critical("the broker refuses a record too large: %s", _largest(records))
                raise failure
            if not (
                failure.retriable or isinstance(failure, KafkaTimeoutError) or is_refusal(failure)
            ):
                raise failure
            if not may_retry():
                PUBLISH.abandoned()  # (the partition's next owner produces it)
                raise DeliveryAbandoned("a retry is not produced") from failure
            delay = min(PUBLISH_RETRY_MAX_SECONDS, 0.05 * 2**attempt)
            log.warning(
                "producing %d records failed (%r); retry in %.2f s", len(records), failure, delay
            )
            await asyncio.sleep(delay)
            # No new attempt while the group rebalances: the hand-over watch looked (or
            # will look) at _producing once, and the hook may be held up by Faust's
            # producer flush past the group moving the partitions. The hook gives this
            # batch up (nothing of it is with the producer) or the rebalance ends.
            while getattr(app, "rebalancing", False) and may_retry():
                await asyncio.sleep(0.05)
            if not may_retry() or (still_ours is not None and not await still_ours()):
                PUBLISH.abandoned()  # (the partition's next owner produces it)
                raise DeliveryAbandoned("a retry is not produced") from failure
    except asyncio.CancelledError:
        PUBLISH.abandoned()
        raise
    raise AssertionError("unreachable")


# Refusals the broker repeats for as long as the batch is the same (a record over the
# topic's max.message.bytes): the worker exits, and its restart's _check_record_limits
# names the topic, rather than stalling its partitions for good, excused by liveness. (A
# record over what the topics take, not a topic under it: named as the worker exits.)
_NEVER_TAKEN = (MessageSizeTooLargeError, RecordListTooLargeError)


def _largest(records: Sequence[OutRecord], count: int = 3) -> str:
    """The ``count`` largest of ``records``: topic[partition], key (tenant or entity ids,
    never card data or secrets; cut short) and size in bytes, for an operator."""

    def size(r: OutRecord) -> int:
        return len(r.key or b"") + len(r.value or b"")

    top = sorted(records, key=size, reverse=True)[:count]
    return "; ".join(
        f"{r.topic}[{r.partition}] key {(r.key or b'')[:80]!r}: {size(r):,} bytes" for r in top
    )


class DeliveryAbandoned(MembershipLapsed):
    """A batch given up between two produce attempts (its partitions may have moved, or
    a hand-over gave it up): nothing of it is with the producer, so the worker need not
    exit; it is neither delivered nor committed, and redone from the committed offsets."""


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
    """A record's headers as a dict of str names to bytes values (the last of a name
    given twice wins): ``_full_headers``. Made by one C-level ``dict()`` when that is
    what it gives, as for aiokafka's records (pairs of a ``str`` and ``bytes``): each
    ``str(k)`` and ``bytes(v or b"")`` is then ``k`` and ``v`` (an equal value), and the
    same pairs in the same order make the same dict. Anything else (a None value, a
    bytes name, a str or bytes subclass, something not a pair) takes the full path."""
    if not raw:
        return {}
    if isinstance(raw, dict):
        items: Any = raw.items()
    elif type(raw) is list or type(raw) is tuple:
        items = raw
    else:
        return _full_headers(raw)
    try:
        headers = dict(items)
    except (TypeError, ValueError):
        return _full_headers(raw)
    if (
        # (Every pair kept: a name given twice may hide a value the full path refuses.)
        len(headers) == len(raw)
        and set(map(type, headers)) <= _STR_ONLY
        and set(map(type, headers.values())) <= _BYTES_ONLY
    ):
        return headers
    return _full_headers(raw)


def _full_headers(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    items = raw.items() if isinstance(raw, dict) else raw
    return {str(k): bytes(v or b"") for k, v in items}


_STR_ONLY = frozenset({str})
_BYTES_ONLY = frozenset({bytes})


def _inbound(
    key: bytes | None,
    value: bytes | None,
    headers: dict[str, bytes],
    timestamp_ms: int,
    topic: str,
    partition: int,
    offset: int,
) -> Inbound:
    """``Inbound(key=key, value=value, ...)``, once per command (see ``frozen_record``)."""
    return frozen_record(
        Inbound,
        {
            "key": key,
            "value": value,
            "headers": headers,
            "timestamp_ms": timestamp_ms,
            "topic": topic,
            "partition": partition,
            "offset": offset,
        },
    )


def _active_partitions() -> set[int]:
    """The commands-topic partitions this worker serves (not its standbys)."""
    topic = commands_topic.get_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


runner = CommandRunner()

# Per partition of the commands topic, the offset this process last committed: records
# before it are never redelivered (the tenant limits forget their decisions).
COMMITTED: dict[int, int] = {}


async def process_commands(stream: Any) -> None:
    """Run payment commands against gateways and tables; emit one outcome per command.

    The next batch is processed while the one before is being delivered (overlap.py);
    a batch's offsets become committable once it and every batch before it are durable.
    A batch is never abandoned half-done: on shutdown (cancellation) the batches in hand
    are finished and their offsets committed first, and a failure that cannot be
    retried ends the process without committing, so the commands are redelivered.
    """
    offsets = DurableOffsets(
        app, published=COMMITTED, agent="commands", topic=commands_topic.get_topic_name()
    )
    guard = ContinuityGuard(
        app,
        commands_topic.get_topic_name(),
        on_passed=offsets.passed,
        assignments=lambda: _assignments,
    )
    chain = DeliveryChain()
    queue = stream.channel.queue
    committer = asyncio.ensure_future(commit_periodically(app, offsets, COMMIT_INTERVAL_SECONDS))
    in_hand = (chain, offsets)
    _IN_HAND.append(in_hand)
    _QUEUES.append(queue)
    try:
        async for taken in take_batches(
            stream,
            BATCH_MAX,
            BATCH_WITHIN,
            SWEEP_INTERVAL_SECONDS,
            assignments=lambda: _assignments,
            per_key_max=settings.batch_tenant_max,
        ):
            # (As they were taken: see _deliver; take_batches dropped a batch taken
            # before an assignment, so none came between taking and here.)
            taken_at = _assignments
            events = await guard.admit(taken)
            if queue.empty():
                events += await guard.sweep()
            await _within_uncommitted_bound(
                offsets, chain, events, moved=functools.partial(_moved_since, taken_at)
            )
            # The guard may have waited on the broker: if partitions moved meanwhile (the
            # rebalance hook has run), these events are their new owner's. A rejoin can
            # return the same generation: the assignments counted say it.
            await app.flow_control.acquire()
            if _assignments != taken_at:
                continue
            generation = app.consumer_generation_id
            events = [e for e in events if e.message.generation_id == generation]
            if not events:
                continue
            # What the guard read beside the batch (a gap Faust skipped, up to 500 of a
            # partition's records) runs in batches of at most batch_tenant_max commands
            # of one tenant too, as take_batches cut it (review h68v).
            parts = (
                [events]
                if len(events) == len(taken)
                else capped_runs(events, settings.batch_tenant_max)
            )
            for part in parts:
                if _assignments != taken_at:
                    break  # (moved meanwhile: the rest is its new owner's, or redone)
                # A cancel (shutdown) while waiting here leaves the batches running: the
                # finally below lets them finish before the last commit.
                await chain.run(
                    runner.process_batch(part),
                    functools.partial(_deliver, offsets, part, taken_at=taken_at),
                    on_done=functools.partial(_exit_if_failed, len(part)),
                )
    finally:
        _IN_HAND.remove(in_hand)
        _QUEUES.remove(queue)
        committer.cancel()
        await despite_cancellation(
            _close(offsets, chain), SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_CLOSE_SECONDS
        )


def capped_runs(events: list[EventT], per_key_max: int) -> list[list[EventT]]:
    """``events`` in order, cut before the event that would be the (``per_key_max`` +
    1)th of one record key in its run (as take_batches cuts what it takes)."""
    runs: list[list[EventT]] = [[]]
    counts: dict[bytes | None, int] = {}
    for event in events:
        key = event.message.key
        seen = counts.get(key, 0)
        if seen == per_key_max:
            runs.append([])
            counts, seen = {}, 0
        counts[key] = seen + 1
        runs[-1].append(event)
    return [run for run in runs if run]


def _may_delete(events: Sequence[EventT], taken_at: int) -> bool:
    """May a batch taken at assignment count ``taken_at`` delete from the tables (the
    retention sweep, the idempotency purge)? Not while the group rebalances, nor in a
    batch a hand-over gave up on, nor one of an older generation."""
    return (
        not app.rebalancing
        # Not while the broker refuses the batches before it: a hand-over may give them
        # up, and this batch with them, with the worker up (review h69e).
        and PUBLISH.trouble() is None
        and _assignments == taken_at
        and (_abandoned_at is None or _abandoned_at < taken_at)
        and bool(events)
        and events[-1].message.generation_id == app.consumer_generation_id
    )


def _moved_since(taken_at: int) -> bool:
    """Whether partitions were assigned since ``taken_at`` (an ``_assignments`` count)."""
    return _assignments != taken_at


async def _within_uncommitted_bound(
    offsets: DurableOffsets,
    chain: DeliveryChain,
    events: Sequence[EventT],
    moved: Callable[[], bool],
) -> None:
    """Return once handling ``events`` leaves no partition more than MAX_UNCOMMITTED
    records past its committed offset: what is in hand delivered and committed first,
    waiting as long as that commit does not land (the queue fills, fetching pauses, the
    stall probes say so); or once partitions ``moved`` (the caller drops the batch)."""
    said_at: float | None = None
    while offsets.past_bound(events, MAX_UNCOMMITTED):
        await chain.drain()
        if not app.rebalancing:  # (given nothing left to commit, Faust crashes the worker)
            try:
                # Bounded: aiokafka retries a coordinator error for ever, and the commit
                # goes on on Faust's consumer thread (offsets.commit waits for it again).
                await asyncio.wait_for(offsets.commit(), UNCOMMITTED_RETRY_SECONDS)
            except TimeoutError:
                pass  # (still in flight: said below)
            except Exception:
                log.warning("offset commit failed; trying again", exc_info=True)
        over = offsets.past_bound(events, MAX_UNCOMMITTED)
        if not over or moved():
            return
        if not any(offsets.ready_for(tp) for tp in over):
            # Nothing handled there is left to commit: the batch alone spans the bound
            # (records skipped on the broker). Waiting cannot bring it within.
            return
        now = time.monotonic()
        if said_at is None or now - said_at >= UNCOMMITTED_SAY_SECONDS:
            said_at = now
            log.warning(
                "partitions %s: over %d commands handled and not committed, and the "
                "commit does not land; handling no more until it does (the decisions "
                "kept for their redeliveries would be dropped)",
                sorted(tp.partition for tp in over),
                MAX_UNCOMMITTED,
            )
        await asyncio.sleep(UNCOMMITTED_RETRY_SECONDS)


# The command agent's batches in hand and durable offsets, for the rebalance hook below.
_IN_HAND: list[tuple[DeliveryChain, DurableOffsets]] = []
# The command agent's delivery queues (one per running actor).
_QUEUES: list[Any] = []


def has_backlog() -> bool:
    """Has every running command agent at least BACKLOG_EVENTS events queued?"""
    if len(_QUEUES) == 1:  # the usual case; asked once per record delivered
        return bool(_QUEUES[0].qsize() >= BACKLOG_EVENTS)
    return bool(_QUEUES) and all(q.qsize() >= BACKLOG_EVENTS for q in _QUEUES)


async def finish_batches_before_handing_over(
    sender: Any, *args: Any, signal: Any = None, **_: Any
) -> None:
    """On a rebalance, deliver the batches in hand and commit before partitions move.

    Faust suspends delivery and pauses the partitions, then calls this before the worker
    rejoins the group. Without it, a partition's new owner started from the last periodic
    commit while this worker was still delivering the batch in hand: both ran those
    commands, and this worker's late table writes could land in the changelog after the
    new owner's (a stale value on its next recovery). Bounded: a batch stuck on the
    broker is left to the new owner (its effects are idempotent), as before.
    """
    started = time.monotonic()
    try:
        # Shared: the whole hand-over, counted from when the rebalance began (Faust's
        # producer flush came first), not each step.
        deadline = (_watch.began or started) + REBALANCE_DRAIN_SECONDS
        runner.rescan_expiry()
        await _hand_over(deadline)
    finally:
        _watch.finished()
    log.info(
        "rebalance: batches in hand delivered and committed in %.3f s", time.monotonic() - started
    )


async def _hand_over(deadline: float) -> None:
    global _abandoned_at
    for chain, offsets in list(_IN_HAND):
        if not await chain.drain(max(0.0, deadline - time.monotonic())):
            if _producing:
                # Its records are with the producer, which retries them for as long as
                # its request timeout: they could land after the new owner's writes to
                # the same changelog partitions (a stale value for the next recovery).
                # Exiting ends those retries; the group reassigns only after the session
                # timeout, by when any request already sent has landed or failed.
                _exit_uncommitted(
                    "rebalance: the batch in hand was not delivered within "
                    f"{REBALANCE_DRAIN_SECONDS:.0f} s"
                )
            # Still processing: once processed, it is not delivered (see _deliver).
            _abandoned_at = _assignments
            log.warning(
                "rebalance: the batch in hand was not delivered within %.0f s; "
                "its commands will be redone from the committed offsets",
                REBALANCE_DRAIN_SECONDS,
            )
        try:
            # (At least a second: the deadline may be spent by Faust's producer flush.)
            await asyncio.wait_for(_final_commit(offsets), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("rebalance: offset commit timed out; the new owner redoes those commands")


async def _deliver(
    offsets: DurableOffsets, events: Sequence[EventT], batch: ProcessedBatch, taken_at: int
) -> None:
    """Deliver a processed batch (``taken_at``: the assignments counted when its events
    were taken), then make its offsets committable."""
    global _abandoned_at
    if events and not await still_a_member(events[0].message.generation_id, "a batch in hand"):
        # Frozen past the session timeout, say (review h61c): the partitions may be
        # another worker's, which redid these commands and went on; delivered now, this
        # batch's table changes would land after that worker's newer ones.
        _abandoned_at = _assignments
        log.warning(
            "a batch of %d commands is not delivered: this worker's group membership "
            "lapsed while it was in hand and the group is rebalancing; whoever owns its "
            "partitions redoes it from the committed offsets",
            len(events),
        )
        return
    if _abandoned_at is not None and taken_at <= _abandoned_at:
        # The hand-over gave up on it (or it was taken before the rejoin that followed):
        # nothing of it is delivered, nor committed. Its partitions may be moving, and
        # for one that stays, Faust's recovery reads the changelog only up to where it
        # stood as the assignment came: this batch's writes, landing after, would be
        # replaced in the store by older values (a kept rejection undone, a redelivery
        # answered otherwise). Redone from the committed offsets by whoever owns them,
        # its commands are answered from what is stored of them (the provider calls
        # were idempotent); none of its outcomes was emitted to be contradicted.
        log.warning(
            "a batch of %d commands the hand-over gave up on is not delivered: they are "
            "redone from the committed offsets",
            len(events),
        )
        return
    if events and events[0].message.generation_id != app.consumer_generation_id:
        # The batch outlived its partitions' hand-over (the rebalance hook gave up on
        # it). Where a partition went to another worker, that worker redoes these
        # commands and may have gone on: this batch's table changes, written now, would
        # land after its newer ones in the changelog, for its next recovery to read. So
        # only what came from partitions still ours is delivered (they are replayed here
        # from the committed offset and answered from these records); the provider calls
        # of the rest were idempotent.
        owned = _owned_partitions()
        moved = sorted({e.message.partition for e in events} - owned)
        if moved:
            log.warning(
                "a batch outlived the hand-over of partitions %s: their new owner redoes "
                "its commands; only those of partitions still ours are delivered",
                moved,
            )
            batch = batch.keep(owned)
    global _delivering
    _delivering += 1
    try:
        await runner.deliver_batch(batch)
    except DeliveryAbandoned:
        _exit_if_deleted(batch)
        # Between two attempts, nothing with the producer: as a batch the hand-over
        # gave up while still processing, neither it nor any batch taken with it is
        # delivered or committed (review h69b: the worker exited, and each next owner of
        # its partitions at the next rebalance while the broker refused its writes).
        _abandoned_at = max(taken_at, -1 if _abandoned_at is None else _abandoned_at)
        log.warning(
            "a batch of %d commands is given up between produce attempts: it is redone "
            "from the committed offsets",
            len(events),
        )
        return
    finally:
        _delivering -= 1
    offsets.advance(events)


def _exit_if_deleted(batch: ProcessedBatch) -> None:
    """A batch about to be given up between two produce attempts with the worker up: not
    one whose processing deleted or minimised (idempotency purge, retention sweep). Its
    deletes would stay in the store with their tombstones never produced (later passes
    skip what the store no longer holds; review h69e). Only a delete really written
    counts (review h69g: the purge's gate is open for nearly every batch). A batch given
    up at a hand-over while still in hand is dropped as before: exiting there made
    ordinary rebalances restarts, and a recovery from the changelog brings its deletes'
    records back for a later pass."""
    if getattr(batch, "deleted", False):  # (stand-in runners' batches have none)
        _exit_uncommitted("a batch that deleted from the tables was given up")


# Batches whose records are being produced (deliveries run one at a time).
_delivering = 0
# Produce attempts under way: some record batch of theirs may be with the producer, which
# retries it for its request timeout (a delivery waiting between attempts has none).
_producing = 0
# Assignments received (each rebalance ends in one), and how many there had been when
# the hand-over last gave up on a batch still processing: a batch taken before the next
# one is not delivered. (Generations could not say it: a batch can outlive two
# rebalances, and a rejoin can return the same generation.)
_assignments = 0
_abandoned_at: int | None = None


async def _count_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
    global _assignments
    _assignments += 1


async def _forget_tenants_moved_away(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    """The recent outcomes kept for tenants whose partition went to another worker are
    dropped: the outcomes view asks the new owner, and had they been kept, a tenant moved
    back would show them under the new ones, past a gap. On the assignment (the whole of
    it), not the revocation: the group revokes every partition at each rebalance, most
    given straight back."""
    topic = commands_topic.get_topic_name()
    runner.activity.keep_only_partitions({tp.partition for tp in assigned if tp.topic == topic})


class HandOverWatch:
    """Exit uncommitted if a rebalance is not through with a batch in delivery in time.

    Faust flushes its producer (unbounded: aiokafka retries a record batch for its whole
    request timeout, 20 minutes by default) before it calls the hand-over hook, so the
    hook alone cannot bound the wait: meanwhile the group gives this worker's partitions
    to another, and the batch's records could land after the new owner's writes to the
    same table changelogs. The watch starts with the rebalance (on Faust's consumer
    thread) and, if a batch is still in delivery ``seconds`` later, ends the process.
    """

    def __init__(
        self,
        seconds: float,
        delivering: Callable[[], bool],
        exit_: Callable[[str], None],
    ) -> None:
        self.seconds = seconds
        self._delivering = delivering
        self._exit = exit_
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.began: float | None = None  # time.monotonic() when the rebalance began

    def started(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self.began = time.monotonic()
            self._timer = threading.Timer(self.seconds, self._expired)
            self._timer.daemon = True
            self._timer.start()

    def finished(self) -> None:
        """The hand-over is through (or the worker is stopping: its own drain decides)."""
        with self._lock:
            self.began = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _expired(self) -> None:
        if self._delivering():
            self._exit(
                f"rebalance: a batch was still being delivered {self.seconds:.0f} s after "
                "the rebalance began"
            )


# A second past the hook's own deadline (counted from the same start): the hook decides
# whenever it gets to run in time.
_watch = HandOverWatch(
    REBALANCE_DRAIN_SECONDS + 1.0,
    delivering=lambda: _producing > 0,
    exit_=lambda what: _exit_uncommitted(what),
)


async def _rescan_after_recovery(sender: Any = None, **kwargs: Any) -> None:
    """The assignment's tables are recovered: the idempotency records they brought are
    found by a fresh scan at the next purge, and the sweep walks what is held now. (At
    the revocation alone, a batch drained meanwhile could run that scan before the
    recovery, and a parked request's id pointer recovered after it went unseen; review
    finding.)"""
    runner.rescan_expiry()


def _watch_rebalance(start: Callable[[], None]) -> Callable[[], None]:
    def on_rebalance_start() -> None:
        start()
        _watch.started()

    return on_rebalance_start


def _hand_over_while_stopping(
    on_revoked: Callable[[set[TP]], Awaitable[None]],
) -> Callable[[set[TP]], Awaitable[None]]:
    """Faust's revocation handler, preceded by :func:`_before_rejoining_while_stopping`
    when the worker is stopping (Faust decides that there too, on the main loop)."""

    async def on_partitions_revoked(revoked: set[TP]) -> None:
        if getattr(app, "should_stop", False):
            await _before_rejoining_while_stopping()
        await on_revoked(revoked)

    return on_partitions_revoked


async def _before_rejoining_while_stopping(seconds: float | None = None) -> None:
    """A rebalance while the worker stops: Faust then skips the hand-over hook and
    aiokafka rejoins as soon as this returns, so partitions may move straight away. A
    batch in delivery gets a moment to land, else the worker exits without rejoining;
    and no batch taken before the new assignment is delivered (`_deliver` drops it:
    left uncommitted, it is redone by the next owner). On the main loop, as `_deliver`:
    neither can act between the other's check and act."""
    global _abandoned_at
    deadline = time.monotonic() + (REBALANCE_DRAIN_SECONDS if seconds is None else seconds)
    while _delivering and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if _delivering:
        _exit_uncommitted("stopping: a batch was still being delivered as a rebalance began")
    _abandoned_at = _assignments


def _owned_partitions() -> set[int]:
    """The commands-topic partitions assigned to this worker now."""
    topic = commands_topic.get_topic_name()
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}


def _exit_if_failed(commands: int, batch: asyncio.Future[None]) -> None:
    # Nothing cancels a batch (shutdown drains them), so a cancelled one failed too.
    if batch.cancelled():
        _exit_uncommitted(f"a batch of {commands} commands was cancelled")
    elif (exc := batch.exception()) is not None:
        _exit_uncommitted(f"a batch of {commands} commands could not be completed", exc)


async def _close(
    offsets: DurableOffsets, chain: DeliveryChain, drain_seconds: float = SHUTDOWN_DRAIN_SECONDS
) -> None:
    """Let the batches in hand be delivered, commit, close; exit uncommitted if a batch
    is still undelivered after ``drain_seconds`` (its commands are redelivered)."""
    try:
        # What is durable already goes first: the periodic committer has stopped, and
        # the process may be killed while the batch in hand waits for a slow broker.
        await _final_commit(offsets)
        await chain.drain(drain_seconds)  # a failed batch has ended the process
        # Only batches delivered in order are ready: committing them is safe either way.
        await _final_commit(offsets)
    finally:
        # However the above ended (even cancelled), never carry on past that batch.
        if chain.last is not None and not chain.last.done():
            _exit_uncommitted(f"the batch in hand was not delivered within {drain_seconds:.0f} s")
    await runner.aclose()


async def _final_commit(offsets: DurableOffsets) -> None:
    try:
        await offsets.commit()
    except Exception:  # the consumer may already be gone; redelivery covers it
        log.warning("final offset commit failed", exc_info=True)


def _exit_uncommitted(what: str, exc: BaseException | None = None) -> None:
    """Leave without committing the batch: its commands are redelivered, never lost.

    Exiting, not raising: a worker that carried on past a batch it could not finish would
    commit later offsets, and with them this batch's.
    """
    log.critical("%s; exiting without committing it so that it is redelivered", what, exc_info=exc)
    # (the counts the last minute held back: os._exit skips the atexit flush; review h78j F2)
    flush_all(final=True)
    logging.shutdown()
    os._exit(EXIT_UNCOMMITTED)


if settings.runs("commands"):
    process_commands_agent = app.agent(commands_topic, name="process_commands")(process_commands)
    # (mode's signal stubs do not admit a coroutine function; it is awaited all the same)
    app.on_partitions_revoked.connect(cast(Any, finish_batches_before_handing_over))
    # (Called by Faust's consumer thread as a rebalance begins, before anything waits.)
    app.on_rebalance_start = _watch_rebalance(app.on_rebalance_start)  # type: ignore[method-assign]
    app.on_partitions_assigned.connect(cast(Any, _count_assignment))
    app.on_partitions_assigned.connect(cast(Any, _forget_tenants_moved_away))
    app.on_rebalance_complete.connect(cast(Any, _rescan_after_recovery))
    # (Faust hands this handler to its consumer when it creates it, at start: not yet.)
    app._on_partitions_revoked = _hand_over_while_stopping(app._on_partitions_revoked)  # type: ignore[method-assign,assignment]
