"""The ledger sink agent: outcome events → PostgreSQL, offsets committed only after the DB commit.

The agent commits its own offsets (the events topic is ``acks=False``, as the commands
topic is): a batch's offsets become committable only once :meth:`LedgerSinkRunner.run_batch`
has returned, that is once every event is stored (or parked as a dead letter and
acknowledged by the broker). A batch that fails for any reason (the database down, a
setting missing, the dead-letter topic unreachable) is retried with backoff, never
passed over; one cut short (shutdown, rebalance) is simply not committed. So nothing is
committed that is not in the ledger: after a crash, shutdown or rebalance the batch is
redelivered and the writer's idempotency absorbs the replay. (Faust's ``take_events``
acknowledged a batch however its body ended, an exception or a cancellation included,
so a shutdown during a database outage used to commit past up to 500 outcomes.)

Registered only when ``DATABASE_URL`` is set (``ENABLED``). It connects as the
non-owner ``paystream_app`` role (RLS applies), created lazily on the first batch so
importing this module never touches the database.

Dead letters (records that are not CloudEvents, outcomes the ledger refuses) go to
``PAYSTREAM_LEDGER_DLQ_TOPIC`` (``paystream.events.ledger-dlq``) with the same headers as
the command DLQ (``paystream-dlq-reason``, ``paystream-dlq-detail``, ``paystream-source``). Not the
command DLQ: ``paystream dlq replay`` re-publishes that to the *commands* topic, which
would be wrong for outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from paystream.agents import insights, member_lease
from paystream.agents.batching import take_batches
from paystream.agents.card_data import kept_headers, raw_holds_card, raw_holds_security_code
from paystream.agents.continuity import SWEEP_INTERVAL_SECONDS, ContinuityGuard
from paystream.agents.member_lease import MembershipLapsed, lease, still_a_member
from paystream.agents.offsets import DurableOffsets, commit_periodically, despite_cancellation
from paystream.agents.pipeline import Inbound
from paystream.app import app, settings
from paystream.errors import ConfigurationError
from paystream.ledger.errors import InvalidEventError
from paystream.ledger.events import EntityType, LedgerEvent
from paystream.ledger.outcomes import (
    DEAD_LETTERS,
    FORBIDDEN_DATA,
    NEXT_ACTION_REDACTED,
    PERSONAL_DATA_REDACTED,
    STALLED,
    WRITE_FAILURES,
    DeadLetter,
    FailureKind,
    dead_letter_for,
    outcome_to_ledger_events,
)
from paystream.log_limits import ThrottledLog
from paystream.settings import Settings
from paystream.streams.codec import UndecodableRecord, decode_record, headers_to_dict
from paystream.streams.pan import redact_card_numbers
from paystream.streams.record_batches import UNREADABLE_BATCH_HEADER
from paystream.streams.topics import events_topic

if TYPE_CHECKING:
    from paystream.ledger.sink import LedgerSink

__all__ = [
    "BATCH_MAX",
    "BATCH_WITHIN",
    "ENABLED",
    "LedgerSinkRunner",
    "RawRecord",
    "ledger_dlq_topic_name",
    "runner",
    "translate_records",
]

log = logging.getLogger(__name__)
# Bugs of ours met per record: logged once a minute per place, card numbers cut out.
_BUGS = ThrottledLog(log)

BATCH_MAX = 500
# Outcomes are not latency-critical in the ledger; a longer window gives bigger batches
# (one transaction per tenant per batch) at the cost of ≤50 ms of extra delay.
BATCH_WITHIN = 0.05
# Committing progress more often buys nothing: a redelivered batch is absorbed.
COMMIT_INTERVAL_SECONDS = 1.0
# Backoff between attempts at a batch that failed outside the writer's own retries.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0

ENABLED = settings.database_url is not None and settings.runs("ledger")
# The database half of the sink (SQLAlchemy, the ledger's models: a fifth of a worker's
# imports) loads with a worker that runs the ledger, not on its first batch; a worker
# that does not never loads it.
if ENABLED:
    import_module("paystream.ledger.sink")


def ledger_dlq_topic_name(cfg: Settings) -> str:
    """Where refused outcomes are parked (never replayed to the commands topic)."""
    return cfg.ledger_dlq_topic


@dataclass(frozen=True)
class RawRecord:
    """An outcome record as consumed (Faust-free, so translation is testable)."""

    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]
    timestamp: float  # seconds since the epoch (Kafka record timestamp)
    source: str = ""  # "topic/partition/offset", for the dead-letter headers


@dataclass
class Translated:
    """A batch's ledger events and which record each came from."""

    events: list[LedgerEvent]
    # id() of a ledger event (held in ``events``) -> record index. Not by event id: two
    # records of a batch may carry one (a re-emission beside an older version's reused
    # id), and the refused one's record must be parked, not its harmless twin (review
    # finding: the conflicting outcome was neither stored nor parked).
    origin: dict[int, int]
    dead: dict[int, DeadLetter]  # record index -> why the whole record is parked

    def record_of(self, letter: DeadLetter) -> int:
        """The index of the record whose event ``letter`` refuses."""
        if letter.event is not None and id(letter.event) in self.origin:
            return self.origin[id(letter.event)]
        return next(self.origin[id(e)] for e in self.events if e.event_id == letter.event_id)


def _record_time(timestamp: float) -> datetime | None:
    """A Kafka record time as a datetime, if Python can hold it (a producer may stamp
    any 64-bit value; years past 9999 are not dates here)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def translate_records(records: Sequence[RawRecord]) -> Translated:
    """Decode and translate each record; a bad record is parked, never the whole batch."""
    out = Translated([], {}, {})
    for i, rec in enumerate(records):
        tenant = rec.headers.get("ce_tenantid")
        tenant_id = tenant.decode("utf-8", "replace") if tenant else None
        if rec.key is None and UNREADABLE_BATCH_HEADER in rec.headers:
            # What stands for a record batch no parser reads (streams/record_batches.py).
            detail = rec.headers[UNREADABLE_BATCH_HEADER].decode("utf-8", "replace")
            out.dead[i] = DeadLetter(rec.source, None, "undecodable", detail[:500])
            continue
        try:
            outcome = decode_record(rec.key, rec.value, rec.headers)
            events = outcome_to_ledger_events(outcome, received_at=_record_time(rec.timestamp))
        except UndecodableRecord as exc:
            out.dead[i] = DeadLetter(rec.source, tenant_id, "undecodable", str(exc)[:500])
            continue
        except InvalidEventError as exc:
            out.dead[i] = dead_letter_for(exc, tenant_id)
            continue
        except RecursionError:
            # Nested deeper than the card scan can walk (orjson reads 1024 levels): it
            # cannot be shown free of card data, so it is parked as if it held some (not
            # copied again), not retried for ever with its partition waiting behind it.
            detail = "nested too deeply to be checked for card data"
            out.dead[i] = DeadLetter(rec.source, tenant_id, FORBIDDEN_DATA, detail)
            continue
        except Exception as exc:
            # Whatever else one record makes us raise must not stall its partition (the
            # batch would fail the same way on every retry): parked, with what failed.
            _BUGS.bug(exc, "ledger sink: cannot translate %s", rec.source)
            detail = f"could not be translated: {type(exc).__name__}"
            out.dead[i] = DeadLetter(rec.source, tenant_id, "invalid_event", detail)
            continue
        for event in events:
            out.events.append(event)
            out.origin[id(event)] = i
    return out


class LedgerSinkRunner:
    """Owns this worker's ledger engine and sink; both made on the first batch."""

    def __init__(self, cfg: Settings) -> None:
        self.settings = cfg
        self._sink: LedgerSink | None = None
        self._dlq_declared = False
        self.processed = 0

    def sink(self) -> LedgerSink:
        """The sink, creating the engine on first use (config errors surface here, loudly)."""
        if self._sink is None:
            from paystream.ledger.migrate import worker_database_url
            from paystream.ledger.session import create_engine
            from paystream.ledger.sink import LedgerSink, asyncpg_url

            cfg = self.settings
            if cfg.database_url is None:
                raise ConfigurationError("the ledger sink needs DATABASE_URL")
            password = cfg.db_app_password.get_secret_value() if cfg.db_app_password else ""
            url = worker_database_url(asyncpg_url(cfg.database_url), password)
            from paystream.tenancy.crypto import keyring_from_settings

            keyring = keyring_from_settings(cfg)
            engine = create_engine(
                url,
                # The sink writes one batch at a time; a couple of connections suffice.
                pool_size=2,
                max_overflow=2,
                # Event data must never end up in logs via an error's statement text.
                hide_parameters=True,
                # Bound connect and each statement so a black-holed server is a retryable
                # timeout, not a batch that hangs forever without a log line.
                connect_args={"timeout": 10, "command_timeout": 60},
            )
            self._sink = LedgerSink(engine, keyring)
        return self._sink

    async def run_batch(self, events: Sequence[EventT]) -> None:
        """Store one batch; returns only when it is in the ledger or parked."""
        records = [_raw(e) for e in events]
        translated = translate_records(records)
        sink = self.sink()
        # An outcome's events (its entity and the related ones) stored whole or not at all.
        result = await sink.write_batch(translated.events, lambda e: translated.origin[id(e)])
        # Erasure after the batch is stored, so the erased event itself is in the ledger;
        # one the ledger refused to store still erases (the command agent did erase the
        # customer: their data key must go whatever became of the event's row).
        for event in translated.events:
            if _erases(event):
                await sink.erase_customer(event.tenant_id, event.entity_id)
        dead = dict(translated.dead)
        for letter in result.dead_letters:
            dead.setdefault(translated.record_of(letter), letter)
        if dead:
            await self._park(records, dead)
            # Counted once parked: a batch whose parking failed is run again.
            for letter in dead.values():
                DEAD_LETTERS.labels(letter.reason).inc()
        self.processed += len(events)

    async def _park(self, records: Sequence[RawRecord], dead: Mapping[int, DeadLetter]) -> None:
        topic_name = ledger_dlq_topic_name(self.settings)
        if not self._dlq_declared:
            # Created like every other topic (never left to broker auto-creation).
            await app.topic(
                topic_name, partitions=self.settings.partitions, value_serializer="raw"
            ).maybe_declare()
            self._dlq_declared = True
        futures = []
        for i, letter in sorted(dead.items()):
            rec = records[i]
            # An SDK's error text may quote what it could not parse.
            detail = redact_card_numbers(letter.detail[:500])
            log.error(
                "parking outcome %s on %s: %s: %s", rec.source, topic_name, letter.reason, detail
            )
            headers = {
                # The CloudEvents headers (what a replay sends again), and nothing else:
                # what the card scan does not read is not kept (as the commands' parks).
                **kept_headers(rec.headers),
                "paystream-dlq-reason": f"ledger_{letter.reason}".encode(),
                "paystream-dlq-detail": detail.encode(),
                "paystream-source": rec.source.encode(),
            }
            key, value = rec.key, rec.value or b""
            if letter.reason == FORBIDDEN_DATA or _holds_card_data(rec):
                # Card data is not copied again (the source names where the outcome is):
                # a parked copy would outlive every fix made to the original. Scanned
                # whatever the reason: one refused first for another (a tenant mismatch,
                # bytes that are no CloudEvent) was parked with it (review finding).
                # Nor its key or headers, where it may be (review finding; as the
                # commands' dead letters do).
                key, value = None, b""
                headers = {k: headers[k] for k in _OURS}
                headers["paystream-dlq-redacted"] = FORBIDDEN_DATA.encode()
            elif _size(key, value, headers) > KEEP_MAX_BYTES:
                # Too large to produce again with our headers (the producer refuses a
                # record over its max_request_size before sending): parked with its
                # bytes, the batch failed on every retry and its partition stalled for
                # good (review h68l). The source says where the outcome is.
                key, value = None, b""
                headers = {k: headers[k] for k in _OURS}
                headers["paystream-dlq-dropped"] = b"too_large_to_keep"
            elif rec.key is None and UNREADABLE_BATCH_HEADER in rec.headers:
                # What stands for a batch of outcomes no parser reads: they hold
                # customers' personal data, which no erasure reaches here (review h65a).
                # The detail says where the batch is.
                value = b""
                headers["paystream-dlq-redacted"] = PERSONAL_DATA_REDACTED.encode()
            elif _NEXT_ACTION.search(value):
                # A payment's next action carries the customer's credential (a 3-D
                # Secure URL's client secret), which the ledger keeps as its type alone:
                # nor does its dead letter (kept for ever, listed, never replayed).
                value = b""
                headers["paystream-dlq-redacted"] = NEXT_ACTION_REDACTED.encode()
            elif _about_a_customer(rec):
                # A customer's outcome holds their personal data (e-mail, name, address,
                # an export's everything) in clear, and an erasure never reaches this
                # topic: kept for ever, it outlived the erasure (review finding). Its
                # headers name it; the outcome itself is on the events topic.
                value = b""
                headers["paystream-dlq-redacted"] = PERSONAL_DATA_REDACTED.encode()
            futures.append(
                await app.producer.send(topic_name, key, value, None, None, sorted(headers.items()))
            )
        # Durable before the batch is acknowledged: a parked outcome must not vanish.
        for future in futures:
            await future


ERASED_TYPE = "com.paystream.customer.erased"


def _erases(event: LedgerEvent) -> bool:
    """Is this the erased customer's own event? An erasure outcome's related entities'
    events carry its type too, and their ids are no customer's (review finding: a
    related entity's id was erased as a customer's)."""
    return (
        event.type == ERASED_TYPE
        and event.entity_type is EntityType.CUSTOMER
        and not event.event_id.endswith(f":{event.entity_type.value}:{event.entity_id}")
    )


# Largest ledger dead letter kept with its bytes, as the commands' (pipeline.py): under
# the producer's 1,000,000-byte max_request_size with our headers beside them.
KEEP_MAX_BYTES = 768 * 1024


def _size(key: bytes | None, value: bytes, headers: Mapping[str, bytes]) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers.items())


# A next action given (an object, not null) in an outcome's JSON.
_NEXT_ACTION = re.compile(rb'"next_action"\s*:\s*\{')

# The headers a parked outcome holding card data keeps: the sink's own (the reason, its
# redacted detail, where the outcome is).
_OURS = ("paystream-dlq-reason", "paystream-dlq-detail", "paystream-source")


_CUSTOMER_OUTCOME = b"com.paystream.customer."


def _about_a_customer(rec: RawRecord) -> bool:
    """Is it a customer's outcome, by binary mode's type header or a structured event's
    type? (Bytes that are neither are no outcome a worker wrote: kept as they came.)"""
    ce_type = rec.headers.get("ce_type")
    if ce_type is not None:
        return ce_type.startswith(_CUSTOMER_OUTCOME)
    try:
        event = orjson.loads(rec.value or b"")
    except orjson.JSONDecodeError:
        return False
    kind = event.get("type") if isinstance(event, dict) else None
    return isinstance(kind, str) and kind.encode().startswith(_CUSTOMER_OUTCOME)


def _holds_card_data(rec: RawRecord) -> bool:
    """The command dead letters' scan of raw bytes (escapes, base64 data and UTF-16
    included), on an outcome about to be parked; unsure counts as holding some."""
    inbound = Inbound(rec.key, rec.value, rec.headers, 0, "", 0, 0)
    try:
        return raw_holds_card(inbound) or raw_holds_security_code(inbound)
    except Exception:  # (our own bug must not stop the sink: the bytes are not kept)
        log.exception("card scan of a parked outcome failed; its bytes are not kept")
        return True


def _raw(event: EventT) -> RawRecord:
    msg = event.message
    return RawRecord(
        key=msg.key,
        value=msg.value,
        headers=headers_to_dict(msg.headers),
        timestamp=float(msg.timestamp or 0.0),
        source=f"{msg.topic}/{msg.partition}/{msg.offset}",
    )


runner = LedgerSinkRunner(settings)


async def store_outcomes(stream: Any) -> None:
    """Write outcome events to the ledger; a batch is committed only after its DB commit.

    Offsets are committed past the highest record stored: a record Faust dropped before
    it (flow control, a rebalance) would be committed past and never reach the ledger,
    so the same guard as the command agent's reads such gaps from the broker first.
    """
    offsets = DurableOffsets(app, agent=AGENT_NAME, topic=events_topic.get_topic_name())
    guard = ContinuityGuard(
        app,
        events_topic.get_topic_name(),
        on_passed=offsets.passed,
        assignments=lambda: member_lease.assignments,
    )
    queue = stream.channel.queue
    committer = asyncio.ensure_future(commit_periodically(app, offsets, COMMIT_INTERVAL_SECONDS))
    # The assignment count when a batch's insights were given up (the lease lapsed and the
    # group moved on): no later batch is counted until the next assignment.
    given_up_at: int | None = None
    try:
        async for taken in take_batches(
            stream,
            BATCH_MAX,
            BATCH_WITHIN,
            idle=SWEEP_INTERVAL_SECONDS,
            assignments=lambda: member_lease.assignments,
        ):
            taken_at = member_lease.assignments
            events = await guard.admit(taken)
            if queue.empty():
                events += await guard.sweep()
            # The guard may have waited on the broker: events of partitions that moved
            # meanwhile are their new owner's.
            generation = app.consumer_generation_id
            events = [e for e in events if e.message.generation_id == generation]
            if events and (member_lease.assignments != taken_at or given_up_at == taken_at):
                # Taken before an assignment that came meanwhile, or in the same assignment
                # as a batch given up: passing it would commit past that batch. The next
                # assignment seeks back to the committed offset; they come again. (Judged
                # by when the batch was taken, as the command agent's: the count when it
                # was given up may already include the assignment that seeks it back, and
                # the agent waited for another that never came; review h61g.)
                log.info(
                    "outcome batch of %d left for after the assignment (a batch before it "
                    "was given up, or partitions were assigned meanwhile)",
                    len(events),
                )
                events = []
            if events:
                if await _until_stored(events):
                    offsets.advance(events)
                else:
                    given_up_at = taken_at
            if insights.runner is not None and not lease.lapsed():
                # (A worker paused past the session timeout publishes nothing: its
                # partitions may be another worker's, whose records these would follow.)
                await _insights_tick()
    finally:
        committer.cancel()
        with contextlib.suppress(Exception):
            # Stored batches not yet committed. Faust cancels the agent right after ending
            # its stream: the commit must outlive that (else only redelivered, absorbed).
            await despite_cancellation(offsets.commit(), FINAL_COMMIT_SECONDS)


FINAL_COMMIT_SECONDS = 5.0


async def _insights_tick() -> None:
    """Windows of quiet tenants published, old ids forgotten; a failure waits a tick."""
    assert insights.runner is not None
    topic = events_topic.get_topic_name()
    owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
    try:
        await insights.runner.tick(owned.__contains__)
    except Exception:
        log.exception("insights: publishing closed windows failed; trying again")


async def _until_stored(events: Sequence[EventT]) -> bool:
    """Run the batch until it is stored (and counted by the insights, where this worker
    runs them); never pass over it. False: its insights were given up, the membership
    having lapsed meanwhile (membership.py): not to be committed, the partitions' owner
    counts them. Cancellation propagates."""
    delay = RETRY_FIRST_SECONDS
    stored = False  # the ledger half done: a retry for the insights runs only theirs
    stalled = False  # said by the gauge below, and so to be unsaid here
    tenants_known = False  # the insights' registry waited for (once a batch)
    while True:
        # Retried past a rebalance, what moved away is its new owner's now: a late write
        # of ours would land after (and over) that owner's insights record.
        generation = app.consumer_generation_id
        events = [e for e in events if e.message.generation_id == generation]
        if not events:
            if stalled:  # (moved away: nothing of it stalls this worker now)
                STALLED.set(0)
            return True
        try:
            if not stored and (ENABLED or insights.runner is None):  # (not insights alone)
                await runner.run_batch(events)
                # Once: run again, its refused outcomes were parked (and counted) again
                # on every retry of an insights failure (review finding).
                stored = True
                if stalled:
                    # (The writer clears it only after a database write, which a batch
                    # of nothing to write, or only refused outcomes, never makes: it
                    # stayed 1, and the stalled-sink alert paged; review finding.)
                    STALLED.set(0)
                # The writer waits out a database outage itself, minutes maybe, across a
                # rebalance: what moved away meanwhile is its new owner's to count (a
                # late count of ours is the late write above; review finding).
                generation = app.consumer_generation_id
                events = [e for e in events if e.message.generation_id == generation]
            if insights.runner is not None and events:
                if not tenants_known:
                    # A tenant this worker's registry does not know yet would be skipped
                    # and committed past (InsightsRunner.await_tenants). Once per batch;
                    # after a wait its generation is taken again (what moved away
                    # meanwhile is its new owner's).
                    waited = await insights.runner.await_tenants(events)
                    tenants_known = True
                    if waited:
                        continue
                # Paused past the session timeout inside the ledger's write, this worker
                # counted the batch after the partitions' new owner had counted it and
                # more: its insights record landed over the newer one (review h61e).
                if not await still_a_member(generation, "an insights batch"):
                    return False
                try:
                    await insights.runner.run_batch(events)
                except MembershipLapsed:
                    return False  # (lapsed between its sends: as above, its new owner's)
            return True
        except Exception:
            # The writer retries database outages itself; this is everything else (a
            # missing setting, the dead-letter topic unreachable, a bug). Loud, and the
            # stream waits: the outcomes stay in Kafka until it is fixed. Said by the
            # ledger's own gauge too, where the agent-stalled alert sends the operator
            # (review finding: it stayed 0).
            if not stored:
                STALLED.set(1)
                stalled = True
                WRITE_FAILURES.labels(FailureKind.UNEXPECTED).inc()
            log.exception(
                "ledger sink: a batch of %d outcome(s) could not be stored; retrying in %.0f s",
                len(events),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


# One agent reads the outcomes for the ledger and the insights: a second agent on the
# topic would commit the same consumer group's offsets over this one's.
AGENT_NAME = "ledger_sink" if ENABLED else "insights"
if insights.ENABLED and not ENABLED and settings.database_url is not None:
    # Its share of the outcome partitions would be committed without reaching the ledger.
    raise ConfigurationError(
        "PAYSTREAM_AGENTS: `insights` and `ledger` read the outcomes as one consumer: "
        "with DATABASE_URL set, a worker running insights runs the ledger sink too "
        "(PAYSTREAM_AGENTS=ledger,insights)"
    )
if ENABLED or insights.ENABLED:
    ledger_sink_agent = app.agent(events_topic, name=AGENT_NAME)(store_outcomes)
