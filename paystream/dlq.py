"""Inspect and re-drive the dead-letter and retry topics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions

__all__ = ["ParkedRecord", "ReplayResult", "read_parked", "replay", "stale_after_ms"]

log = logging.getLogger(__name__)

REPLAY_GROUP = "paystream-dlq-replay"
_OUR_HEADERS = ("paystream-dlq-", "paystream-park-", "paystream-source")
# Set by the worker on a parked command; carried back onto the commands topic by a replay.
FIRST_ATTEMPT_HEADER = "paystream-first-attempt-ms"
# Dead-letter reasons that no replay can change (the same bytes fail the same way).
NEVER_DECODES = frozenset({"not_a_cloudevent"})
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
        return (h.get("paystream-dlq-reason") or h.get("paystream-park-reason") or b"?").decode()

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
    def source(self) -> str | None:
        """Where the worker read the original record (``topic/partition/offset``)."""
        raw = dict(self.headers).get("paystream-source")
        return None if raw is None else raw.decode(errors="replace")

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
    def replayable(self) -> bool:
        """Re-sent, it could get another answer: not bytes that never decode as a
        CloudEvent (each replay would only dead-letter them again), nor records kept
        without their bytes (redacted or dropped: re-sent, an empty keyless record)."""
        return not (self.redacted or self.dropped) and self.reason not in NEVER_DECODES


@dataclass(frozen=True)
class ReplayResult:
    handled: list[ParkedRecord]  # re-published, or passed over (not replayable)
    # Held back, with everything after them on their partition: parked longer than the
    # providers keep idempotency keys (Stripe: 24 h). Re-sent now, a command the provider
    # already applied would be applied again (a second charge).
    stale: list[ParkedRecord]

    @property
    def dropped(self) -> list[ParkedRecord]:
        """Passed over as too large to keep: their :attr:`ParkedRecord.source` is the only
        pointer to the original command (and the replay commits past them)."""
        return [r for r in self.handled if r.dropped]


def stale_after_ms(settings: Settings) -> int:
    """Age past which a parked command may no longer be re-sent blindly: an hour inside
    the idempotency window (ours, and the provider's)."""
    ttl_ms = settings.idempotency_ttl_seconds * 1000
    return max(ttl_ms - 3_600_000, ttl_ms // 2)


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


async def read_parked(
    settings: Settings, topics: list[str], *, committed_only: bool, limit: int | None = None
) -> tuple[list[ParkedRecord], AIOKafkaConsumer]:
    """Records not yet replayed (from the replay group's committed offsets), oldest first."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        group_id=REPLAY_GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    tps = [tp for t in topics for tp in await topic_partitions(consumer, t)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is None or not committed_only:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    out: list[ParkedRecord] = []
    pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    while pending and (limit is None or len(out) < limit):
        batch = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batch.items():
            for r in records:
                if r.offset < ends[tp] and (limit is None or len(out) < limit):
                    out.append(
                        ParkedRecord(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            tuple(r.headers),
                            r.timestamp,
                        )
                    )
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    return out, consumer


async def replay(
    settings: Settings,
    topics: list[str],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    include_stale: bool = False,
    progress: Callable[[int, int], None] | None = None,
    now_ms: int | None = None,
) -> ReplayResult:
    """Re-publish parked records to the commands topic (same key, id and data) and commit.

    Records older than :func:`stale_after_ms` stop their partition's replay (they and
    everything after them stay parked) unless ``include_stale``: reconcile them with the
    provider first (e.g. look its payments up by the command's metadata).
    """
    found, consumer = await read_parked(settings, topics, committed_only=True, limit=limit)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    records: list[ParkedRecord] = []
    stale: list[ParkedRecord] = []
    held: set[tuple[str, int]] = set()
    for rec in found:
        where = (rec.topic, rec.partition)
        # Only what would be re-sent can be too old: the rest is passed over anyway.
        too_old = (
            not include_stale
            and rec.replayable
            and now_ms - rec.first_seen_ms > stale_after_ms(settings)
        )
        if where in held or too_old:
            held.add(where)
            stale.append(rec)
        else:
            records.append(rec)
    _warn_dropped(records, dry_run=dry_run)
    try:
        if dry_run or not records:
            return ReplayResult(records, stale)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(settings.require_broker()), acks="all"
        )
        await producer.start()
        # Progress is committed as it goes and whatever stops the replay (Ctrl-C, a
        # failed send): a second run re-publishes only what the first did not.
        sent: dict[TopicPartition, int] = {}
        try:
            for n, rec in enumerate(records, 1):
                if rec.replayable:  # the others are passed over (and committed)
                    # The first attempt as this replay reckons it (a record parked by an
                    # older version has none): a park of the replay keeps it.
                    headers = [
                        (k, v)
                        for k, v in rec.headers
                        if not k.startswith(_OUR_HEADERS) and k != FIRST_ATTEMPT_HEADER
                    ]
                    headers.append((FIRST_ATTEMPT_HEADER, str(rec.first_seen_ms).encode()))
                    await producer.send_and_wait(
                        settings.commands_topic, rec.value, key=rec.key, headers=headers
                    )
                tp = TopicPartition(rec.topic, rec.partition)
                sent[tp] = max(sent.get(tp, -1), rec.offset + 1)  # a partition's are in order
                if n % COMMIT_EVERY == 0:
                    await consumer.commit(sent)
                if progress:
                    progress(n, len(records))
        except BaseException:
            # What stopped the replay is the error to report, not a failing clean-up.
            await _finish(producer, consumer, sent, quiet=True)
            raise
        await _finish(producer, consumer, sent, quiet=False)
        return ReplayResult(records, stale)
    finally:
        await consumer.stop()


def _warn_dropped(records: list[ParkedRecord], *, dry_run: bool) -> None:
    """Name where each dropped dead letter's original is: once the replay commits past
    it, `dlq list` no longer shows it, and the commands topic keeps the original only
    until its retention runs out."""
    for rec in records:
        if rec.dropped:
            log.warning(
                "%s %s[%d]@%d (reason %s): dead-lettered without its bytes (too large to "
                "keep); the original record is at %s",
                "would pass over" if dry_run else "passing over",
                rec.topic,
                rec.partition,
                rec.offset,
                rec.reason,
                rec.source or "an unknown place (no paystream-source header)",
            )


async def _finish(
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    sent: dict[TopicPartition, int],
    *,
    quiet: bool,
) -> None:
    """Flush and stop the producer, then commit what was re-published. ``quiet``: a
    failure is logged, not raised (another error is already on its way out)."""

    async def commit() -> None:
        if sent:
            await consumer.commit(sent)

    # Each step on its own: records already acknowledged are committed even if the
    # producer fails to stop.
    failed: Exception | None = None
    for step in (producer.stop, commit):
        try:
            await step()
        except Exception as exc:
            if not quiet:
                failed = failed or exc
                continue
            log.warning(
                "replay clean-up failed; records re-published since the last commit will "
                "be re-published again by the next replay",
                exc_info=True,
            )
    if failed is not None:
        raise failed
