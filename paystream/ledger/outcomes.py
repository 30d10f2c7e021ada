"""Outcome CloudEvents → LedgerEvents, the ledger sink's dead letters and its metrics:
the half of the sink (sink.py) that needs no database driver.

A worker imports this with its outcomes agent (agents/ledger_sink.py) whether it runs
the ledger or not (the insights read the outcomes through the same agent); the database
half, SQLAlchemy and the ledger's models, about a fifth of a worker's imports, only
where the ledger runs. :mod:`paystream.ledger.sink` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent
from prometheus_client import Counter, Gauge, Histogram

from paystream.ledger.errors import ForbiddenDataError, InvalidEventError
from paystream.ledger.events import LedgerEvent
from paystream.tables.next_action import without_credentials

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
    "DeadLetter",
    "FailureKind",
    "dead_letter_for",
    "outcome_to_ledger_events",
]

# The dead-letter reason of an outcome holding card data (parked without its bytes).
FORBIDDEN_DATA = "forbidden_data"
# An outcome dead-lettered without its bytes because they hold a payment's next action
# (a customer's credential) or a customer's personal data (agents/ledger_sink.py).
NEXT_ACTION_REDACTED = "next_action"
PERSONAL_DATA_REDACTED = "personal_data"
DEAD_LETTER_REDACTIONS = (FORBIDDEN_DATA, NEXT_ACTION_REDACTED, PERSONAL_DATA_REDACTED)
# Another event is stored under its id (see EventIdConflictError).
EVENT_ID_CONFLICT = "event_id_conflict"
# The customer's stored data key does not unwrap under the master key it names: the row
# was altered or corrupted (its events wait, parked, for an operator).
DATA_KEY_UNREADABLE = "data_key_unreadable"

# ---- metrics (new names; paystream/metrics.py holds the pipeline's) -------------------

EVENTS_WRITTEN = Counter(
    "paystream_ledger_events_total",
    "Ledger events handled by the sink: `written` (new rows) or `duplicate` (replays skipped).",
    ["result"],
)
ENTITIES = Counter(
    "paystream_ledger_entities_total",
    "Entity rows: `applied` (moved forward) or `stale` (an older version arrived late).",
    ["result"],
)
BATCH_SECONDS = Histogram(
    "paystream_ledger_batch_seconds",
    "Time to store one sink batch, including retries while the database is unavailable.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DB_STATEMENT_SECONDS = Histogram(
    "paystream_ledger_db_statement_seconds",
    "Latency of each SQL statement the ledger sink's engine executes.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 10, 30, 60),
)
WRITE_FAILURES = Counter(
    "paystream_ledger_write_failures_total",
    "Failed batch write attempts, by kind (connection, config, unexpected are retried; "
    "data is isolated and dead-lettered).",
    ["kind"],
)
DEAD_LETTERS = Counter(
    "paystream_ledger_dead_letters_total",
    "Ledger events (or outcomes) the ledger refused; they go to the ledger dead-letter topic.",
    ["reason"],
)
OUTCOMES_SKIPPED = Counter(
    "paystream_ledger_outcomes_skipped_total",
    "Outcomes that change no entity (e.g. command.rejected) and so write no ledger rows.",
    ["type"],
)
# The outcomes paystream emits without an entity (docs.OUTCOMES says which; test_docs
# holds the two together). Anything else is counted as "other": the label comes from
# whatever lands on the events topic, and a forged type per record would grow the series
# without bound.
ENTITYLESS_OUTCOMES = frozenset(
    f"com.paystream.{t}"
    for t in (
        "command.rejected",
        "customer.exported",
        "payment_method.attach_failed",
        "balance.retrieved",
        "connected_account.onboarding_link_created",
    )
)

ERASURES_REFUSED = Counter(
    "paystream_ledger_erasures_refused_total",
    "Customer erasures the database refused: the customer's data key was not deleted.",
)
STALLED = Gauge(
    "paystream_ledger_sink_stalled",
    "1 while the sink is retrying a batch (database unavailable or misconfigured).",
)


# ---- translation ------------------------------------------------------------------------

# The ledger's column names differ from the stream snapshots in a few places; the
# snapshot is stored as received, plus these aliases so the ledger columns get filled.
_ALIASES: dict[str, dict[str, str]] = {
    "payment_method": {"provider_token": "provider_payment_method_id"},
}


def _snapshot(entity_type: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(obj)
    if data.get("next_action") is not None:
        # The customer's credential for a 3-D Secure step: not for an audit log.
        data["next_action"] = without_credentials(data["next_action"])
    for column, source in _ALIASES.get(entity_type, {}).items():
        if data.get(column) is None and data.get(source) is not None:
            data[column] = data[source]
    if entity_type == "payment_method" and data.get("status") is None and "attached" in data:
        # The stream keeps a boolean; the ledger a status word (room for more states).
        data["status"] = "attached" if data["attached"] else "detached"
    return data


def _entity_part(event_id: str, part: Any, where: str) -> tuple[str, str, int, Mapping[str, Any]]:
    if not isinstance(part, Mapping):
        raise InvalidEventError(event_id, f"{where} must be an object")
    entity_type, entity_id, version, obj = (
        part.get("entity_type"),
        part.get("entity_id"),
        part.get("version"),
        part.get("object"),
    )
    if not isinstance(entity_type, str) or not isinstance(entity_id, str):
        raise InvalidEventError(event_id, f"{where}: entity_type and entity_id must be strings")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidEventError(event_id, f"{where}: version must be an integer")
    if not isinstance(obj, Mapping):
        raise InvalidEventError(event_id, f"{where}: object must be an object")
    return entity_type, entity_id, version, obj


def outcome_to_ledger_events(
    outcome: CloudEvent, *, received_at: datetime | None = None
) -> list[LedgerEvent]:
    """The ledger events of one outcome: primary entity first, then each related entity.

    Returns ``[]`` for outcomes that carry no entity (rejections). Raises
    :class:`InvalidEventError` (or its subclass :class:`ForbiddenDataError`) when the
    outcome cannot be stored as given: the whole outcome is refused, never half of it.
    ``received_at`` stands in for a missing CloudEvent ``time`` (the Kafka timestamp).
    """
    event_id = outcome.get_id()
    data = outcome.get_data()
    if not isinstance(data, Mapping):
        raise InvalidEventError(event_id, "outcome data must be a JSON object")
    # Every paystream outcome carries the extension, and it decided the partition. The
    # payload alone is never trusted to name the tenant whose rows are written.
    ext_tenant = outcome.get_extension("tenantid")
    if not isinstance(ext_tenant, str) or not ext_tenant:
        raise InvalidEventError(event_id, "outcome has no tenantid extension")
    tenant_id = ext_tenant
    if data.get("tenant_id") not in (None, tenant_id):
        # A payload claiming another tenant is either a bug or an attack on its rows.
        raise InvalidEventError(event_id, "data.tenant_id does not match the tenantid extension")
    if data.get("entity_type") is None and data.get("entity_id") is None:
        kind = outcome.get_type()
        OUTCOMES_SKIPPED.labels(kind if kind in ENTITYLESS_OUTCOMES else "other").inc()
        return []
    when = outcome.get_time() or received_at or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # CloudEvents times are RFC 3339; naive means UTC
    if received_at is not None and when > received_at:
        # The command's time is its producer's: one dated ahead of when its outcome was
        # recorded (a client clock ahead, or a year 9000) dated the ledger's rows ahead
        # too (review h59l). A past one stands: a business's own time (an offline sale).
        when = received_at
    causation = outcome.get_extension("causationid") or data.get("command_id")
    common: dict[str, Any] = {
        "type": outcome.get_type(),
        "tenant_id": tenant_id,
        "causation_id": str(causation) if causation is not None else None,
        "time": when,
    }
    entity_type, entity_id, version, obj = _entity_part(event_id, data, "data")
    primary = _snapshot(entity_type, obj)
    if isinstance(data.get("error"), Mapping) and "error" not in primary:
        # A failed payment's provider error belongs with the event that recorded it.
        primary["error"] = dict(data["error"])
    events = [
        LedgerEvent(
            event_id=event_id,
            entity_type=entity_type,  # type: ignore[arg-type]  # LedgerEvent validates it
            entity_id=entity_id,
            version=version,
            data=primary,
            **common,
        )
    ]
    related = data.get("related") or []
    if not isinstance(related, list):
        raise InvalidEventError(event_id, "data.related must be a list")
    for i, part in enumerate(related):
        r_type, r_id, r_version, r_obj = _entity_part(event_id, part, f"data.related[{i}]")
        events.append(
            LedgerEvent(
                event_id=f"{event_id}:{r_type}:{r_id}",
                entity_type=r_type,  # type: ignore[arg-type]  # LedgerEvent validates it
                entity_id=r_id,
                version=r_version,
                data=_snapshot(r_type, r_obj),
                **common,
            )
        )
    return events


# ---- dead letters ---------------------------------------------------------------------


class FailureKind:
    """How a failed write is handled (string constants, also the metric label)."""

    CONNECTION = "connection"  # retry: the database is down, restarting or unreachable
    CONFIG = "config"  # retry: schema not migrated, grants or role wrong; needs an operator
    DATA = "data"  # never succeeds: isolate the events and dead-letter them
    UNEXPECTED = "unexpected"  # retry: we cannot prove retrying is useless, and must not drop


# Every reason the ledger dead-letters with (DeadLetter.reason; ledger_sink.py's too).
DEAD_LETTER_REASONS = frozenset(
    {
        "invalid_event",
        FORBIDDEN_DATA,
        EVENT_ID_CONFLICT,
        DATA_KEY_UNREADABLE,
        "database_rejected",
        "undecodable",
    }
)
# Started at 0 (a series first scraped at 1 shows no increase: see pipeline.py).
for _reason in sorted(DEAD_LETTER_REASONS):
    DEAD_LETTERS.labels(_reason)
for _kind in (
    FailureKind.CONNECTION,
    FailureKind.CONFIG,
    FailureKind.DATA,
    FailureKind.UNEXPECTED,
):
    WRITE_FAILURES.labels(_kind)


@dataclass(frozen=True)
class DeadLetter:
    """A ledger event (or a whole outcome) that can never be stored, and why."""

    event_id: str
    tenant_id: str | None
    # invalid_event | forbidden_data | event_id_conflict | data_key_unreadable |
    # database_rejected | undecodable
    reason: str
    detail: str
    event: LedgerEvent | None = None


def dead_letter_for(exc: InvalidEventError, tenant_id: str | None) -> DeadLetter:
    """A DeadLetter for an outcome refused during translation."""
    reason = FORBIDDEN_DATA if isinstance(exc, ForbiddenDataError) else "invalid_event"
    return DeadLetter(exc.event_id, tenant_id, reason, exc.reason)
