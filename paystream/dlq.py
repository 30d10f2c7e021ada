"""Inspect and re-drive the dead-letter and retry topics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.exceptions import RedisError

from paystream.errors import ConfigurationError, PaystreamError
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.replay_lease import LeaseLost, ReplayLease
from paystream.replay_positions import Position, ReplayPositions, read_positions
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.codec import UndecodableRecord, decode_record, headers_to_dict
from paystream.streams.commands import COMMAND_PREFIX, PROVIDER_READS
from paystream.streams.kafka_auth import client_auth
from paystream.streams.pan import redact_card_numbers
from paystream.tenancy.token_bucket import TokenBucket

T = TypeVar("T")

__all__ = [
    "HELD_BACK",
    "PASSED_OVER",
    "REPLAYED",
    "ConcurrentReplayError",
    "PaceWait",
    "ParkedRecord",
    "ReplayResult",
    "TopicBacklog",
    "age_text",
    "backlog",
    "list_parked",
    "parked_topics",
    "read_parked",
    "replay",
    "stale_after_ms",
    "tenant_paces",
]

log = logging.getLogger(__name__)

REPLAY_GROUP = "paystream-dlq-replay"
_OUR_HEADERS = ("paystream-dlq-", "paystream-park-", "paystream-source")
# FIRST_ATTEMPT_HEADER: when a parked command was first run, in ms since the epoch: the
# provider's idempotency window runs from then. Set by the worker on a parked command,
# carried back onto the commands topic by a replay (sealed: first_attempt.py) and on to
# the next park; a command carrying one older than :func:`stale_after_ms` is held back
# here and parked again by the worker, never run.
# Set by `dlq replay --include-stale-as-of` on a command past that age: an operator has
# reconciled it with the provider, so the worker runs it (once: a park drops the mark).
RECONCILED_HEADER = "paystream-reconciled"
# On a park: what the provider (or its circuit breaker) said, beside the reason's code.
PARK_DETAIL_HEADER = "paystream-park-detail"
# Dead-letter reasons that no replay can change (the same bytes fail the same way).
NEVER_DECODES = frozenset({"not_a_cloudevent", "unreadable_batch"})
# Dead-letter reasons whose command was given a final answer its sender acts on.
ANSWERED_FOR_GOOD = frozenset({"payload_too_large"})
# While replaying, how many re-published records between progress commits.
COMMIT_EVERY = 100


@dataclass(frozen=True)
class ParkedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int = 0  # when it was parked or dead-lettered

    @property
    def reason(self) -> str:
        h = dict(self.headers)
        raw = h.get("paystream-dlq-reason") or h.get("paystream-park-reason") or b"?"
        # (Any producer to the topic chooses it: bytes that are not UTF-8 are shown, not
        # raised on, which stopped `dlq list` and `dlq replay` whole.)
        return raw.decode(errors="replace")

    @property
    def redacted(self) -> bool:
        """Dead-lettered without its bytes (it held a card number): nothing to replay."""
        return any(k == "paystream-dlq-redacted" for k, _ in self.headers)

    @property
    def dropped(self) -> bool:
        """Dead-lettered without its bytes (too large to produce again): nothing to replay
        here; :attr:`source` says where the original record is."""
        return any(k == "paystream-dlq-dropped" for k, _ in self.headers)

    @property
    def detail(self) -> str:
        """What was wrong, in the worker's words (a dead letter's), or the provider's (a
        park's; none on those parked by older versions)."""
        h = dict(self.headers)
        raw = h.get("paystream-dlq-detail") or h.get(PARK_DETAIL_HEADER)
        return "" if raw is None else raw.decode(errors="replace")

    @property
    def tenant(self) -> str:
        """The record key: the tenant the command was sent for ("?" if none)."""
        return "?" if self.key is None else self.key.decode(errors="replace")

    @property
    def source(self) -> str | None:
        """Where the worker read the original record (``topic/partition/offset``)."""
        raw = dict(self.headers).get("paystream-source")
        return None if raw is None else raw.decode(errors="replace")

    @property
    def command_id_and_type(self) -> tuple[str, str]:
        """The command's id and type, from its ce_* headers (binary mode) or its body
        (structured mode); "?" where neither says."""
        h = {k.lower(): v for k, v in self.headers}
        found = {name: h[f"ce_{name}"].decode(errors="replace") for name in ("id", "type")
                 if f"ce_{name}" in h}  # fmt: skip
        if len(found) < 2 and self.value:
            try:
                body = orjson.loads(self.value)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                for name in ("id", "type"):
                    if name not in found and isinstance(body.get(name), str):
                        found[name] = body[name]
        return found.get("id", "?"), found.get("type", "?")

    @functools.cached_property  # (asked on each pass a stale record waits through)
    def reads_only(self) -> bool:
        """A command whose provider call only reads (payment.refresh): never too old to
        re-send. Its type decoded as the worker will decode it (structured or binary)."""
        try:
            kind = decode_record(self.key, self.value, headers_to_dict(self.headers)).get_type()
        except UndecodableRecord:
            return False
        return kind.startswith(COMMAND_PREFIX) and kind[len(COMMAND_PREFIX) :] in PROVIDER_READS

    @property
    def first_seen_ms(self) -> int:
        """When the command was first run, as best known. The worker records it on the
        parked record (carried through replays). Records parked by older versions: the
        earlier of its CloudEvents ``time`` (the producer's clock: an old business time
        counts as stale) and this record's timestamp."""
        first = _first_attempt_ms(self)
        if first is not None:
            return min(first, self.timestamp_ms)
        sent = _command_time_ms(self)
        return self.timestamp_ms if sent is None else min(sent, self.timestamp_ms)

    @property
    def answered(self) -> str | None:
        """The rejection its sender was given when it was dead-lettered, if any."""
        raw = dict(self.headers).get("paystream-dlq-answered")
        return None if raw is None else raw.decode(errors="replace")

    @property
    def replayable(self) -> bool:
        """Re-sent, it could get another answer, and may: not bytes that never decode as
        a CloudEvent (each replay would only dead-letter them again), nor records kept
        without their bytes (redacted or dropped: re-sent, an empty record), nor
        a command whose sender was given a final rejection (`payload_too_large`, or
        `internal_error` for one a bug of ours failed before the provider was asked):
        its sender may well have sent it again under a new id, and re-run once the
        cause is fixed it would charge a second time (review findings)."""
        return not (
            self.redacted
            or self.dropped
            or self.reason in NEVER_DECODES
            or self.reason in ANSWERED_FOR_GOOD
            or self.answered is not None
        )


# Held-back records a replay names (the count says how many more).
HELD_BACK_SHOWN = 20


@dataclass(frozen=True)
class HeldBack:
    """A held-back record, as the operator checks it with the provider."""

    where: str  # topic[partition]@offset
    tenant: str
    command_id: str
    command_type: str
    first_seen_ms: int

    @classmethod
    def of(cls, rec: ParkedRecord) -> HeldBack:
        command_id, command_type = rec.command_id_and_type
        where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
        return cls(where, rec.tenant, command_id, command_type, rec.first_seen_ms)


@dataclass
class ReplayResult:
    """What a replay did, counted (a backlog may be millions of records)."""

    # Re-published (or, in a dry run, would be), by reason.
    replayed: Counter[str] = field(default_factory=Counter)
    redacted: int = 0  # passed over: dead-lettered without their bytes (card data)
    undecodable: int = 0  # passed over: not CloudEvents, would only come back
    # Passed over: over the size limit, and no sender named to answer (no id or tenant
    # readable, or a body past the ceiling any limit may be set to).
    too_large: int = 0
    answered: int = 0  # passed over: their senders were given a final rejection
    # Passed over as too large to keep: their :attr:`ParkedRecord.source` is the only
    # pointer to the original command (and the replay commits past them).
    dropped: list[ParkedRecord] = field(default_factory=list)
    # Held back (left in place): parked longer than the providers keep idempotency keys
    # (Stripe: 24 h), and every record after such a one on its partition (counted too).
    # Re-sent now, a command the provider already applied would be applied again.
    stale: int = 0
    # The first HELD_BACK_SHOWN of them, named for the operator who must check them with
    # the provider (review h59b: a count alone left them to be worked out from ages).
    held_back: list[HeldBack] = field(default_factory=list)
    last: str = ""  # what was done with the latest record (for ``observe``)
    # Time spent with every partition waiting for its tenant's pace, and those tenants
    # (tenant → commands a second).
    paced_seconds: float = 0.0
    waited_for: dict[str, int] = field(default_factory=dict)
    # When the run began (ms): what it held back as stale, it found stale as of then (or
    # later); a run after the operator checked those names it (--include-stale-as-of).
    started_ms: int = 0
    # It reached every record waiting when it began (not cut short by a limit): only
    # then does ``started_ms`` vouch for every stale record there was.
    complete: bool = False
    # Where it read each partition to was kept in Redis (held_back.py): only then may its
    # time be recorded as printed (review h67j).
    read_to_kept: bool = False

    @property
    def handled(self) -> int:
        """Re-published or passed over (and committed past)."""
        return (
            sum(self.replayed.values())
            + self.redacted
            + self.undecodable
            + self.too_large
            + self.answered
            + len(self.dropped)
        )

    def note(self, rec: ParkedRecord, what: str) -> None:
        self.last = what
        if what == HELD_BACK:
            self.stale += 1
            if len(self.held_back) < HELD_BACK_SHOWN:
                self.held_back.append(HeldBack.of(rec))
        elif what == REPLAYED:
            self.replayed[rec.reason] += 1
        elif rec.dropped:
            self.dropped.append(rec)  # its bytes are already gone: small
        elif rec.redacted:
            self.redacted += 1
        elif rec.answered is not None:
            self.answered += 1
        elif rec.reason in ANSWERED_FOR_GOOD:
            self.too_large += 1
        else:
            self.undecodable += 1


# How long providers keep an idempotency key, whatever ours is: Stripe may drop a key
# once it is 24 hours old, and then runs a retry under it as a new request.
PROVIDER_KEY_WINDOW_MS = 24 * 3_600_000


def stale_after_ms(settings: Settings) -> int:
    """Age past which a parked command may no longer be re-sent blindly: an hour inside
    the idempotency window, ours or the provider's, whichever is shorter (a longer
    PAYSTREAM_IDEMPOTENCY_TTL_SECONDS dedupes longer here, but a provider that has
    forgotten the key would charge again)."""
    window_ms = min(settings.idempotency_ttl_seconds * 1000, PROVIDER_KEY_WINDOW_MS)
    return max(window_ms - 3_600_000, window_ms // 2)


def _first_attempt_ms(rec: ParkedRecord) -> int | None:
    raw = next((v for k, v in rec.headers if k == FIRST_ATTEMPT_HEADER), None)
    try:
        return None if raw is None else int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _command_time_ms(rec: ParkedRecord) -> int | None:
    """The command's CloudEvents ``time`` (binary-mode header or structured body), in ms."""
    raw = next((v for k, v in rec.headers if k.lower() == "ce_time"), None)
    if raw is None and rec.value:
        try:
            body = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            body = None
        found = body.get("time") if isinstance(body, dict) else None
        raw = found.encode() if isinstance(found, str) else None
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.decode().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class _ParkedReader:
    """Reads the records not yet replayed (from the replay group's committed offsets), a
    fetch at a time: a backlog from a long outage is never held in memory at once."""

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        *,
        committed_only: bool,
        say_deleted: bool = True,
    ) -> None:
        self.settings = settings
        # (False for the workers' once-a-minute backlog measurement: said there, the same
        # deleted records were named every minute by every worker; review h64h.)
        self.say_deleted = say_deleted
        self.topics = topics
        self.committed_only = committed_only
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings.require_broker()),
            **client_auth(settings),
            group_id=REPLAY_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=1024 * 1024,  # (one record may be that large)
        )
        self.ends: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int | None] = {}  # the group's, at start
        # Where replays got to, at start: the group's offset, else the position kept
        # beside it (replay_positions.py: Kafka drops an idle group's offsets).
        self.replayed_to: dict[TopicPartition, int | None] = {}
        # The group's offsets where the positions kept beside them differ (one a crash or
        # a broker error kept from being written): for a replay to write at its start.
        self.unkept: dict[TopicPartition, Position] = {}
        self.waiting = 0  # records between the starting positions and the ends
        self.pending: set[TopicPartition] = set()  # partitions not yet read to their ends
        self.taken = 0  # records read so far (for a ``limit``)

    async def start(self, *, check_positions: bool = False) -> None:
        """Assign and seek. ``check_positions``: also find where the positions kept beside
        the group's offsets differ from them (``unkept``; a replay's, not a dry run's)."""
        consumer = self.consumer
        await consumer.start()
        tps = []
        for topic in self.topics:
            found = await topic_partitions(consumer, topic)
            if not found:
                # Read as empty, a mistyped topic or another environment's broker said
                # "0 records waiting" and exited 0 (review finding).
                raise ConfigurationError(
                    f"topic {topic!r} does not exist on the broker KAFKA_BROKER_URL names: "
                    "create paystream's topics with `paystream topics` (or check "
                    "PAYSTREAM_*_TOPIC and KAFKA_BROKER_URL)"
                )
            tps += found
        consumer.assign(tps)
        self.ends = await consumer.end_offsets(tps)
        for tp in tps:
            self.committed[tp] = await _bounded(consumer.committed(tp))
        # (Only partitions holding records: a deployment that never parked anything
        # reads no positions on every measurement.)
        unknown = [tp for tp in tps if self.committed[tp] is None and self.ends[tp] > 0]
        asked = [tp for tp in tps if self.committed[tp] is not None] if check_positions else []
        kept = await read_positions(self.settings, unknown + asked) if unknown or asked else {}
        for tp in asked:
            at = self.committed[tp]
            stored = kept.get(tp)
            # (A stored one without the timestamp it names is never trusted: rewritten.)
            if at is None or (stored is not None and stored.offset == at and
                              (stored.timestamp_ms is not None or at == 0)):  # fmt: skip
                continue
            try:
                stamp = await self._timestamp_before(tp, at)
            except PositionUnread:
                continue  # (left for the next run to write: never written untrusted)
            if stamp is not None or at == 0:  # (none there: a position could not be trusted)
                self.unkept[tp] = Position(at, stamp)
        starts = await _bounded(consumer.beginning_offsets(tps))
        for tp in tps:
            at = self.committed[tp]
            if at is None and (stored := kept.get(tp)) is not None:
                at = await self._still_there(tp, stored)
            self.replayed_to[tp] = at
            if at is None or not self.committed_only:
                await consumer.seek_to_beginning(tp)
            elif at < starts[tp]:
                # Deleted below where replays got to (retention, or the erasure advice's
                # kafka-delete-records): read from what is there, or the records counted
                # as waiting would never all come (review h64d).
                log.log(
                    logging.WARNING if self.say_deleted else logging.DEBUG,
                    "%s[%d]: records %d to %d were deleted before a replay re-drove them",
                    tp.topic, tp.partition, at, starts[tp] - 1,
                )  # fmt: skip
                consumer.seek(tp, starts[tp])
            else:
                consumer.seek(tp, at)
        for tp in tps:
            self.waiting += max(0, self.ends[tp] - await consumer.position(tp))
        self.pending = {tp for tp in tps if await consumer.position(tp) < self.ends[tp]}

    async def _still_there(self, tp: TopicPartition, stored: Position) -> int | None:
        """``stored``'s offset if the record before it is the one it names: a topic
        deleted and made again (Kafka dropping the group's offsets with it) holds other
        records there, or none yet, and its new records were passed over as replayed."""
        if stored.offset > self.ends[tp]:
            return None
        if stored.offset == 0:
            return 0
        found = await self._timestamp_before(tp, stored.offset)
        if found is None or found != stored.timestamp_ms:
            log.warning(
                "the position kept for %s[%d] names a record that is not there (the topic "
                "made again?): read from its start",
                tp.topic,
                tp.partition,
            )
            return None
        return stored.offset

    async def _timestamp_before(self, tp: TopicPartition, offset: int) -> int | None:
        """The timestamp of the record at ``offset - 1`` (None: none there).
        :class:`PositionUnread` if it was not read in time: a slow broker is no proof of
        a topic made again (read so, every record replayed counted as waiting, and the
        next replay re-sent them all; review finding)."""
        if offset <= 0:
            return None
        start = (await _bounded(self.consumer.beginning_offsets([tp])))[tp]
        if start > offset - 1:
            return None  # (deleted since, or the topic made again)
        self.consumer.seek(tp, offset - 1)
        deadline = time.monotonic() + POSITION_READ_SECONDS
        while time.monotonic() < deadline:
            fetched = await self.consumer.getmany(tp, timeout_ms=1000, max_records=1)
            for r in fetched.get(tp, ()):
                return int(r.timestamp) if r.offset == offset - 1 else None
        raise PositionUnread(
            f"the broker did not give {tp.topic}[{tp.partition}]@{offset - 1} within "
            f"{POSITION_READ_SECONDS:.0f} s, "
            "the record the position kept for it names: where replays got to there is not "
            "known; run it again once the broker answers"
        )

    async def stop(self) -> None:
        await self.consumer.stop()

    def more(self, limit: int | None = None) -> bool:
        """Are there records left to read (within ``limit`` records in all)?"""
        return bool(self.pending) and (limit is None or self.taken < limit)

    async def fetch(
        self,
        partitions: Iterable[TopicPartition] | None = None,
        *,
        limit: int | None = None,
        timeout_ms: int = 1000,
    ) -> list[ParkedRecord]:
        """One fetch's records of ``partitions`` (default: all) up to the ends seen at
        start, oldest first per partition; waits up to ``timeout_ms`` for some."""
        consumer, ends = self.consumer, self.ends
        wanted = self.pending if partitions is None else self.pending & set(partitions)
        if not wanted or not self.more(limit):
            return []
        fetched = await consumer.getmany(*wanted, timeout_ms=timeout_ms, max_records=500)
        out: list[ParkedRecord] = []
        for tp, records in fetched.items():
            for r in records:
                if r.offset < ends[tp] and (limit is None or self.taken < limit):
                    self.taken += 1
                    out.append(
                        ParkedRecord(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            # A header may have no value (null): b"", as the worker reads
                            # it (review h64d: `dlq list` and a sealed re-send crashed).
                            tuple((k, b"" if v is None else v) for k, v in r.headers),
                            r.timestamp,
                        )
                    )
        self.pending = {tp for tp in self.pending if await consumer.position(tp) < ends[tp]}
        return out

    async def batches(self, limit: int | None = None) -> AsyncIterator[list[ParkedRecord]]:
        """Each fetch's records up to the ends seen at start, oldest first per partition."""
        while self.more(limit):
            out = await self.fetch(limit=limit)
            if out:
                yield out


async def read_parked(
    settings: Settings, topics: list[str], *, committed_only: bool, limit: int | None = None
) -> tuple[list[ParkedRecord], AIOKafkaConsumer]:
    """Records not yet replayed (from the replay group's committed offsets), oldest first
    per partition (all of them in memory: for listing, with a ``limit``)."""
    reader = _ParkedReader(settings, topics, committed_only=committed_only)
    try:
        await reader.start()
        out = [rec async for batch in reader.batches(limit) for rec in batch]
    except BaseException:
        await reader.stop()  # the caller gets no consumer to stop
        raise
    return out, reader.consumer


async def list_parked(
    settings: Settings, topics: list[str], *, limit: int | None, everything: bool = False
) -> tuple[list[ParkedRecord], int]:
    """Up to ``limit`` records waiting to be replayed (``everything``: also those replayed
    or passed over before), oldest first per partition, and how many there are in all."""
    records, waiting, _ = await list_parked_and_done(
        settings, topics, limit=limit, everything=everything
    )
    return records, waiting


async def list_parked_and_done(
    settings: Settings,
    topics: list[str],
    *,
    limit: int | None,
    everything: bool = False,
    keep: Callable[[ParkedRecord], bool] | None = None,
) -> tuple[list[ParkedRecord], int, dict[tuple[str, int], int]]:
    """:func:`list_parked`, and where replays got to on each partition (the replay
    group's committed offset: records below it were replayed or passed over).
    ``keep``: only the records it keeps, up to ``limit`` of them, and how many it keeps
    of all there are (every record is read for that count)."""
    reader = _ParkedReader(settings, topics, committed_only=not everything)
    try:
        await reader.start()
        if keep is None:
            records = [rec async for batch in reader.batches(limit) for rec in batch]
            count = reader.waiting
        else:
            records, count = [], 0
            async for batch in reader.batches(None):
                for rec in batch:
                    if keep(rec):
                        count += 1
                        if limit is None or len(records) < limit:
                            records.append(rec)
        done = {(tp.topic, tp.partition): c for tp, c in reader.replayed_to.items() if c}
        return records, count, done
    finally:
        await reader.stop()  # (consumers that failed to start too)


def age_text(ms: float) -> str:
    """A record's age, short: 45s, 12m, 5h, 3d."""
    seconds = max(0, int(ms // 1000))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def parked_topics(settings: Settings) -> dict[str, str]:
    """The topics a replay re-drives, by the name `paystream dlq list --topic` gives them.

    Not the ledger's dead-letter topic: `dlq replay` cannot re-drive it (the ledger's own
    alerts cover it), so a count of what waits there would never fall.
    """
    return {"retry": settings.retry_topic, "dlq": settings.dlq_topic}


@dataclass(frozen=True)
class TopicBacklog:
    """A topic's records that no replay has passed yet (replayed or passed over)."""

    waiting: int
    # The earliest timestamp among the next record of each partition with any waiting
    # (when it was parked or dead-lettered), ms since the epoch; None: none waiting, or
    # none read in time.
    oldest_ms: int | None


async def backlog(
    settings: Settings, topics: list[str], *, read_ms: int = 1000
) -> dict[str, TopicBacklog]:
    """Per topic: how many records wait for a replay, and the oldest one's timestamp.

    Reads only the next record of each partition with any waiting, the one a replay
    would take first (a partition's records are in the order they were parked).
    """
    reader = _ParkedReader(settings, topics, committed_only=True, say_deleted=False)
    try:
        await reader.start()
        consumer = reader.consumer
        waiting = dict.fromkeys(topics, 0)
        oldest: dict[str, int] = {}
        for tp in sorted(reader.pending):
            waiting[tp.topic] += reader.ends[tp] - await consumer.position(tp)
            fetched = await consumer.getmany(tp, timeout_ms=read_ms, max_records=1)
            for r in fetched.get(tp, ()):
                if r.timestamp >= 0:
                    oldest[tp.topic] = min(oldest.get(tp.topic, r.timestamp), r.timestamp)
        return {t: TopicBacklog(waiting[t], oldest.get(t)) for t in topics}
    finally:
        await reader.stop()


#: What a replay did with a record, as told to its ``observe`` callback.
REPLAYED, PASSED_OVER, HELD_BACK = "replayed", "passed over", "held back"
# While every partition's next record waits for its tenant's pace, what was re-sent is
# committed if the last commit is this old (a slow replay that crashes repeats less).
COMMIT_SECONDS = 5.0
# How long a committed-offset question or a commit may take: aiokafka retries them for
# as long as the group coordinator is unknown, and a replay stuck there said nothing and
# held its lease, every other replay refused, for the whole outage (review finding).
OFFSETS_TIMEOUT_SECONDS = 30.0


async def _bounded(call: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(call, OFFSETS_TIMEOUT_SECONDS)
    except TimeoutError:
        raise KafkaOffsetsTimeout(
            f"the broker did not answer about committed offsets within "
            f"{OFFSETS_TIMEOUT_SECONDS:.0f} s (its group coordinator unavailable?): "
            "nothing more committed; run it again once the broker answers"
        ) from None


class KafkaOffsetsTimeout(PaystreamError):
    """The broker did not answer a committed-offsets question or a commit in time."""


# How long the record a kept replay position names may take to read.
POSITION_READ_SECONDS = 5.0


class PositionUnread(PaystreamError):
    """The record a kept replay position names was not read in time."""


@dataclass(frozen=True)
class PaceWait:
    """A replay waiting for tenants' pace: the next record of every partition read and not
    yet done with is a re-send that its tenant's pace does not allow yet."""

    done: int  # records done with so far (as ``progress`` counts them)
    total: int  # of those waiting when the replay started
    tenants: tuple[tuple[str, int], ...]  # (tenant, commands a second) waited for
    seconds: float  # until the soonest of them may go


class _Pace(TokenBucket):
    """A token bucket over one tenant's re-sends, as the worker's (tenancy/limits.py). A
    re-send's token is taken before it is sent, and the time until the broker
    acknowledged it refills nothing: the worker's clock for limits is the broker's append
    time, and a slow acknowledgement must not bunch the next re-sends together there."""


class _Paces:
    """The buckets of the tenants a replay paces: ``rates`` (tenant → commands a second,
    burst), or ``every`` tenant at that rate (burst the same)."""

    def __init__(self, rates: Mapping[str, tuple[int, int]], every: int | None = None) -> None:
        self.rates = rates
        self.every = every
        self.buckets: dict[str, _Pace] = {}

    def of(self, tenant: str) -> _Pace | None:
        bucket = self.buckets.get(tenant)
        if bucket is None:
            rate = (self.every, self.every) if self.every else self.rates.get(tenant)
            if rate is None:
                return None
            bucket = self.buckets[tenant] = _Pace(*rate)
        return bucket


async def tenant_paces(settings: Settings) -> dict[str, tuple[int, int]]:
    """Each rate-limited tenant's (``commands_per_second``, ``burst``) in the registry as it
    is now: the pace a replay re-sends its commands at (the burst defaults to the rate,
    as the worker's does)."""
    from paystream.tenancy.registry import read_registry

    registry = await read_registry(settings)
    if registry.unreadable:
        log.warning(
            "%d tenant(s) have a registry record this version cannot read (written by a "
            "newer one?): their commands are re-sent at the pace of their older record, "
            "if any (unpaced if none): %s",
            len(registry.unreadable),
            ", ".join(sorted(registry.unreadable)[:10]),
        )
    paces: dict[str, tuple[int, int]] = {}
    for tenant_id, tenant in registry.tenants.items():
        rate = tenant.limits.commands_per_second
        if rate is not None:
            paces[tenant_id] = (rate, tenant.limits.burst or rate)
    return paces


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


async def replay(
    settings: Settings,
    topics: list[str],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    stale_checked_as_of_ms: int | None = None,
    stale_checked_topics: frozenset[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    observe: Callable[[ParkedRecord, str], None] | None = None,
    now_ms: int | None = None,
    rate_per_tenant: int | None = None,
    paced: Callable[[PaceWait], None] | None = None,
    take_lease: bool = True,
) -> ReplayResult:
    """Re-publish parked records (:func:`_replay` says how), holding the deployment's
    replay lease (replay_lease.py) while it does: raises :class:`ConcurrentReplayError`
    at once, having read nothing, if another replay holds it. A dry run re-sends and
    commits nothing, and takes no lease; ``take_lease=False`` takes none either (the
    lease is kept in Redis: without ``REDIS_URL`` that must be asked for)."""
    run = functools.partial(
        _replay,
        settings,
        topics,
        limit=limit,
        dry_run=dry_run,
        stale_checked_as_of_ms=stale_checked_as_of_ms,
        stale_checked_topics=stale_checked_topics,
        progress=progress,
        observe=observe,
        now_ms=now_ms,
        rate_per_tenant=rate_per_tenant,
        paced=paced,
    )
    if dry_run:
        return await run(lease=None)
    if not take_lease:
        log.warning("replaying without the lease: nothing keeps two replays apart")
        return await run(lease=None)
    if not settings.redis_url:
        raise PaystreamError(
            "REDIS_URL is not set: the replay lease, which keeps replays one at a time, is "
            "kept in Redis (replay without it only on purpose: take_lease=False)"
        )
    lease = ReplayLease(settings)
    try:
        await lease.acquire()
    except RedisError as exc:
        raise PaystreamError(
            f"cannot take the replay lease, Redis refused or did not answer ({exc}): "
            "without it nothing keeps two replays apart; run again once Redis is back"
        ) from exc
    except LeaseLost as exc:
        raise ConcurrentReplayError(
            f"another `paystream dlq replay` is running on this deployment ({exc}): "
            "run one at a time"
        ) from exc
    try:
        return await run(lease=lease)
    finally:
        await lease.release()


async def _replay(
    settings: Settings,
    topics: list[str],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    stale_checked_as_of_ms: int | None = None,
    stale_checked_topics: frozenset[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    observe: Callable[[ParkedRecord, str], None] | None = None,
    now_ms: int | None = None,
    rate_per_tenant: int | None = None,
    paced: Callable[[PaceWait], None] | None = None,
    lease: ReplayLease | None = None,
) -> ReplayResult:
    """Re-publish parked records to the commands topic (same key, id and data, to the
    partition the worker first read them from) and commit, a fetch at a time.

    Records older than :func:`stale_after_ms` stop their partition's replay (they and
    everything after them stay parked, in place, and the commit stops before them):
    reconcile them with the provider first (e.g. look its payments up by the command's
    metadata). ``stale_checked_as_of_ms``: the time of the run that held them back (its
    :attr:`ReplayResult.started_ms`), after which an operator checked them: those stale
    as of then are re-sent marked as reconciled, so that the worker runs them; a record
    that grew stale since (behind another, say) nobody checked, and is held back again.
    ``stale_checked_topics``: the topics that run read (None: all of ``topics``); a
    stale record on another was never shown to anyone, and is held back too.
    ``progress`` gets (records done, records waiting); ``observe`` each record and what
    was done. Raises :class:`ConcurrentReplayError`, without committing, if ``lease``
    is lost or another replay commits on the same topics meanwhile.

    Re-sends are paced per tenant (the record key) at its rate limit, read from the
    registry when the replay starts (:func:`tenant_paces`): the worker lets a command it
    admitted before through its rate limit unchecked, so a backlog re-sent at full speed
    would reach the provider at full speed. Tenants without a rate limit go at full
    speed. ``rate_per_tenant``: every tenant at that many a second (burst the same)
    instead; 0: none paced. A dry run paces nothing. Each partition's records keep their
    order: a record behind one waiting for its tenant's pace waits too, whoever's it is,
    while the other partitions go on (``paced`` is told when all of them wait).
    """
    # Where the run named by ``stale_checked_as_of_ms`` read each partition to (None: not
    # known, each record judged by its time alone): a park that landed after it read,
    # though stamped before its time, was shown to nobody (review h67h).
    read_to = (
        None
        if stale_checked_as_of_ms is None
        else await _read_to_of(settings, stale_checked_as_of_ms, redis_down_ok=lease is None)
    )
    reader = _ParkedReader(settings, topics, committed_only=True)
    result = ReplayResult(started_ms=int(time.time() * 1000) if now_ms is None else now_ms)
    # Held partitions: whose record a provider may have applied is not known, and any
    # later record there may be the same tenant's, so nothing after it goes ahead of it.
    # (Per tenant, records after a held one would have to be re-sent around it; each way
    # of keeping that straight across runs, crashes and changed settings fell to review.)
    held: set[tuple[str, int]] = set()
    producer: AIOKafkaProducer | None = None
    # Progress is committed as it goes and whatever stops the replay (Ctrl-C, a failed
    # send): a second run re-publishes only what the first did not.
    sent: dict[TopicPartition, int] = {}
    in_flight: list[tuple[ParkedRecord, asyncio.Future[None]]] = []  # (one at a time)
    commits = _FencedCommits(reader, lease, ReplayPositions(settings))
    seals = FirstAttemptSeals.from_settings(settings)
    if not seals.sealing and not dry_run:
        log.warning(
            "PAYSTREAM_MASTER_KEY is not set: re-sent commands carry their first-attempt "
            "time unsealed, and a worker with a master key counts their age from now"
        )
    try:
        await reader.start(check_positions=not dry_run)
        if reader.unkept and commits.positions is not None:
            # Committed by a replay that could not write them (a broker error, a crash
            # between the two): written now, or a replay with nothing to re-send left
            # them unwritten until Kafka dropped the group's offsets (review finding).
            await commits.ensure_ours(confirm=True)
            await commits.positions.write(reader.unkept)
        total = reader.waiting if limit is None else min(limit, reader.waiting)
        paces = _Paces({})
        if not dry_run and total:
            if rate_per_tenant is None:
                paces = _Paces(await tenant_paces(settings))
            elif rate_per_tenant > 0:
                paces = _Paces({}, every=rate_per_tenant)
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap_servers(settings.require_broker()),
                **client_auth(settings),
                acks="all",
            )
            await producer.start()
        partitions = await _command_partitions(producer, reader.consumer, settings.commands_topic)
        done = 0
        # Records done with (re-sent or passed over) since the last commit: not ``done``,
        # which counts the held-back ones too (review h67h: with a held partition beside
        # a moving one, every 100th record was a held one and nothing was committed).
        uncommitted = 0
        committed_at = time.monotonic()

        async def commit() -> None:
            nonlocal committed_at, uncommitted
            await commits.commit(sent)
            committed_at = time.monotonic()
            uncommitted = 0

        def stale(rec: ParkedRecord, now: int) -> bool:
            # Only what would be re-sent can be too old: the rest is passed over.
            # (A read, payment.refresh, is never stale: run again, it doubles nothing.)
            return (
                rec.replayable
                and now - rec.first_seen_ms > stale_after_ms(settings)
                and not rec.reads_only
            )

        def checked(rec: ParkedRecord) -> bool:
            """Stale already when the run the operator checked after held it back, on a
            topic that run read, and on the topic then (one parked again since, a
            re-send the worker found stale, nobody checked)."""
            return (
                stale_checked_as_of_ms is not None
                and (stale_checked_topics is None or rec.topic in stale_checked_topics)
                and rec.timestamp_ms <= stale_checked_as_of_ms
                and (read_to is None or rec.offset < read_to.get((rec.topic, rec.partition), 0))
                and stale(rec, stale_checked_as_of_ms)
            )

        def pace_of(rec: ParkedRecord, now: int) -> _Pace | None:
            """The bucket ``rec``'s re-send takes a token from (None: not re-sent now, or
            its tenant is not paced)."""
            if producer is None or not rec.replayable:
                return None
            if (rec.topic, rec.partition) in held or (stale(rec, now) and not checked(rec)):
                return None  # held back
            return paces.of(rec.tenant)

        def done_with(rec: ParkedRecord) -> None:
            result.note(rec, REPLAYED if rec.replayable else PASSED_OVER)
            sent[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1  # in order
            commits.stamps[TopicPartition(rec.topic, rec.partition)] = rec.timestamp_ms

        async def handle(rec: ParkedRecord, now: int, pace: _Pace | None) -> None:
            nonlocal done, uncommitted
            done += 1
            where = (rec.topic, rec.partition)
            is_stale = stale(rec, now)
            if where in held or (is_stale and not checked(rec)):
                held.add(where)
                result.note(rec, HELD_BACK)
            else:
                if rec.dropped:
                    _warn_dropped(rec, dry_run=dry_run)
                if rec.replayable and producer is not None:
                    await commits.ensure_ours()
                    if pace is not None:
                        pace.take(_monotonic_ms())
                    resend = asyncio.ensure_future(
                        _resend(
                            producer, settings, rec, partitions, reconciled=is_stale, seals=seals
                        )
                    )
                    # A stop (Ctrl-C, SIGTERM) does not cancel a re-send under way: the
                    # record is in the producer's buffer and is delivered as it stops,
                    # so it is counted as done once it lands (below), or the next replay
                    # re-sent it again (review h61d).
                    in_flight.append((rec, resend))
                    await asyncio.shield(resend)
                    in_flight.clear()
                    if pace is not None:
                        pace.acknowledged(_monotonic_ms())
                done_with(rec)
                uncommitted += 1
                if producer is not None and uncommitted >= COMMIT_EVERY:
                    await commit()
            if observe:
                observe(rec, result.last)
            if progress:
                progress(done, total)

        # Per partition, the records read and not yet done with, oldest first. Each pass
        # takes the next record of every partition whose tenant's pace allows it: one
        # waiting holds back only its own partition (whose order comes first), and a
        # partition is read again only once its records in hand are done with, so one
        # waiting for a slow tenant is not read ahead into memory.
        lanes: dict[TopicPartition, deque[ParkedRecord]] = {}
        while True:
            moved = False
            waiting: dict[str, int] = {}  # tenant → its rate, for those waited for
            soonest_ms = 1000
            for lane in list(lanes.values()):
                if not lane:
                    continue
                rec = lane[0]
                # The clock is read per record: a long backlog ages while it is replayed
                # (and a record may wait for its tenant's pace).
                now = int(time.time() * 1000) if now_ms is None else now_ms
                pace = pace_of(rec, now)
                if pace is not None and (wait_ms := pace.wait_ms(_monotonic_ms())):
                    waiting[rec.tenant] = pace.rate
                    soonest_ms = min(soonest_ms, wait_ms)
                    continue
                lane.popleft()
                await handle(rec, now, pace)
                moved = True
            unread = [tp for tp in reader.pending if not lanes.get(tp)]
            if not reader.more(limit):
                unread = []
            if not moved and not waiting and not unread:
                break
            started = time.monotonic()
            if waiting and not moved:
                # Nothing can go until a tenant's pace allows it.
                if paced:
                    paced(PaceWait(done, total, tuple(sorted(waiting.items())),
                                   soonest_ms / 1000))  # fmt: skip
                if producer is not None and time.monotonic() - committed_at >= COMMIT_SECONDS:
                    await commit()
            if unread:
                # (Waits for records only while nothing in hand may go.)
                timeout_ms = 0 if moved else soonest_ms if waiting else 1000
                for rec in await reader.fetch(unread, limit=limit, timeout_ms=timeout_ms):
                    tp = TopicPartition(rec.topic, rec.partition)
                    lanes.setdefault(tp, deque()).append(rec)
            elif not moved:
                await asyncio.sleep(soonest_ms / 1000)
            if waiting and not moved:
                result.paced_seconds += time.monotonic() - started
                result.waited_for.update(waiting)
    except BaseException as exc:
        # What stopped the replay is the error to report, not a failing clean-up. Another
        # replay's commit stops this one without committing (the fence would refuse it
        # again, and say so as a clean-up failure).
        for rec, resend in in_flight:
            # (Bounded by the producer's delivery timeout; a second Ctrl-C stops it.)
            await asyncio.wait({resend})
            if not resend.cancelled() and resend.exception() is None:
                done_with(rec)
                if observe:
                    observe(rec, result.last)
        if producer is not None:
            fenced = isinstance(exc, ConcurrentReplayError)
            await _finish(producer, commits, {} if fenced else sent, quiet=True)
        with contextlib.suppress(Exception):  # (the error on its way out is the one to tell)
            await commits.close()
        await reader.stop()
        raise
    # Every record waiting when it began was reached (no --limit cut it short): what it
    # held back as stale is all there was, so its start can vouch for a later run.
    result.complete = done >= reader.waiting
    if result.stale and result.complete:
        ends = {(tp.topic, tp.partition): end for tp, end in reader.ends.items()}
        result.read_to_kept = await _record_read_to(settings, result.started_ms, ends)
    try:
        if producer is not None:
            await _finish(producer, commits, sent, quiet=False)
    finally:
        await commits.close()
        await reader.stop()
    return result


async def _record_read_to(
    settings: Settings, started_ms: int, ends: dict[tuple[str, int], int]
) -> bool:
    """Keep where a run that held stale records back read each partition to, for the
    run that names its time (held_back.py). Without Redis nothing is kept, and that run
    judges by time alone."""
    if not settings.redis_url:
        return False
    from paystream.held_back import HeldBackTimes

    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        await asyncio.to_thread(times.record_read_to, started_ms, ends)
        return True
    except RedisError as exc:
        log.warning(
            "could not keep where this run read to in Redis (%s): a replay naming its "
            "time judges the records it held back by their time alone",
            exc,
        )
        return False
    finally:
        times.close()


async def _read_to_of(
    settings: Settings, as_of_ms: int, *, redis_down_ok: bool = False
) -> dict[tuple[str, int], int] | None:
    """Where the run that began at ``as_of_ms`` read each partition to, if kept."""
    if not settings.redis_url:
        return None
    from paystream.held_back import HeldBackTimes

    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        read_to = await asyncio.to_thread(times.read_to, as_of_ms)
    except RedisError as exc:
        if not redis_down_ok:
            raise PaystreamError(
                f"could not read where the run named read to, Redis refused or did not "
                f"answer ({exc}): nothing re-sent; run again once Redis is back"
            ) from exc
        log.warning("could not read where the run named read to (%s)", exc)
        read_to = None
    finally:
        times.close()
    if read_to is None:
        log.warning(
            "where the run named read to is not known (an older version's run, or Redis "
            "did not take it): its stale records are judged by their time alone, and a "
            "park that landed late, stamped before that time, is re-sent with them"
        )
    return read_to


class ConcurrentReplayError(PaystreamError):
    """Another replay committed on the same topics while this one ran."""


class _FencedCommits:
    """Commits a replay's progress unless another replay has committed meanwhile.

    Two replays at once re-send the same records (the worker answers the copies from
    its idempotency records), and the one finishing last would move the committed
    offsets back to where it stopped (a ``--limit`` run behind a full one): the next
    replay would re-send all of it again. The second to commit stops instead."""

    def __init__(
        self,
        reader: _ParkedReader,
        lease: ReplayLease | None = None,
        positions: ReplayPositions | None = None,
    ) -> None:
        self.reader = reader
        self.lease = lease
        # Written after each commit: kept when Kafka drops the group's offsets.
        self.positions = positions
        # Per partition, the timestamp of the last record committed past.
        self.stamps: dict[TopicPartition, int] = {}

    async def ensure_ours(self, *, confirm: bool = False) -> None:
        """:class:`ConcurrentReplayError` if the lease may be another replay's now (see
        replay_lease.py); ``confirm``: ask Redis, as before a commit."""
        if self.lease is None or (self.lease.held and not confirm):
            return
        try:
            await (self.lease.confirm() if confirm else self.lease.ensure_held())
        except LeaseLost as exc:
            raise ConcurrentReplayError(
                f"this replay lost its lease ({exc}): stopped without committing what it "
                "re-sent since its last commit (the next replay re-sends that)"
            ) from exc

    async def commit(self, sent: dict[TopicPartition, int]) -> None:
        if not sent:
            return
        await self.ensure_ours(confirm=True)
        consumer, expected = self.reader.consumer, self.reader.committed
        moved = [tp for tp in sent if await _bounded(consumer.committed(tp)) != expected.get(tp)]
        if moved:
            raise ConcurrentReplayError(
                "another `paystream dlq replay` committed on "
                + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(moved))
                + " while this one ran: stopped without committing (run one at a time)"
            )
        try:
            await _bounded(consumer.commit(sent))
        except Exception:
            # The broker may have applied it all the same (a timed-out answer): what it
            # holds now is ours, not another replay's.
            for tp, offset in sent.items():
                with contextlib.suppress(Exception):
                    if await _bounded(consumer.committed(tp)) == offset:
                        expected[tp] = offset
            raise
        expected.update(sent)
        if self.positions is not None:
            await self.positions.write(
                {tp: Position(offset, self.stamps.get(tp)) for tp, offset in sent.items()}
            )

    async def close(self) -> None:
        if self.positions is not None:
            await self.positions.close()


async def _command_partitions(
    producer: AIOKafkaProducer | None, consumer: AIOKafkaConsumer, topic: str
) -> set[int]:
    """The commands topic's partitions, asked without creating it: re-sent to a topic
    the broker made up (a mistyped PAYSTREAM_COMMANDS_TOPIC in the operator's shell),
    every parked command was committed past and never run (review finding)."""
    if producer is None:
        return set()
    found = {tp.partition for tp in await topic_partitions(consumer, topic)}
    if not found:
        raise ConfigurationError(
            f"commands topic {topic!r} does not exist on the broker KAFKA_BROKER_URL "
            "names: nothing re-sent (check PAYSTREAM_COMMANDS_TOPIC and KAFKA_BROKER_URL)"
        )
    return found


async def _resend(
    producer: AIOKafkaProducer,
    settings: Settings,
    rec: ParkedRecord,
    partitions: set[int],
    *,
    reconciled: bool = False,
    seals: FirstAttemptSeals | None = None,
) -> None:
    # The first attempt as this replay reckons it (a record parked by an older version
    # has none), sealed so that the worker believes it: a park of the replay keeps it.
    headers = [
        (k, v)
        for k, v in rec.headers
        if not k.startswith(_OUR_HEADERS)
        and k not in (FIRST_ATTEMPT_HEADER, SEAL_HEADER, RECONCILED_HEADER)
    ]
    first = rec.first_seen_ms
    headers.append((FIRST_ATTEMPT_HEADER, str(first).encode()))
    if reconciled:  # stale, re-sent with --include-stale-as-of: the worker runs it all the same
        headers.append((RECONCILED_HEADER, b"1"))  # (sealed with the rest)
    seals = FirstAttemptSeals.from_settings(settings) if seals is None else seals
    seal = seals.seal(rec.key, rec.value, dict(headers), first)
    if seal is not None:
        headers.append((SEAL_HEADER, seal))
    await producer.send_and_wait(
        settings.commands_topic,
        rec.value,
        key=rec.key,
        headers=headers,
        # Where its tenant's state is: the producer that first sent it may partition keys
        # otherwise than this one (librdkafka's default is CRC32, aiokafka's murmur2).
        partition=_source_partition(rec, settings.commands_topic, partitions),
    )


def _source_partition(rec: ParkedRecord, commands_topic: str, partitions: set[int]) -> int | None:
    """The commands-topic partition the worker read the record from, if it says so."""
    parts = (rec.source or "").rsplit("/", 2)
    if len(parts) != 3 or parts[0] != commands_topic or not parts[1].isdigit():
        return None
    partition = int(parts[1])
    return partition if partition in partitions else None


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown_text(text: str, limit: int = 200) -> str:
    """A producer's text, safe to print or log: card numbers redacted as sent (groups
    parted by controls or invisible marks are one), controls escaped (``\\x1b``),
    redacted again (an escape can end in digits that join the run after it: "\\x04"
    before 15 digits prints 16, review h64g), then cut to ``limit`` and redacted once more
    (a cut can make one of a longer run of digits, or leave 12 digits of one that
    straddled it: review h64h)."""
    escaped = redact_card_numbers(
        _UNPRINTABLE.sub(
            lambda m: m.group().encode("unicode_escape").decode(), redact_card_numbers(text)
        )
    )
    return redact_card_numbers(escaped[:limit]) + ("..." if len(escaped) > limit else "")


def _warn_dropped(rec: ParkedRecord, *, dry_run: bool) -> None:
    """Name where a dropped dead letter's original is: once the replay commits past it,
    `dlq list` no longer shows it, and the commands topic keeps the original only until
    its retention runs out."""
    log.warning(
        "%s %s[%d]@%d (reason %s): dead-lettered without its bytes (too large to keep); "
        "the original record is at %s",
        "would pass over" if dry_run else "passing over",
        rec.topic,
        rec.partition,
        rec.offset,
        shown_text(rec.reason),
        shown_text(rec.source) if rec.source else "an unknown place (no paystream-source header)",
    )


async def _finish(
    producer: AIOKafkaProducer,
    commits: _FencedCommits,
    sent: dict[TopicPartition, int],
    *,
    quiet: bool,
) -> None:
    """Flush and stop the producer, then commit what was re-published. ``quiet``: a
    failure is logged, not raised (another error is already on its way out)."""

    async def commit() -> None:
        await commits.commit(sent)

    # Each step on its own: records already acknowledged are committed even if the
    # producer fails to stop.
    failed: Exception | None = None
    for step in (producer.stop, commit):
        try:
            await step()
        except asyncio.CancelledError:
            # (Ctrl-C during the clean-up: the CLI must not say it was committed.)
            log.warning(
                "interrupted before committing: records re-published since the last "
                "commit will be re-published again by the next replay"
            )
            raise
        except Exception as exc:
            if not quiet:
                # A fenced commit says why nothing more was committed (exit status 4,
                # another replay ran): it outranks a producer that failed to stop.
                if failed is None or isinstance(exc, ConcurrentReplayError):
                    failed = exc
                continue
            if isinstance(exc, ConcurrentReplayError):  # (the designed stop: no trace)
                log.warning("not committing on the way out: %s", exc)
                continue
            log.warning(
                "replay clean-up failed; records re-published since the last commit will "
                "be re-published again by the next replay",
                exc_info=True,
            )
    if failed is not None:
        raise failed
