"""The ledger sink's logic: outcome CloudEvents → LedgerEvents → PostgreSQL, never dropping a batch.

Two halves, both free of Faust so they can be tested against a real database alone:

* :func:`outcome_to_ledger_events` (in :mod:`paystream.ledger.outcomes`, with the dead
  letters and the metrics, where no database driver is imported) translates one outcome
  (see ``paystream.agents.pipeline``) into the ledger's events: one for the primary entity and
  one per ``related`` entity. Outcomes without an entity (``command.rejected``,
  ``*.attach_failed`` without a stored method, ...) translate to **nothing**: the ledger
  records state changes, its ``events`` rows are keyed to an entity (``entity_type``,
  ``entity_id``, ``entity_version`` are NOT NULL) and a rejection changes no state. They
  stay on the events topic and in ``paystream_ledger_outcomes_skipped_total``.
* :class:`LedgerSink` writes a batch with :func:`paystream.ledger.writer.write_events`,
  retrying transient failures (connection lost, server shutting down or starting up,
  serialization failures, timeouts) with capped exponential backoff **forever**: the
  caller must not acknowledge the batch until it returns, so a database outage stalls
  the stream instead of losing events. Data the database refuses (or that fails
  validation) cannot succeed on retry: the offending events are isolated by bisection
  and returned as :class:`DeadLetter` s while the rest of the batch is stored.

Event ids: the primary entity's ledger event uses the outcome's CloudEvent id (itself
derived from the command, so a replayed outcome has the same id). A related entity's
event gets ``<outcome id>:<entity_type>:<entity_id>``: still deterministic, so a replay
is recognised, but distinct, because ``events`` has one row per ``(tenant, event_id)``
and the writer would otherwise keep only the first entity of the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.errors import (
    EventIdConflictError,
    ForbiddenDataError,
    InvalidEventError,
    RlsNotEnforcedError,
)
from paystream.ledger.events import LedgerEvent

# (Re-exported: the translation, dead letters and metrics live where no database driver
# is imported, for workers that do not run the ledger.)
from paystream.ledger.outcomes import (
    BATCH_SECONDS,
    DATA_KEY_UNREADABLE,
    DB_STATEMENT_SECONDS,
    DEAD_LETTER_REASONS,
    DEAD_LETTER_REDACTIONS,
    DEAD_LETTERS,
    ENTITIES,
    ENTITYLESS_OUTCOMES,
    ERASURES_REFUSED,
    EVENT_ID_CONFLICT,
    EVENTS_WRITTEN,
    FORBIDDEN_DATA,
    NEXT_ACTION_REDACTED,
    OUTCOMES_SKIPPED,
    PERSONAL_DATA_REDACTED,
    STALLED,
    WRITE_FAILURES,
    DeadLetter,
    FailureKind,
    dead_letter_for,
    outcome_to_ledger_events,
)
from paystream.ledger.privacy import erase_customer
from paystream.ledger.session import assert_rls_enforced
from paystream.ledger.writer import WriteResult, write_events
from paystream.tenancy.crypto import CryptoError, MasterKeyring, UnknownMasterKeyError

T = TypeVar("T")

__all__ = [
    "BATCH_SECONDS",
    "DATA_KEY_UNREADABLE",
    "DB_STATEMENT_SECONDS",
    "DEAD_LETTERS",
    "DEAD_LETTER_REASONS",
    "DEAD_LETTER_REDACTIONS",
    "ENTITIES",
    "ENTITYLESS_OUTCOMES",
    "ERASURES_REFUSED",
    "EVENTS_WRITTEN",
    "EVENT_ID_CONFLICT",
    "FORBIDDEN_DATA",
    "NEXT_ACTION_REDACTED",
    "OUTCOMES_SKIPPED",
    "PERSONAL_DATA_REDACTED",
    "STALLED",
    "WRITE_FAILURES",
    "BatchResult",
    "DeadLetter",
    "FailureKind",
    "LedgerSink",
    "asyncpg_url",
    "classify_failure",
    "dead_letter_for",
    "outcome_to_ledger_events",
]

log = logging.getLogger(__name__)

# ---- failure classification ---------------------------------------------------------

# SQLSTATE classes (first two characters): PostgreSQL error codes appendix.
_RETRY_SQLSTATE_CLASSES = {
    "08": FailureKind.CONNECTION,  # connection exception
    "40": FailureKind.CONNECTION,  # serialization failure, deadlock: the txn was rolled back
    "53": FailureKind.CONNECTION,  # insufficient resources (too many connections, disk full)
    "57": FailureKind.CONNECTION,  # admin/crash shutdown, cannot connect now, query canceled
    "58": FailureKind.CONNECTION,  # system error (I/O)
    "42": FailureKind.CONFIG,  # undefined table, permission denied: wait for migrate/grants
    "28": FailureKind.CONFIG,  # invalid password / authorization
    "3D": FailureKind.CONFIG,  # database does not exist
}
# Data exception, integrity constraint violation, program limit exceeded (an index row
# too large), and paystream's own refusals ("PS": the ledger's triggers refusing a write,
# migration 0007): the same event fails the same way on every retry.
_DATA_SQLSTATE_CLASSES = {"22", "23", "54", "PS"}
_READ_ONLY_TRANSACTION = "25006"
# Consecutive failed attempts after which the pool's connections are dropped: a pooled
# connection can keep failing where a new one would not (a read-only server after a
# failover passes the pre-ping), and one failure alone may be the server's blip.
_FRESH_CONNECTIONS_AFTER = 2


def _in_chain(exc: BaseException, attribute: str) -> str | None:
    """The first non-empty string ``attribute`` along the exception's chain (the driver's
    error under SQLAlchemy's ``orig``, causes and contexts)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        value = getattr(current, attribute, None)
        if isinstance(value, str) and value:
            return value
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


def _sqlstate(exc: BaseException) -> str | None:
    return _in_chain(exc, "sqlstate")


def _constraint(exc: BaseException) -> str | None:
    """The constraint a database error names (asyncpg's ``constraint_name``), if any."""
    return _in_chain(exc, "constraint_name")


# The audit chain's keys: only the ledger writes them, under the tenant's lock.
_CHAIN_CONSTRAINTS = frozenset({"pk_audit_log"})


def classify_failure(exc: BaseException) -> str:
    """The :class:`FailureKind` of an exception raised while writing a batch."""
    if isinstance(exc, InvalidEventError):
        return FailureKind.DATA
    if isinstance(exc, RlsNotEnforcedError | UnknownMasterKeyError):
        # Never write as a role that bypasses tenant isolation; a key wrapped under a
        # master key the keyring lacks needs that key configured: wait for the operator.
        return FailureKind.CONFIG
    if isinstance(exc, CryptoError):
        # A data key that fails authentication under a key the keyring holds: that row is
        # damaged, whatever the retries (its customer's events only, parked).
        return FailureKind.DATA
    if _constraint(exc) in _CHAIN_CONSTRAINTS:
        # A seq already taken past the audit head: a row planted there, which every later
        # batch would meet. Not the events' fault: parking them would lose them all.
        return FailureKind.CONFIG
    code = _sqlstate(exc)
    if code is not None:
        if code == _READ_ONLY_TRANSACTION:
            # A server demoted to a standby by a failover (or a proxy still holding
            # connections to it): a fresh connection reaches the new primary.
            return FailureKind.CONNECTION
        if code[:2] in _DATA_SQLSTATE_CLASSES:
            return FailureKind.DATA
        return _RETRY_SQLSTATE_CLASSES.get(code[:2], FailureKind.UNEXPECTED)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return FailureKind.CONNECTION
    if (
        isinstance(exc, sa_exc.StatementError)
        and not isinstance(exc, sa_exc.DBAPIError)
        and not isinstance(exc.orig, OSError | TimeoutError)
    ):
        # Raised turning the events into parameters, before the database saw anything
        # (a value the JSON encoder cannot take): the same on every retry.
        return FailureKind.DATA
    if isinstance(
        exc,
        OSError  # refused, reset, unreachable (ConnectionError is a subclass)
        | TimeoutError  # asyncpg connect / command timeouts
        | sa_exc.InterfaceError  # "connection is closed"
        | sa_exc.OperationalError
        | sa_exc.TimeoutError,  # pool checkout timeout
    ):
        return FailureKind.CONNECTION
    try:
        import asyncpg

        if isinstance(exc, asyncpg.exceptions.InterfaceError | asyncpg.PostgresConnectionError):
            return FailureKind.CONNECTION
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return FailureKind.UNEXPECTED


# ---- the sink -----------------------------------------------------------------------


@dataclass
class BatchResult:
    """What :meth:`LedgerSink.write_batch` did; ``dead_letters`` must be parked by the caller."""

    written: WriteResult = field(default_factory=WriteResult)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    attempts: int = 0  # write attempts including retries (1 when all went well)


class _Rejected(Exception):
    """Internal: the database refused the data of this sub-batch."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def asyncpg_url(url: str) -> str:
    """``url`` with the asyncpg driver (settings accept ``postgresql://`` and ``postgres://``)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _before_statement(
    conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
) -> None:
    conn.info.setdefault("_ledger_t0", []).append(time.perf_counter())


def _after_statement(
    conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
) -> None:
    starts = conn.info.get("_ledger_t0")
    if starts:
        DB_STATEMENT_SECONDS.observe(time.perf_counter() - starts.pop())


def _failed_statement(context: Any) -> None:
    # A statement that raises gets no after_cursor_execute: keep the stack balanced.
    conn = getattr(context, "connection", None)
    starts = conn.info.get("_ledger_t0") if conn is not None else None
    if starts:
        DB_STATEMENT_SECONDS.observe(time.perf_counter() - starts.pop())


def _instrument(engine: AsyncEngine) -> None:
    """Time every statement on ``engine`` into DB_STATEMENT_SECONDS (once per engine)."""
    sync = engine.sync_engine
    if sa_event.contains(sync, "before_cursor_execute", _before_statement):
        return
    sa_event.listen(sync, "before_cursor_execute", _before_statement)
    sa_event.listen(sync, "after_cursor_execute", _after_statement)
    sa_event.listen(sync, "handle_error", _failed_statement)


def _grouped(
    events: Sequence[LedgerEvent], together: Callable[[LedgerEvent], Hashable] | None
) -> list[list[LedgerEvent]]:
    """``events`` in groups to store or refuse whole, in their order (by outcome without
    ``together``)."""
    if together is None:
        return _by_outcome(events)
    groups: dict[Hashable, list[LedgerEvent]] = {}
    for event in events:
        groups.setdefault(together(event), []).append(event)
    return list(groups.values())


def _by_outcome(events: Sequence[LedgerEvent]) -> list[list[LedgerEvent]]:
    """Each outcome's events together, as outcome_to_ledger_events lists them: its own,
    then its related entities', whose ids are its own followed by ``:<type>:<id>``. (By
    position, not by id: two outcomes may share an id, an older version's reused one.)"""
    groups: list[list[LedgerEvent]] = []
    for event in events:
        head, sep, _ = event.event_id.partition(":")
        if sep and groups and groups[-1][0].event_id == head:
            groups[-1].append(event)
        else:
            groups.append([event])
    return groups


def _named_in(events: list[LedgerEvent], cause: BaseException | None) -> LedgerEvent:
    """The event of a refused group that the refusal names (an event id conflict names
    its event), else its first."""
    text = str(cause or "")
    named = [e for e in events if e.event_id in text]
    # (The longest: a related event's id begins with its outcome's; review h59m.)
    return max(named, key=lambda e: len(e.event_id)) if named else events[0]


class LedgerSink:
    """Writes ledger events in batches; blocks (retrying) while the database is unavailable.

    ``initial_backoff`` doubles per failed attempt up to ``max_backoff``, with jitter so a
    fleet of workers does not reconnect in lock-step after an outage. One WARNING is
    logged per failed attempt (i.e. per backoff step), with the traceback for kinds we
    do not recognise; recovery is logged once.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        keyring: MasterKeyring,
        *,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        check_rls: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        self.engine = engine
        self._sleep = sleep  # (a test's own: patching asyncio's stalls every other task)
        self.keyring = keyring
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._rls_checked = not check_rls
        # Observable progress (tests and the dashboard): attempts that failed, and whether
        # a batch is being retried right now.
        self.failed_attempts = 0
        self.stalled = False
        _instrument(engine)

    async def write_batch(
        self,
        events: Sequence[LedgerEvent],
        together: Callable[[LedgerEvent], Hashable] | None = None,
    ) -> BatchResult:
        """Store ``events``; returns only when every event is stored or dead-lettered.

        ``together``: events with the same key are stored or refused together, never
        half of them (by default an outcome's: its entity and the related ones; review
        h59l: a refund refused left its payment's new refunded amount stored alone).

        Idempotent: a replayed batch (same event ids) writes nothing twice. Never raises
        for database unavailability; cancellation (worker shutdown) propagates, leaving
        the batch unacknowledged for redelivery.
        """
        started = time.perf_counter()
        result = BatchResult()
        try:
            if events:
                await self._write_isolating(_grouped(events, together), result)
        finally:
            BATCH_SECONDS.observe(time.perf_counter() - started)
        w = result.written
        EVENTS_WRITTEN.labels("written").inc(w.events_written)
        EVENTS_WRITTEN.labels("duplicate").inc(w.duplicates)
        ENTITIES.labels("applied").inc(w.entities_applied)
        ENTITIES.labels("stale").inc(w.entities_stale)
        # (Dead letters are counted by whoever parks them, once they are parked: a batch
        # whose parking failed runs again and would count them again.)
        return result

    async def _write_isolating(self, groups: list[list[LedgerEvent]], result: BatchResult) -> None:
        """Write; if the database refuses the data, bisect to find and park the bad
        groups (each whole: one dead letter names it by the event refused, or its first).

        Halves are written separately, which is safe: each write is idempotent and
        entity versions only move forward, so order across halves does not matter.
        """
        events = [event for group in groups for event in group]
        # Per tenant, what an attempt at these events committed (each tenant is its own
        # transaction): kept across retries and a refusal, so that those rows are
        # counted written once, and the halves do not count them as replays (h68l).
        committed: dict[str, WriteResult] = {}
        try:
            await self._write_retrying(events, result, committed)
        except _Rejected as rejected:
            for part in committed.values():
                result.written.add(part)
            done = set(committed)
            groups = [g for g in groups if g[0].tenant_id not in done]
            if not groups:  # (not reached: the refusal was some tenant's)
                return
            events = [event for group in groups for event in group]
            if len(groups) == 1:
                event = _named_in(events, rejected.cause)
                # One line only: a DBAPI error's full text can carry statement parameters.
                detail = _one_line(rejected.cause)
                log.error(
                    "ledger refused event %s of tenant %s: %s",
                    event.event_id,
                    event.tenant_id,
                    detail,
                )
                reason = (
                    FORBIDDEN_DATA
                    if isinstance(rejected.cause, ForbiddenDataError)
                    else EVENT_ID_CONFLICT
                    if isinstance(rejected.cause, EventIdConflictError)
                    else DATA_KEY_UNREADABLE
                    if isinstance(rejected.cause, CryptoError)
                    else "database_rejected"
                )
                result.dead_letters.append(
                    DeadLetter(event.event_id, event.tenant_id, reason, detail, event)
                )
                return
            mid = len(groups) // 2
            await self._write_isolating(groups[:mid], result)
            await self._write_isolating(groups[mid:], result)

    async def _write_retrying(
        self, events: list[LedgerEvent], result: BatchResult, committed: dict[str, WriteResult]
    ) -> None:
        async def write() -> WriteResult:
            if not self._rls_checked:
                await assert_rls_enforced(self.engine)
                self._rls_checked = True
            return await write_events(
                self.engine, events, keyring=self.keyring, committed=committed
            )

        written = await self._retrying(write, f"ledger write of {len(events)} event(s)", result)
        result.written.add(written)

    async def erase_customer(self, tenant_id: str, customer_id: str) -> bool:
        """Crypto-shred a customer (after their `customer.erased` event is stored); retried
        like a write. Idempotent: False if the customer was already erased, or if the
        database refuses the erasure itself (logged as an error: it cannot succeed on a
        retry, and must not stop the sink)."""
        try:
            return await self._retrying(
                lambda: erase_customer(self.engine, tenant_id, customer_id, keyring=self.keyring),
                f"erasure of customer {customer_id} of tenant {tenant_id}",
                BatchResult(),
            )
        except _Rejected as refused:
            ERASURES_REFUSED.inc()
            log.error(
                "erasure of customer %r of tenant %r refused by the database (%s): their "
                "data key is not deleted; once the cause is fixed, erase them again with "
                "`paystream erase --tenant <tenant> --customer <customer>`",
                customer_id,
                tenant_id,
                _one_line(refused.__cause__ or refused),
            )
            return False

    async def _retrying(
        self, operation: Callable[[], Awaitable[T]], what: str, result: BatchResult
    ) -> T:
        """Run ``operation`` until it succeeds; only refused data (DATA) escapes, as _Rejected."""
        attempt = 0
        down_since: float | None = None
        while True:
            attempt += 1
            result.attempts += 1
            try:
                done = await operation()
            except Exception as exc:
                kind = classify_failure(exc)
                WRITE_FAILURES.labels(kind).inc()
                if kind == FailureKind.DATA:
                    # The database answered (it refused this data): nothing is being
                    # retried any more, whatever failed before (review h68l: a batch
                    # refused whole after a blip left the stalled gauge at 1).
                    if self.stalled:
                        self.stalled = False
                        STALLED.set(0)
                    raise _Rejected(exc) from exc
                self.failed_attempts += 1
                if down_since is None:
                    down_since = time.monotonic()
                self.stalled = True
                STALLED.set(1)
                if kind != FailureKind.CONFIG and attempt >= _FRESH_CONNECTIONS_AFTER:
                    await self.engine.dispose()  # (review finding: never replaced)
                # Exponent capped: an outage of hours must not overflow the float.
                delay = min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 32))
                delay *= random.uniform(0.75, 1.0)  # jitter: spread a fleet's reconnects
                log.warning(
                    "%s failed (%s, attempt %d): %s; retrying in %.2fs",
                    what,
                    kind,
                    attempt,
                    _one_line(exc),
                    delay,
                    exc_info=kind == FailureKind.UNEXPECTED,
                )
                await self._sleep(delay)
                continue
            if down_since is not None:
                log.warning(
                    "%s succeeded after %d attempt(s), %.1fs of retries",
                    what,
                    attempt,
                    time.monotonic() - down_since,
                )
            self.stalled = False
            STALLED.set(0)
            return done


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if text:
        return f"{type(exc).__name__}: {text[0][:300]}"
    if isinstance(exc, TimeoutError):
        # asyncpg's command_timeout says nothing: a frozen database read "TimeoutError: ;"
        # after a minute's silence (review h78d, a SIGSTOPped PostgreSQL).
        return "TimeoutError: no answer in time (the database hung or is unreachable)"
    return type(exc).__name__
