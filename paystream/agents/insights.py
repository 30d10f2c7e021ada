"""Insights: analytics windows and fraud alerts from the outcome stream.

Runs inside the outcomes agent (agents/ledger_sink.py), which reads ``paystream.events``
once for the ledger and for this, and commits a batch's offsets only once both are done
(one consumer group: two agents on one topic would commit over each other's progress).

Per registered tenant, one ``insights`` table record (see insights/state.py) holds its
open windows and fraud counters and the offset of the last outcome applied. The
``insights_seen`` table keeps the id of every outcome counted, for the horizon: paystream
re-emits an outcome under its id when its command is redelivered after a crash or sent
again by its client, and that must not count twice. A batch's ids counted and the
events it publishes are produced and awaited first, its tenant records (which say how
far the outcomes were applied) after them, all before its offsets may be committed.
Lateness, window expiry and the forgetting of counted ids go by each tenant's stream
time (insights/state.py: the latest production time of its outcomes read), so a backlog
read late counts as it would have when produced. Windows are published once closed
(end + grace): by stream time as a batch is applied, by the worker's clock on the tick
(a quiet tenant's too); and again, updated, if a later outcome changes them (a window
stays until stream time passes its horizon: never made again from nothing). A worker
that takes a partition over
publishes its tenants' windows again (the same events, by id, if unchanged), so one
lost in a crash between the table change and the publication is not lost for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer
from faust.types import EventT
from prometheus_client import Counter

from paystream.agents.member_lease import MembershipLapsed, current_generation, still_a_member
from paystream.app import app, settings, tables_settled
from paystream.insights.events import alert_event, window_event
from paystream.insights.observe import observe
from paystream.insights.seen_index import SeenIndex
from paystream.insights.state import WINDOWS_MAX, InsightsConfig, TenantInsights, window_start
from paystream.log_limits import ThrottledLog
from paystream.settings import Settings
from paystream.streams.batch_producer import KeyPartitioner, OutRecord, send_batches
from paystream.streams.codec import KafkaRecord, UndecodableRecord, decode_record, headers_to_dict
from paystream.streams.outcomes import OUTCOME_PREFIX, RejectReason
from paystream.tables.changelog import at_partition, collect_changelog

__all__ = ["ENABLED", "InsightsRunner", "config_from", "runner"]

log = logging.getLogger(__name__)
# Bugs of ours met per record: logged once a minute per place, card numbers cut out.
_BUGS = ThrottledLog(log)

ENABLED = settings.runs("insights")

# How often an idle worker looks for windows to publish and ids to forget.
TICK_SECONDS = 1.0
# Counted ids forgotten a tick: at least this many of those due, or a 60th of them. A
# window's ids come due together (at 1,000 outcomes/s, 60,000 of them, ~15 µs each to
# delete): deleted in one tick, they held the loop, and every command, for about a
# second. Spread, a tick deletes about as many as came in a second, whatever the rate
# (the due backlog settles near 60 s of ids).
SEEN_FORGET_PER_TICK = 500
SEEN_FORGET_TICKS = 60
RECENT_ALERTS = 50  # alerts the dashboard shows

_Published = tuple[str, KafkaRecord]  # (topic, record)

SKIPPED = Counter(
    "paystream_insights_skipped_total",
    "Outcomes the insights did not count, by why: duplicate (re-emitted, counted before), "
    "late (not in the analytics windows: dated more than the horizon before the tenant's "
    "stream time, or its window let go to keep the record at 64 windows; the fraud rules "
    "still see those), future (dated more than the horizon ahead), "
    "unregistered (tenant), not_an_outcome, other_partition (a registered tenant's "
    "outcome on a partition not the tenant's: forged, or another producer's "
    "partitioner), error (a failure of ours, logged).",
    ["why"],
)
PUBLISHED = Counter(
    "paystream_insights_published_total",
    "Analytics windows and fraud alerts published.",
    ["kind"],
)


def config_from(cfg: Settings) -> InsightsConfig:
    window_ms = cfg.insights_window_seconds * 1000
    return InsightsConfig(
        window_ms=window_ms,
        grace_ms=min(5_000, window_ms),
        horizon_ms=cfg.insights_horizon_seconds * 1000,
        fraud_window_ms=cfg.fraud_window_seconds * 1000,
        subject_declines=cfg.fraud_subject_declines,
        burst_declines=cfg.fraud_burst_declines,
        flood_declines=cfg.fraud_flood_declines,
    )


# Refusals only a worker that found the command's tenant registered gives: a tenant's
# state, limits or provider were consulted. Others may be made before the lookup, to a
# made-up tenant's malformed or unknown command (review h62e), or after it, to a real
# one (its data invalid, a capability its provider lacks: review h62f).
_FOUND_TENANT_REFUSALS = frozenset(
    reason.value
    for reason in (
        RejectReason.TENANT_SUSPENDED,
        RejectReason.IDEMPOTENCY_CONFLICT,
        RejectReason.INVALID_STATE,
        RejectReason.NOT_FOUND,
        RejectReason.RATE_LIMITED,
        RejectReason.QUOTA_EXCEEDED,
        RejectReason.GATEWAY_NOT_CONFIGURED,
        RejectReason.PROVIDER_REJECTED,
    )
)
# How far the producing worker's clock (an outcome's record time) may be behind this
# one's: an outcome made that long before the registry was last read to its end has its
# tenant's record read, if it had one.
CLOCK_SKEW_SECONDS = 30.0
# At most one read to the end this often for refusals that do not say whether the tenant
# was found (other than `unknown_tenant`, which says it was not): a stream of a made-up
# tenant's malformed commands costs the outcome agent a round trip in so many seconds,
# not one a batch.
REFUSAL_ASK_SECONDS = 10.0
_FOUND, _MAYBE = "found", "maybe"  # (see InsightsRunner._tenant_unknown)


class InsightsRunner:
    """Applies outcome batches to the insights tables and publishes what they yield."""

    def __init__(
        self,
        cfg: Settings,
        tenants: Mapping[str, Any],
        state: Any,
        seen: Any,
        *,
        clock: Callable[[], float] = time.time,
        settled: Callable[[], bool] | None = None,
        tenants_ready: asyncio.Event | None = None,
        registry_caught_up: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self.settings = cfg
        self._settled = settled or tables_settled
        self.config = config_from(cfg)
        self.tenants = tenants  # the registry: only registered tenants are tracked
        # Set once ``tenants`` holds the whole registry, and returning once it holds all
        # the registry held when asked: see await_tenants.
        self.tenants_ready = tenants_ready
        self._registry_caught_up = registry_caught_up
        self._caught_up_at = 0.0  # when the registry was last asked to its end (s)
        self._refusal_asked_at = -REFUSAL_ASK_SECONDS  # (monotonic) for such a refusal
        self.state = state  # tenant id → TenantInsights record
        self.seen = seen  # "tenant:event id" → [window start ms, offset, partition]
        self._clock = clock
        # Per partition, the furthest stream time of a tenant read there: what a tenant
        # with none yet is held against (see _apply).
        self._partition_stream: dict[int, int] = {}
        self._partitioner: KeyPartitioner | None = None
        self._ticked = 0.0
        # The counted ids by tenant and window, to forget the old without a full scan.
        self._seen_index = SeenIndex()
        self._generation: int | None = None  # of the last takeover republished
        self._tried: int | None = None
        # (table, key) → (table, key, value before, partition): see _undone_on_failure.
        self._undo: dict[tuple[int, str], tuple[Any, str, Any, int]] | None = None
        # The batch's outcomes not counted, by why: counted once it is stored (a batch
        # retried after a failed produce would count them again, each time).
        self._skips: list[Any] = []
        self._topic = cfg.events_topic  # the tables' source topic (co-partitioned)
        # For the dashboard: the latest alerts and each tenant's latest window published.
        self.recent_alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.latest_windows: dict[str, dict[str, Any]] = {}

    async def await_tenants(self, events: Sequence[EventT]) -> bool:
        """Wait until this worker's registry knows every tenant of ``events`` that was
        registered when they were made; True if it waited (the caller takes the batch's
        generation again). An outcome of a tenant not in it is skipped as unregistered,
        and its batch committed past: lost to the insights for good. So the registry is
        first loaded (a worker started with outcomes waiting read them first: review
        h62a), and, for an outcome only a worker that knew the tenant gives, read to its
        end (the tenant's record precedes it: a tenant added and sent a command at once,
        its outcome read by another worker, or on another partition than its commands;
        review h62d). That read costs a round trip held behind the reader's fetch (up to
        a second on the embedded broker), so not for an `unknown_tenant` refusal, nor for
        outcomes made before the last such read, and for refusals that may be given to a
        tenant nobody knows (a made-up tenant's malformed commands: review h62e), at most
        once in REFUSAL_ASK_SECONDS."""
        waited = False
        if self.tenants_ready is not None and not self.tenants_ready.is_set():
            await self.tenants_ready.wait()
            waited = True
        if self._registry_caught_up is None:
            return waited
        found = {self._judged(event) for event in events}
        paced = time.monotonic() - self._refusal_asked_at >= REFUSAL_ASK_SECONDS
        if _FOUND in found or (_MAYBE in found and paced):
            self._caught_up_at = await self._registry_caught_up()
            if _MAYBE in found:
                self._refusal_asked_at = time.monotonic()
            waited = True
        return waited

    def _judged(self, event: EventT) -> str | None:
        try:
            return self._tenant_unknown(event)
        except Exception as exc:
            # A bug of ours on one outcome: the batch's others judged still (review h62h),
            # and asked for at the refusals' pace (_apply, which reads it alike, most
            # likely skips it as an error anyway: review h62i).
            msg = event.message
            _BUGS.bug(
                exc,
                "insights: outcome %s[%s]@%s not judged",
                self._topic,
                getattr(msg, "partition", "?"),
                getattr(msg, "offset", "?"),
            )
            return _MAYBE

    def _tenant_unknown(self, event: EventT) -> str | None:
        """Whether ``event`` is an outcome (read as _apply reads it), made since the
        registry was last read to its end, of a tenant not in it: _FOUND if a worker that
        found the tenant in its own gave it, _MAYBE if one may have; None otherwise."""
        msg = event.message
        if msg.key is not None and msg.key.decode(errors="replace") in self.tenants:
            return None  # (outcomes are keyed by tenant: most are known at a glance)
        made = msg.timestamp  # (s; the producing worker's clock; 0 or less: not known)
        if made is not None and 0 < made < self._caught_up_at - CLOCK_SKEW_SECONDS:
            return None  # (read to its end since: a tenant deleted, or nobody's)
        try:
            cloud_event = decode_record(msg.key, msg.value, headers_to_dict(msg.headers))
        except UndecodableRecord:
            return None
        seen = observe(cloud_event)
        if seen is None or seen.tenant_id in self.tenants:
            return None
        if cloud_event.get_type() != f"{OUTCOME_PREFIX}command.rejected":
            return _FOUND
        data = cloud_event.get_data()
        if not isinstance(data, dict):
            return _MAYBE  # (not paystream's: its refusals carry an object)
        reason = data.get("reason")
        if not isinstance(reason, str):
            return _MAYBE  # (not paystream's: its reasons are strings)
        if reason == RejectReason.UNKNOWN_TENANT.value:
            return None
        if data.get("errors") or isinstance(data.get("error"), dict):
            # The command's data refused field by field, or the provider's answer: both
            # after the tenant lookup (review h62i).
            return _FOUND
        return _FOUND if reason in _FOUND_TENANT_REFUSALS else _MAYBE

    async def run_batch(self, events: Sequence[EventT]) -> None:
        """Count a batch's outcomes; returns once its changes and events are durable."""
        now_ms = int(self._clock() * 1000)
        out: list[_Published] = []
        self._skips = []
        with collect_changelog() as changelog, self._undone_on_failure():
            touched: dict[str, tuple[TenantInsights, int]] = {}
            for event in events:
                try:
                    self._apply(event, touched, out)
                except Exception as exc:
                    # A bug of ours on one outcome must not stall the partition: the batch
                    # would be retried for ever, and the ledger sink with it. (Logged once
                    # a minute per place: every outcome that meets it would log it.)
                    msg = event.message
                    _BUGS.bug(
                        exc,
                        "insights: outcome %s[%d]@%d not counted",
                        self._topic,
                        msg.partition,
                        msg.offset,
                    )
                    self._skips.append(SKIPPED.labels("error"))
            for tenant_id, (st, partition) in touched.items():
                # Closed by what was read: a backlog read in several batches is published
                # once it is read past the window (the tick publishes by the clock).
                self._publish_closed(st, min(st.stream_time(now_ms), now_ms), out)
                st.expire(now_ms, self.config)
                self._write(self.state, tenant_id, st.dump(), partition)
            # Only tenants whose records say nothing past what this batch read there: one
            # whose outcomes here were all applied before may hold a record that landed
            # alone from a later batch lost in a crash (this batch redelivered before it).
            read_to: dict[int, int] = {}
            for event in events:
                msg = event.message
                read_to[msg.partition] = max(read_to.get(msg.partition, -1), msg.offset)
            self._vouch_partitions(
                (st, p) for st, p in touched.values() if st.through <= read_to.get(p, -1)
            )
            await self._produce(changelog.records(), out, changelog)
        for skipped in self._skips:
            skipped.inc()

    @contextlib.contextmanager
    def _undone_on_failure(self) -> Iterator[None]:
        """Table writes in this block are undone in memory if it fails: the stores hold
        them at once, but they (and the events they publish) are durable only once
        produced. Kept, a batch retried after a failed produce would find every outcome
        applied and publish nothing (its alerts and windows lost), and a tick retried
        would find its windows published."""
        self._undo = {}
        # (And the partitions' stream times it raised: kept, a batch retried in this
        # process judged a new tenant against them, and published the same alert in
        # another window, under another id; review h65k.)
        partition_stream = dict(self._partition_stream)
        try:
            yield
        except BaseException:
            self._partition_stream = partition_stream
            for table, key, old, partition in reversed(self._undo.values()):
                with at_partition(self._topic, partition):
                    tracked = getattr(table.data, "_key_partition", {})
                    if old is None:
                        with contextlib.suppress(KeyError):
                            del table.data[key]
                        tracked.pop(key, None)
                    else:
                        table.data[key] = old
                        tracked[key] = partition
            raise
        finally:
            self._undo = None

    def _vouch_partitions(self, touched: Iterable[tuple[TenantInsights, int]]) -> None:
        """Per partition read, the furthest stream time of its tenants' records: what a
        quiet tenant there is raised to at the tick. Written after the tenants' records,
        so that it lands only with all of them (a partition's records land in order: a
        crash lands a prefix). Raised from the highest tenant record instead, one that
        landed without its quiet neighbour's (the same send, split over producer
        batches) made the neighbour's redelivered outcomes late (a crash exploration's
        finding)."""
        furthest: dict[int, int] = {}
        for st, partition in touched:
            furthest[partition] = max(furthest.get(partition, -1), st.stream_ms)
        for partition, stream_ms in furthest.items():
            if stream_ms > self._vouched(partition):
                value = {"partition": partition, "stream": stream_ms}
                self._write(self.state, partition_key(partition), value, partition)

    def _vouched(self, partition: int) -> int:
        """The partition's stream time as its record says (-1: none yet)."""
        with at_partition(self._topic, partition):
            raw = self.state.get(partition_key(partition))
        return _vouched_stream(raw)

    def _write(self, table: Any, key: str, value: Any, partition: int) -> None:
        with at_partition(self._topic, partition):
            # The value before, read on its own partition as the write goes: a RocksDB
            # store reads the current event's, maybe another's, and the undo of a failed
            # produce then deleted the tenant's record (review finding).
            if self._undo is not None and (id(table), key) not in self._undo:
                self._undo[(id(table), key)] = (table, key, table.get(key), partition)
            if value is None:
                del table[key]
            else:
                table[key] = value

    def _apply(
        self,
        event: EventT,
        touched: dict[str, tuple[TenantInsights, int]],
        out: list[_Published],
    ) -> None:
        msg = event.message
        try:
            seen = observe(decode_record(msg.key, msg.value, headers_to_dict(msg.headers)))
        except UndecodableRecord:
            seen = None  # (the ledger sink parks those; nothing to count here)
        if seen is None:
            self._skips.append(SKIPPED.labels("not_an_outcome"))
            return
        tenant_id = seen.tenant_id
        if tenant_id not in self.tenants:
            # Made-up tenant ids (answered unknown_tenant) must not grow the state.
            self._skips.append(SKIPPED.labels("unregistered"))
            return
        now_ms = int(self._clock() * 1000)
        found = touched.get(tenant_id)
        if found:
            st = found[0]
        else:
            # Read as of the record's partition: a RocksDB store reads the current
            # event's, which is the batch's last record, maybe another partition's.
            with at_partition(self._topic, msg.partition):
                st = TenantInsights.load(tenant_id, self.state.get(tenant_id), now_ms)
        if 0 <= st.partition != msg.partition:
            # Offsets mean something within one partition: one outcome on another (forged,
            # or another producer's partitioner) moved `through` there, and the tenant's
            # own outcomes were passed over as applied before (review finding). A tenant's
            # outcomes are on one partition, keyed by it; this one is not counted.
            self._skips.append(SKIPPED.labels("other_partition"))
            return
        st.partition = msg.partition
        touched[tenant_id] = (st, msg.partition)
        if msg.offset <= st.through:
            return  # applied before a crash: the record says so
        st.through = msg.offset
        # When the outcome was produced (its record's time; 0 or None: not known, read
        # now), the same on every redelivery: the tenant's stream time moves to it.
        produced = getattr(msg, "timestamp", None)
        produced_at = int(produced * 1000) if produced else now_ms
        # Stream time moves by when it was produced, believed only within a horizon of its
        # command's time (a record time of 0, far past or far ahead moves it no further;
        # the floor is a horizon before, not the command's time: that is its client's
        # clock, which may run minutes ahead), and not by a command dated in the future.
        horizon = self.config.horizon_ms
        floor = seen.time_ms - horizon
        # A tenant with no stream time yet is held against its partition's: a new
        # tenant whose client runs an hour ahead, read in a backlog, moved its own
        # stream time (and, at the tick, its quiet neighbours') past the rest of the
        # backlog, whose outcomes then counted as late (review finding).
        # (Also as the partition's record says: after a restart this worker has read
        # nothing yet, and a redelivered batch must be judged as it was first.)
        reference = st.stream_ms
        if reference < 0:
            read = self._partition_stream.get(msg.partition, -1)
            reference = max(read, self._vouched(msg.partition))
        if reference >= 0 and produced_at >= reference - horizon:
            # In line with what was read (one partition is read in the order produced):
            # its own time, whatever its client's clock says. (Else a command dated over
            # a horizon ahead of its record, skipped as future when read live, read late
            # moved stream time past the rest of the backlog: review.)
            floor = min(floor, produced_at)
        believed = min(max(produced_at, floor), seen.time_ms + horizon)
        if not st.is_future(seen, now_ms, self.config):
            st.advance(believed, now_ms)
        if st.stream_ms > self._partition_stream.get(msg.partition, -1):
            self._partition_stream[msg.partition] = st.stream_ms
        key = f"{tenant_id}:{seen.event_id}"
        with at_partition(self._topic, msg.partition):
            counted = self.seen.get(key)
        if counted is not None and counted[1] != msg.offset:
            self._skips.append(SKIPPED.labels("duplicate"))
            return
        # Late by the tenant's stream time, as windows expire and counted ids are
        # forgotten: a backlog read over the horizon late (the agent held while the
        # ledger's database was down) is counted. (By when each outcome was produced but
        # with expiry by the clock, one read in two batches had its window expired between
        # them and made again from nothing, and a re-emission's id forgotten: review.)
        horizon = self.config.horizon_ms
        late = st.is_late(seen, now_ms, self.config)
        if late or st.is_future(seen, now_ms, self.config):
            # Not counted in the analytics windows; but its time is its client's, and a
            # card tester dating its commands over a horizon back or ahead hid every
            # decline from the fraud rules (review h65g). They see it at the present (as
            # produced, within a horizon of stream time: the same on a redelivery), and
            # its id is kept in the present's window, forgotten on the usual schedule.
            self._skips.append(SKIPPED.labels("late") if late else SKIPPED.labels("future"))
            if not (seen.attempt or seen.card_declined):
                return  # (nothing the rules count: no id to keep)
            # (From what is stored and the record, not the worker's clock: a batch read
            # again after a crash publishes its alerts under the same ids; review h65h.)
            # (Not past a horizon ahead of stream time: a record time far ahead, forged or a
            # producer's clock hours off, opened fraud windows that never closed, which
            # crowded out the present's, and kept its id for good; review h65k. A record
            # with no time is placed by the stored stream time, where there is one.)
            stream = st.stream_ms
            made = produced_at if produced or stream < 0 else stream
            present = made if stream < 0 else max(made, stream - horizon)
            # (Bounded by stream time, never ahead of the clock and the same on a
            # redelivery: by the clock, a redelivery moved the alert id; review h65l.)
            # A new tenant's by its partition's stored time, where there is one (review
            # h65m); only on a partition with none yet, by the clock.
            bound = stream if stream >= 0 else reference if reference >= 0 else now_ms
            present = min(present, bound + horizon)
            at_present = dataclasses.replace(seen, time_ms=present)
            self._keep_seen(tenant_id, key, window_start(present, self.config.window_ms), msg)
            for alert in st.apply(at_present, self.config, present, count=False):
                out.append((self.settings.fraud_topic, alert_event(tenant_id, alert, self._mode)))
            return
        # No window kept for it (as many are kept as fit one record): not counted, but
        # the fraud rules still see it (a card tester is not let off for a crowded state).
        start = str(window_start(seen.time_ms, self.config.window_ms))
        if start not in st.windows and len(st.windows) >= WINDOWS_MAX:
            # Full mid-batch (a backlog of over WINDOWS_MAX windows in one batch): publish
            # and let go what stream time closed, as reading it live would have.
            self._publish_closed(st, min(st.stream_time(now_ms), now_ms), out)
            st.expire(now_ms, self.config)
        room = st.has_room(seen, self.config)
        if not room:
            self._skips.append(SKIPPED.labels("late"))
        self._keep_seen(tenant_id, key, window_start(seen.time_ms, self.config.window_ms), msg)
        # The fraud rules clamp a command dated ahead to ``produced_at``, so a batch
        # counted again publishes the same alert ids (the worker's clock moved on would not).
        # Nor earlier than a horizon before stream time (a record time far past): fraud
        # windows ending before that are let go, and the next decline would find its
        # window gone (the same on a redelivery: stream time is the stored record's).
        rules_at = max(produced_at, seen.time_ms - horizon, st.stream_time(now_ms) - horizon)
        for alert in st.apply(seen, self.config, rules_at, count=room):
            record = alert_event(tenant_id, alert, self._mode)
            out.append((self.settings.fraud_topic, record))

    def _keep_seen(self, tenant_id: str, key: str, ws: int, msg: Any) -> None:
        """The outcome's id, counted: kept with its window (forgotten with it)."""
        self._write(self.seen, key, [ws, msg.offset, msg.partition], msg.partition)
        self._seen_index.add(tenant_id, ws, key, msg.partition)

    @property
    def _mode(self) -> Any:
        return self.settings.cloudevents_mode

    def _publish_closed(self, st: TenantInsights, now_ms: int, out: list[_Published]) -> None:
        for start, agg in st.closed_windows(now_ms, self.config):
            record = window_event(st.tenant_id, start, self.config.window_ms, agg, self._mode)
            out.append((self.settings.analytics_topic, record))
            st.published(agg)

    async def tick(self, owned: Callable[[int], bool]) -> None:
        """Publish closed windows of tenants with no new outcomes, and forget old ids.

        ``owned(partition)``: whether this worker has that partition of the events topic.
        After a partition moved here, every window published before is published again.
        """
        if not self._settled():
            # Partitions moving, or their tables being recovered: what a takeover must
            # publish again is not all here yet, and a record written back now would be
            # a partial one (review finding: the republication ran on the first tick, before
            # recovery, and never again: a window lost in a crash stayed lost).
            return
        now = self._clock()
        generation = app.consumer_generation_id
        taken_over = generation != self._generation
        if now - self._ticked < TICK_SECONDS and (not taken_over or self._tried == generation):
            return  # (a takeover's republication that failed waits a tick too)
        self._ticked, self._tried = now, generation
        now_ms = int(now * 1000)
        streams: dict[str, int] = {}  # tenant → stream time (for its counted ids)
        forgotten: list[tuple[str, int, str, int]] = []
        try:
            await self._tick(now_ms, owned, taken_over, streams, forgotten)
        except BaseException:
            # The table's deletions are undone (_undone_on_failure): the index's too.
            for tenant_id, start, key, partition in forgotten:
                self._seen_index.add(tenant_id, start, key, partition)
            raise
        # Only once durable: a failed takeover tick publishes everything again.
        self._generation = generation

    async def _tick(
        self,
        now_ms: int,
        owned: Callable[[int], bool],
        taken_over: bool,
        streams: dict[str, int],
        forgotten: list[tuple[str, int, str, int]],
    ) -> None:
        out: list[_Published] = []
        with collect_changelog() as changelog, self._undone_on_failure():
            located = []
            vouched: dict[int, int] = {}  # partition → stream time, as its record says
            for key, raw, partition in _located(self.state):
                if not owned(partition):
                    continue
                if key.startswith(PARTITION_KEY_PREFIX):
                    vouched[partition] = _vouched_stream(raw)
                    continue
                located.append((TenantInsights.load(key, raw, now_ms), raw, partition))
            # The dashboard shows this worker's partitions' tenants: not one moved away.
            mine = {st.tenant_id for st, _, _ in located}
            for gone in [t for t in self.latest_windows if t not in mine]:
                del self.latest_windows[gone]
            if any(alert.get("tenant_id") not in mine for alert in self.recent_alerts):
                shown = [a for a in self.recent_alerts if a.get("tenant_id") in mine]
                self.recent_alerts = deque(shown, maxlen=RECENT_ALERTS)
            # A quiet tenant's stream time is its partition's: outcomes produced that late
            # were read there, so its own, read after them, cannot be much earlier (what
            # lets its windows and ids go; on a partition with no outcomes they stay). As
            # the partition's record says (see _vouch_partitions); a partition with none
            # (written by a version without them) by its furthest tenant record.
            read_up_to: dict[int, int] = {}
            for st, _, partition in located:
                if partition not in vouched:
                    read_up_to[partition] = max(read_up_to.get(partition, -1), st.stream_ms)
            read_up_to.update(vouched)
            for st, raw, partition in located:
                tenant_id = st.tenant_id
                st.partition = partition
                if taken_over:
                    for agg in st.windows.values():
                        agg["emitted"] = 0  # published again below (same id if unchanged)
                self._publish_closed(st, now_ms, out)  # (by the clock: quiet tenants too)
                own = st.stream_ms
                kept = (len(st.windows), len(st.fraud))
                st.stream_ms = max(own, read_up_to[partition])
                st.expire(now_ms, self.config)
                if (len(st.windows), len(st.fraud)) == kept:
                    # Nothing let go: not worth writing the record for (each quiet tenant's
                    # would be, every tick); its ids go by the stream time it has.
                    st.stream_ms = own
                streams[tenant_id] = st.stream_time(now_ms)
                if taken_over or st.dump() != raw:
                    self._write(self.state, tenant_id, st.dump(), partition)
            self._forget_seen(now_ms, owned, streams, forgotten)
            records = changelog.records()
            if records or out:
                await self._produce(records, out, changelog)

    def _forget_seen(
        self,
        now_ms: int,
        owned: Callable[[int], bool],
        streams: Mapping[str, int],
        forgotten: list[tuple[str, int, str, int]],
    ) -> None:
        """Drop the ids of outcomes now past the horizon by their tenant's stream time
        (``streams``): a re-emission of one is late, whenever it is read. (By the clock,
        one read in a backlog after its id was forgotten counted again: review.) An id
        without its tenant's record (none is deleted; defensive) goes by the clock.
        Appends what it dropped to ``forgotten`` (index entries to restore on failure)."""
        index = self._seen_index
        generation = app.consumer_generation_id
        if not index.current(generation):
            # Partitions recovered since (or never read): the table is the truth.
            index.rebuild((e for e in _located(self.seen) if owned(e[2])), generation)
        margin = self.config.horizon_ms + self.config.window_ms
        cutoffs = {tenant_id: at - margin for tenant_id, at in streams.items()}
        default = now_ms - margin
        due = index.due_count(cutoffs, default)
        budget = max(SEEN_FORGET_PER_TICK, -(-due // SEEN_FORGET_TICKS))
        for tenant_id, start, ids in index.due(cutoffs, default):
            for key, partition in list(ids.items()):
                if budget <= 0:
                    return
                del ids[key]
                if not owned(partition):
                    continue  # (moved away: a rebalance, and a rebuild, follow)
                with at_partition(self._topic, partition):
                    value = self.seen.get(key)
                if not (isinstance(value, list) and value and value[0] == start):
                    continue  # gone (its batch undone) or indexed again under another window
                self._write(self.seen, key, None, partition)
                forgotten.append((tenant_id, start, key, partition))
                budget -= 1

    async def _produce(
        self, changelog_records: list[OutRecord], out: list[_Published], batch: Any
    ) -> None:
        producer = cast(FaustAIOKafkaProducer, app.producer)._ensure_producer()
        if self._partitioner is None or self._partitioner.producer is not producer:
            self._partitioner = KeyPartitioner(producer)
        # Two steps, as the producer is not transactional and a crash may land any part of
        # one send: first what the tenant records' `through` vouches for (the ids counted,
        # the alerts and windows, all with deterministic ids), then those records. A crash
        # between leaves the outcomes to be counted again on redelivery (their ids kept
        # with their own offsets) and the same events to be published again. In one send,
        # a record that landed without its alert lost the alert for good, and one that
        # landed without its ids let a re-emitted outcome count twice (review findings).
        state_topic = self.state.changelog_topic.get_topic_name()
        first = [r for r in changelog_records if r.topic != state_topic]
        for topic, rec in out:
            partition = await self._partitioner.partition(topic, rec.key)
            first.append(OutRecord(topic, partition, rec.key, rec.value, rec.headers))
        last = [r for r in changelog_records if r.topic == state_topic]
        # A partition's record after its tenants' (see _vouch_partitions; they are written
        # in that order: this keeps it so).
        last.sort(key=lambda r: bool(r.key and r.key.startswith(_PARTITION_KEY_JSON)))
        # And after those, the counted ids forgotten (the tick's): they go by the stream
        # time the records hold (a quiet tenant's raised in the same tick). Landed before
        # them, a crash left the ids gone and stream time short of them: a resend of one
        # was counted again (review finding).
        seen_topic = self.seen.changelog_topic.get_topic_name()
        forgotten = [r for r in first if r.topic == seen_topic and r.value is None]
        first = [r for r in first if not (r.topic == seen_topic and r.value is None)]
        generation, sent_before = current_generation(), False
        for records in (first, last, forgotten):
            if not records:
                continue
            # A send after the first goes only while this worker may still be a member:
            # frozen past the session timeout while the one before was acknowledged, its
            # partitions may be another worker's, whose newer tenant records these would
            # follow (review h68v; as the command agent's deliveries, h68f).
            if sent_before and not await still_a_member(generation, "the insights' next send"):
                raise MembershipLapsed("the rest of an insights batch is not produced")
            sent_before = True
            sent = await send_batches(producer, records)
            for batch_sent in sent:
                await batch_sent.future
            batch.persisted(sent)
        for topic, rec in out:  # published: shown on this worker's dashboard
            data = decode_record(rec.key, rec.value, dict(rec.headers)).get_data()  # (any mode)
            if not isinstance(data, dict):
                continue
            if topic == self.settings.fraud_topic:
                PUBLISHED.labels("fraud_alert").inc()
                self.recent_alerts.appendleft(data)
            else:
                PUBLISHED.labels("analytics_window").inc()
                shown = self.latest_windows.get(data["tenant_id"])
                if shown is None or shown["window_start"] <= data["window_start"]:
                    self.latest_windows[data["tenant_id"]] = data

    def as_json(self) -> dict[str, Any]:
        """What this worker published lately (its partitions' tenants), for the dashboard."""
        windows = {t: w for t, w in self.latest_windows.items() if t in self.tenants}
        alerts = [a for a in self.recent_alerts if a.get("tenant_id") in self.tenants]
        return {"alerts": alerts, "windows": windows}


# The ``insights`` table's key of a partition's record (see _vouch_partitions): no tenant
# id starts with "~" (tenancy/models.py: TENANT_ID_PATTERN).
PARTITION_KEY_PREFIX = "~partition:"


_PARTITION_KEY_JSON = b'"' + PARTITION_KEY_PREFIX.encode()  # as its changelog key starts


def partition_key(partition: int) -> str:
    return f"{PARTITION_KEY_PREFIX}{partition}"


def _vouched_stream(raw: Any) -> int:
    stream = raw.get("stream") if isinstance(raw, dict) else None
    return stream if isinstance(stream, int) else -1


def _located(table: Any) -> list[tuple[Any, Any, int]]:
    """Each key with its value and changelog partition: as the memory store tracks it
    (tables/changelog.py), else as the value names it (a RocksDB store does not say;
    its items are those of the partitions this worker has)."""
    store = table.data
    tracked = getattr(store, "_key_partition", None)
    data = getattr(store, "data", None)
    if isinstance(tracked, dict) and isinstance(data, dict):
        return [(k, v, tracked[k]) for k, v in list(data.items()) if k in tracked]
    return [(k, v, p) for k, v in list(table.items()) if (p := _partition_of(v)) is not None]


def _partition_of(value: Any) -> int | None:
    if isinstance(value, dict):  # a tenant's record
        partition = value.get("partition")
    elif isinstance(value, list) and len(value) > 2:  # a counted id: [window, offset, partition]
        partition = value[2]
    else:
        return None
    return partition if isinstance(partition, int) and partition >= 0 else None


runner: InsightsRunner | None = None
if ENABLED:
    from paystream.agents.tenants import registry
    from paystream.tables.definitions import batched_table as _table

    runner = InsightsRunner(
        settings,
        registry.tenants,
        _table("insights", "tenant → open analytics windows, fraud counters, offset applied"),
        _table("insights_seen", "tenant:outcome id → [window start, offset, partition]"),
        tenants_ready=registry.ready,
        registry_caught_up=registry.caught_up,
    )
