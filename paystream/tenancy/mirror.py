"""Every tenant record on every worker: the registry topic, read whole and then followed.

The registry used to be mirrored into a Faust GlobalTable by an agent consuming the
registry topic in the consumer group. In a fleet that split the topic's partitions
between workers, and Faust's GlobalTable does not pass one worker's writes on to the
others once they run (faust-streaming issue #283): each worker knew only the tenants
on its own partitions of the registry topic, and the registry topic is not partitioned
like the commands topic, so commands of some tenants were rejected as `unknown_tenant`
(found by the two-worker crash test). A consumer outside the group reads every
partition instead, as a Kafka Streams GlobalKTable does; the registry is small.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth
from paystream.tenancy.ingress_keys import IngressKey, key_id_of, matched_key
from paystream.tenancy.models import Tenant, TenantStatus

__all__ = ["RegistryMirror", "RegistryState"]

log = logging.getLogger(__name__)

# How long a fetch waits for new registry records. Real Kafka answers as soon as one
# arrives; the embedded broker only re-checks at half this, so a change reaches the
# workers within about that long (an idle fetch costs the broker more the shorter it is).
POLL_MS = 500
# While the registry topic does not exist, how often to look for it again.
MISSING_TOPIC_RETRY_SECONDS = 5.0
# After an unexpected error, before reading on.
ERROR_BACKOFF_SECONDS = 1.0
# How often a caught-up mirror checks that the topic is still the one it read (not
# deleted and recreated, not repartitioned). Kafka clients see no topic ids here: a topic
# recreated between two checks that already holds more records than were read is missed.
TOPIC_CHECK_SECONDS = 30.0


class _RegistryMoved(Exception):
    """The registry topic was recreated or repartitioned: it is to be read afresh."""


@dataclass
class RegistryState:
    """The tenants as the records applied so far say, last record per tenant winning."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    # Tenants whose latest record could not be read (e.g. written by a newer
    # paystream): what ``tenants`` holds for them is older than the registry.
    unreadable: set[str] = field(default_factory=set)
    # Of those, the ones whose unreadable record still says "suspended".
    unreadable_suspended: set[str] = field(default_factory=set)
    # Their latest records as they came (for `tenants suspend`, which patches one).
    unreadable_raw: dict[str, bytes] = field(default_factory=dict)
    invalid: int = 0  # records skipped as invalid, for the log and tests
    changes: int = 0  # records applied (and swaps): what is derived from it is redone
    # Suspensions under keys paystream does not write: (tenant, key) → the record's time;
    # and each tenant's own latest record's time. Such a suspension holds while it is
    # newer than the tenant's record, whatever order the partitions are read in.
    foreign_suspensions: dict[tuple[str, bytes], int] = field(default_factory=dict)
    record_at: dict[str, int] = field(default_factory=dict)
    own: dict[str, Tenant] = field(default_factory=dict)  # each one's record, as it says

    def apply(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> str | None:
        """One registry record: the tenant's new record, or a tombstone. Returns the
        tenant id it concerns (None for a record without one). ``timestamp_ms``: the
        record's time (None: later than every record applied before)."""
        self.changes += 1
        at = self.changes if timestamp_ms is None else timestamp_ms
        try:
            tenant_id = json.loads(key) if key else None
        except (ValueError, RecursionError):  # hostile nesting must not stop the mirror
            tenant_id = None
        if not isinstance(tenant_id, str) or not tenant_id:
            self._skip("a registry record without a tenant id key")
            return None
        if key != json.dumps(tenant_id).encode():
            # Not written by paystream (' "acme"', '"\u0061cme"'): Kafka compacts and
            # partitions by the key's bytes, so it never replaces the tenant's own record
            # and may be read before it on a re-read. Only a suspension in it is honoured
            # (review finding: it was the tenant's record, and an active one could win).
            # It holds while newer than the tenant's own record, read before it or after
            # (review finding: honoured only when read after it, a restart reading the
            # partitions in another order lost it, or undid an activation since).
            foreign = (tenant_id, key or b"")  # (a key it is: the id came from it)
            if value is not None and says_suspended(value):
                self.foreign_suspensions[foreign] = at
            else:
                self.foreign_suspensions.pop(foreign, None)
            self._overlay(tenant_id)
            self._skip(f"a registry record for {tenant_id!r} under a key paystream does not write")
            return tenant_id
        self.unreadable_suspended.discard(tenant_id)
        # An empty value is a removal too: what tools write when asked to delete a key
        # without sending a null (no paystream version writes one). Taken for a record
        # from a newer version, it kept the tenant active, and the CLI refused to change it.
        if value is None or not value.strip():
            self.tenants.pop(tenant_id, None)
            self.unreadable.discard(tenant_id)
            self.unreadable_raw.pop(tenant_id, None)
            self.record_at.pop(tenant_id, None)
            self.own.pop(tenant_id, None)
            return tenant_id
        try:
            tenant = Tenant.model_validate_json(value)
        except ValueError:
            # e.g. written by a newer paystream with fields this worker does not know.
            self._unreadable(tenant_id, value, f"an invalid registry record for {tenant_id!r}")
            return tenant_id
        if tenant.tenant_id != tenant_id:
            self._unreadable(
                tenant_id,
                value,
                f"a registry record for {tenant.tenant_id!r} under key {tenant_id!r}",
            )
            return tenant_id
        self.tenants[tenant_id] = tenant
        self.unreadable.discard(tenant_id)
        self.unreadable_raw.pop(tenant_id, None)
        self.record_at[tenant_id] = at
        self.own[tenant_id] = tenant
        self._overlay(tenant_id)
        return tenant_id

    def _overlay(self, tenant_id: str) -> None:
        """The tenant as its own record says, suspended while a suspension under another
        key is newer than that record (or its newest record, unreadable here, says so)."""
        since = self.record_at.get(tenant_id, -1)
        suspended = tenant_id in self.unreadable_suspended or any(
            at > since
            for (tenant, _), at in self.foreign_suspensions.items()
            if tenant == tenant_id
        )
        own = self.own.get(tenant_id)
        if own is None:
            # None read here (its only record left unreadable, served as a re-read
            # kept it: RegistryMirror._swap_in): a suspension holds all the same.
            kept = self.tenants.get(tenant_id)
            if kept is not None and suspended:
                self.tenants[tenant_id] = _suspended(kept)
            return
        self.tenants[tenant_id] = (
            _suspended(own) if suspended and own.status is not TenantStatus.SUSPENDED else own
        )

    def _unreadable(self, tenant_id: str, value: bytes, what: str) -> None:
        """Keep the tenant's last record this worker could read, but never miss a
        suspension (failing open would go on charging a suspended tenant): one under
        another tenant's id too (review finding: it was ignored)."""
        self.unreadable.add(tenant_id)
        self.unreadable_raw[tenant_id] = value
        if says_suspended(value):
            self.unreadable_suspended.add(tenant_id)
            kept = self.tenants.get(tenant_id)
            if kept is not None:
                self.tenants[tenant_id] = _suspended(kept)
        self._skip(what)

    def _skip(self, what: str) -> None:
        self.invalid += 1
        log.warning("tenant registry: ignoring %s", what)


def _suspended(tenant: Tenant) -> Tenant:
    return tenant.model_copy(update={"status": TenantStatus.SUSPENDED})


def says_suspended(value: bytes) -> bool:
    """Whether a registry record's value (any key's) says its tenant is suspended: any
    status but "active" (one a newer version added, a tool's "SUSPENDED") fails closed."""
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("status", TenantStatus.ACTIVE.value) not in (
        TenantStatus.ACTIVE.value,
    )


class RegistryMirror:
    """The latest valid record of every tenant, kept current while :meth:`run` runs.

    ``tenants`` maps tenant id to its :class:`Tenant`; ``ready`` is set once everything
    the topic held when the mirror started has been read, so a worker never takes a
    registered tenant for an unknown one. A read from the beginning (the first, or after
    a broker error or a recreated topic) goes into a state of its own, swapped in whole
    once caught up: meanwhile the tenants stay as last known, never older.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        poll_ms: int = POLL_MS,
        topic_check_seconds: float = TOPIC_CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.poll_ms = poll_ms
        self.topic_check_seconds = topic_check_seconds
        self._state = RegistryState()
        # The very dict and set the command processor and the views hold: only ever
        # changed in place.
        self.tenants = self._state.tenants
        self.unreadable = self._state.unreadable
        self.ready = asyncio.Event()
        # For caught_up(): the reader's consumer and partitions while it follows the
        # topic, where it had read to (and applied) at its loop's last turn, whether a
        # read from the beginning is still loading, and a turn of its loop (set once a
        # turn is through, then replaced).
        self._reading: tuple[AIOKafkaConsumer, list[TopicPartition]] | None = None
        self._read_to: dict[TopicPartition, int] = {}
        self._loading = True
        self._topic_missing = False
        self._turned = asyncio.Event()
        # Every tenant's ingress keys by id, as of ``_state.changes`` (see
        # ingress_key_of).
        self._keys_by_id: dict[str, list[tuple[str, Mapping[str, IngressKey]]]] = {}
        self._keys_by_id_at = -1

    @property
    def invalid(self) -> int:
        return self._state.invalid

    @property
    def unreadable_raw(self) -> dict[str, bytes]:
        return self._state.unreadable_raw

    @property
    def changes(self) -> int:
        """Records applied and re-reads swapped in: what is derived from ``tenants``
        is redone when it moves."""
        return self._state.changes

    def apply(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> str | None:
        """Apply one registry record to the tenants served now."""
        return self._state.apply(key, value, timestamp_ms)

    def ingress_key_of(self, credential: str) -> tuple[str, str, IngressKey] | None:
        """(tenant, key id, key) of the ingress key ``credential`` is, expired or not.
        (Asked before a request's body is read, so that a made-up key, or a real key id
        with a made-up secret, costs no parsing and is answered as any made-up key: a
        parse error's 400 told which key ids exist; review finding. Whose key it is, is
        checked against the command's tenant after.)"""
        if self._keys_by_id_at != self._state.changes:
            by_id: dict[str, list[tuple[str, Mapping[str, IngressKey]]]] = {}
            for tenant_id, tenant in self.tenants.items():
                for key_id in tenant.ingress_keys:
                    by_id.setdefault(key_id, []).append((tenant_id, tenant.ingress_keys))
            self._keys_by_id, self._keys_by_id_at = by_id, self._state.changes
        holders = self._keys_by_id.get(key_id_of(credential) or "", ())
        for tenant_id, held in holders:
            found = matched_key(held, credential)
            if found is not None:
                return (tenant_id, *found)
        return None

    def _swap_in(self, loaded: RegistryState) -> None:
        # A tenant whose only record left (compacted) is one this worker cannot read is
        # still served from the record it read before, suspended if the new one says so:
        # dropping it would answer all its commands `unknown_tenant`, for good.
        for tenant_id in loaded.unreadable - loaded.tenants.keys():
            kept = self.tenants.get(tenant_id)
            if kept is not None:
                suspend = tenant_id in loaded.unreadable_suspended
                loaded.tenants[tenant_id] = _suspended(kept) if suspend else kept
        # Synchronous: no command sees a half-replaced registry.
        self.tenants.clear()
        self.tenants.update(loaded.tenants)
        self.unreadable.clear()
        self.unreadable.update(loaded.unreadable)
        self._state.unreadable_suspended = loaded.unreadable_suspended
        self._state.unreadable_raw = loaded.unreadable_raw
        self._state.foreign_suspensions = loaded.foreign_suspensions
        self._state.record_at = loaded.record_at
        self._state.own = loaded.own
        # A re-read meets the records skipped before again: count them once.
        self._state.invalid = max(self._state.invalid, loaded.invalid)
        self._state.changes += 1

    async def caught_up(self) -> float:
        """Return once this copy has read every record the registry topic held when
        asked, and no read from the beginning is loading: a tenant whose record was
        written before (one another worker has already run a command of) is known here.
        Returns when it was asked (time.time()). One round trip when nothing is left to
        read (held behind the reader's fetch); a broker error waits it out; with the
        topic gone after a first load (no tenant can be added), at once."""
        asked = time.time()
        while True:
            reading = self._reading
            if reading is None:
                if self._topic_missing and self.ready.is_set():
                    return asked
                await self._turned.wait()
                continue
            ends = await self._end_offsets(reading)
            if ends is None:  # (the reader restarted, or the ask failed: ask again)
                continue
            _, tps = reading
            while self._reading is reading:
                if not self._loading and all(self._read_to.get(tp, -1) >= ends[tp] for tp in tps):
                    return asked
                await self._turned.wait()

    async def _end_offsets(
        self, reading: tuple[AIOKafkaConsumer, list[TopicPartition]]
    ) -> dict[TopicPartition, int] | None:
        """The topic's end offsets, asked on the reader's consumer; None once the reader
        stops that consumer (an answer in flight on a stopped consumer waits out its
        request timeout, 40 s: review h62e) or the ask fails (after a turn)."""
        consumer, tps = reading
        ask = asyncio.ensure_future(consumer.end_offsets(tps))
        try:
            while not ask.done() and self._reading is reading:
                turn = asyncio.ensure_future(self._turned.wait())
                try:
                    await asyncio.wait({ask, turn}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    turn.cancel()
        finally:
            if not ask.done():
                ask.cancel()
        if not ask.done() or ask.cancelled():  # (given up above: its cancel is pending)
            return None
        failed = ask.exception()  # (read: a failure left unread is logged as never retrieved)
        if self._reading is not reading:
            return None
        if failed is not None:
            if not isinstance(failed, KafkaError):
                raise failed
            await self._turned.wait()  # (the reader says it and starts again)
            return None
        return ask.result()

    def _turn(self) -> None:
        turned, self._turned = self._turned, asyncio.Event()
        turned.set()

    async def run(self) -> None:
        """Read the registry from the beginning, then follow it until cancelled."""
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bootstrap_servers(self.settings.require_broker()),
                **client_auth(self.settings),
                enable_auto_commit=False,
                # Every position is set explicitly: a position that has gone out of range
                # means the topic was recreated (or truncated), not "start over quietly".
                auto_offset_reset="none",
                fetch_max_wait_ms=self.poll_ms,
            )
            try:
                await consumer.start()
                await self._follow(consumer)
            except KafkaError as exc:
                # Starting up (the broker not there yet): start over from the beginning.
                # (Its error says why; a traceback a second would bury it.)
                log.warning("tenant registry: cannot read the registry topic (%s); retrying", exc)
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)
            except _RegistryMoved as moved:
                log.warning("tenant registry topic %s; reading it afresh", moved)
            except Exception:
                # Never end quietly: a dead mirror would leave the worker ready on a
                # frozen registry, missing every later suspension.
                log.exception("tenant registry: unexpected failure; reading it afresh")
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)
            finally:
                self._reading = None
                self._turn()
                await _stopped(consumer)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.tenants_topic
        started = time.monotonic()
        tps = await topic_partitions(consumer, topic)
        while not tps:
            # Not "no tenants": `paystream topics` creates the topic before workers start,
            # so a missing one is a misnamed, deleted or not yet visible topic. Being
            # ready would reject every command for good as `unknown_tenant`; instead the
            # commands wait in Kafka (and /readyz says so), or, on a re-read, the tenants
            # stay as last known.
            log.warning(
                "tenant registry topic %r does not exist: %s (run `paystream topics`, or "
                "check PAYSTREAM_TENANTS_TOPIC)",
                topic,
                "commands run on the tenants as last read"
                if self.ready.is_set()
                else "commands (and the insights' counts) wait until it does",
            )
            self._topic_missing = True
            self._turn()
            await asyncio.sleep(MISSING_TOPIC_RETRY_SECONDS)
            tps = await topic_partitions(consumer, topic)
        self._topic_missing = False
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        behind = {tp for tp in tps if ends[tp] > 0}
        # Read from the beginning into a state of its own: tenants deleted meanwhile
        # (their tombstones may be compacted away) are simply not in it.
        loading: RegistryState | None = RegistryState()
        self._reading, self._read_to, self._loading = (consumer, tps), {}, True
        next_check = time.monotonic() + self.topic_check_seconds
        while True:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.topic_check_seconds
                await _check_unmoved(consumer, tps, ends)
            try:
                batch = await consumer.getmany(timeout_ms=self.poll_ms * 2)
                state = loading or self._state
                for records in batch.values():
                    for r in records:
                        state.apply(r.key, r.value, r.timestamp)
                if behind:
                    behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
                if not behind and loading is not None:
                    self._swap_in(loading)
                    loading = None
                    self.ready.set()
                    log.info(
                        "tenant registry loaded: %d tenant(s) in %.1f s",
                        len(self.tenants),
                        time.monotonic() - started,
                    )
                self._read_to = {tp: await consumer.position(tp) for tp in tps}
                self._loading = loading is not None
                self._turn()
            except OffsetOutOfRangeError as exc:
                raise _RegistryMoved("lost the position read to (recreated or truncated)") from exc
            except KafkaError:
                log.exception("tenant registry: read failed; retrying")
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)


async def _check_unmoved(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends_at_start: dict[TopicPartition, int]
) -> None:
    """Raise :class:`_RegistryMoved` if the topic is not the one being followed any more.

    A partition's end never moves back: one that now ends before where it ended when the
    read started, or before what was read, belongs to a recreated (or truncated) topic.
    """
    if await topic_partitions(consumer, tps[0].topic) != tps:
        raise _RegistryMoved("changed partitions (deleted, recreated or repartitioned)")
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        if ends[tp] < max(ends_at_start[tp], await consumer.position(tp)):
            raise _RegistryMoved(f"partition {tp.partition} ends before it did (recreated)")


async def _stopped(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. aiokafka's fetcher, stopped in its retry sleep with the broker
    gone, lets its own cancellation out of stop(): not ours unless this task is being
    cancelled (raised, it ended the mirror for good, the process left on a frozen
    registry)."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("tenant registry: the reader stopped with the broker unreachable")
