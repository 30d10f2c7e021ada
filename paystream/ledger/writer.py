"""The ledger sink's database half: events in, latest entity state + history + audit out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.audit import AuditEntry, append_audit, lock_tenant
from paystream.ledger.chunks import chunked, execute_in_chunks
from paystream.ledger.errors import ChainWipedError, EventIdConflictError, InvalidEventError
from paystream.ledger.event_check import chain_wiped
from paystream.ledger.events import EntityType, LedgerEvent
from paystream.ledger.keys import customer_data_keys
from paystream.ledger.models import (
    Base,
    ConnectedAccount,
    Customer,
    Dispute,
    EntityBackfill,
    Event,
    Invoice,
    Payment,
    PaymentMethod,
    Payout,
    Refund,
    Subscription,
    TaxCalculation,
    TaxRate,
    Tenant,
    Transfer,
    table_of,
)
from paystream.ledger.pii import seal_customer_columns, seal_event_data
from paystream.ledger.session import tenant_session
from paystream.tables.state_machines import (
    CONNECTED_ACCOUNT_MOVES,
    PAYOUT_MOVES,
    TRANSFER_MOVES,
)
from paystream.tenancy.crypto import MasterKeyring

__all__ = ["ENTITY_TABLES", "WriteResult", "backfill_entities", "summarise", "write_events"]

# Entity type -> (model, its id column).
ENTITY_TABLES: dict[EntityType, tuple[type[Base], str]] = {
    EntityType.CUSTOMER: (Customer, "customer_id"),
    EntityType.PAYMENT_METHOD: (PaymentMethod, "payment_method_id"),
    EntityType.PAYMENT: (Payment, "payment_id"),
    EntityType.REFUND: (Refund, "refund_id"),
    EntityType.DISPUTE: (Dispute, "dispute_id"),
    EntityType.SUBSCRIPTION: (Subscription, "subscription_id"),
    EntityType.INVOICE: (Invoice, "invoice_id"),
    EntityType.PAYOUT: (Payout, "payout_id"),
    EntityType.TAX_RATE: (TaxRate, "tax_rate_id"),
    EntityType.TAX_CALCULATION: (TaxCalculation, "tax_calculation_id"),
    EntityType.CONNECTED_ACCOUNT: (ConnectedAccount, "connected_account_id"),
    EntityType.TRANSFER: (Transfer, "transfer_id"),
}
_ENCRYPTED = "encrypted"


@dataclass
class WriteResult:
    """What one call stored: new events, duplicates skipped, entity rows changed or stale."""

    events_written: int = 0
    duplicates: int = 0
    entities_applied: int = 0
    entities_stale: int = 0

    def add(self, other: WriteResult) -> None:
        """Accumulate another tenant's counts."""
        self.events_written += other.events_written
        self.duplicates += other.duplicates
        self.entities_applied += other.entities_applied
        self.entities_stale += other.entities_stale


def summarise(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An audit-safe view of an entity row: ciphertext shown only as present, no bookkeeping."""
    if row is None:
        return None
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("tenant_id", "last_event_id", "created_at"):
            continue
        if key.endswith("_ciphertext"):
            if value is not None:
                out[key.removesuffix("_ciphertext")] = _ENCRYPTED
        elif isinstance(value, datetime):
            out[key] = value.astimezone(UTC).isoformat()
        else:
            out[key] = value
    return out


async def write_events(
    engine: AsyncEngine,
    events: Sequence[LedgerEvent],
    *,
    keyring: MasterKeyring,
    committed: dict[str, WriteResult] | None = None,
) -> WriteResult:
    """Store a batch: per tenant one transaction, idempotent under replay.

    Each event row is inserted once (a replay is skipped by its id); each entity row
    moves only forward in ``version``; each applied change gets an audit entry. The
    caller commits its Kafka offsets only after this returns.
    """
    by_tenant: dict[str, list[LedgerEvent]] = defaultdict(list)
    for event in events:
        by_tenant[event.tenant_id].append(event)
    total = WriteResult()
    for tenant_id, tenant_events in by_tenant.items():
        if committed is not None and tenant_id in committed:
            # Committed by an earlier attempt at these very events (h68l: re-run, its
            # new rows were counted as replays).
            total.add(committed[tenant_id])
            continue
        async with tenant_session(engine, tenant_id) as session:
            part = await _write_tenant(session, keyring, tenant_id, tenant_events)
        if committed is not None:
            committed[tenant_id] = part
        total.add(part)
    return total


async def _write_tenant(
    session: AsyncSession, keyring: MasterKeyring, tenant_id: str, events: list[LedgerEvent]
) -> WriteResult:
    await session.execute(pg_insert(Tenant).values(tenant_id=tenant_id).on_conflict_do_nothing())
    # Serialise with other writers and erasures of this tenant before reading anything.
    await lock_tenant(session, tenant_id)
    first: dict[str, LedgerEvent] = {}
    for event in events:
        if (seen_first := first.setdefault(event.event_id, event)) is not event:
            _same_change(seen_first.event_id, _change(seen_first), event)
    unique = list(first.values())
    seen: dict[str, tuple[Any, str, int]] = {}
    for ids in chunked(e.event_id for e in unique):
        rows = await session.execute(
            select(Event.event_id, Event.entity_type, Event.entity_id, Event.entity_version).where(
                Event.event_id.in_(ids)
            )
        )
        seen.update(
            {row.event_id: (row.entity_type, row.entity_id, row.entity_version) for row in rows}
        )
    for event in unique:
        if (stored := seen.get(event.event_id)) is not None:
            _same_change(event.event_id, stored, event)
    new = [e for e in unique if e.event_id not in seen]
    result = WriteResult(duplicates=len(events) - len(new))
    if not new:
        return result
    keys = await _customer_keys(session, keyring, tenant_id, new)
    await _insert_events(session, tenant_id, new, keys)
    result.events_written = len(new)
    await _apply(session, keyring, tenant_id, new, keys, result)
    return result


async def _apply(
    session: AsyncSession,
    keyring: MasterKeyring,
    tenant_id: str,
    new: list[LedgerEvent],
    keys: Mapping[str, bytes],
    result: WriteResult,
) -> None:
    """Move the entity rows of stored events ``new`` forward, each version audited."""
    latest: dict[tuple[EntityType, str], LedgerEvent] = {}
    first_seen: dict[tuple[EntityType, str], datetime] = {}
    # Every version of an entity in the batch: each applied one gets its audit entry.
    history: dict[tuple[EntityType, str], list[LedgerEvent]] = defaultdict(list)
    for event in new:
        history[(event.entity_type, event.entity_id)].append(event)
        current = latest.get((event.entity_type, event.entity_id))
        if current is None or event.version > current.version:
            latest[(event.entity_type, event.entity_id)] = event
        key = (event.entity_type, event.entity_id)
        earliest = first_seen.get(key)
        first_seen[key] = event.time if earliest is None or event.time < earliest else earliest
    audit: list[AuditEntry] = []
    for entity_type, (model, id_column) in ENTITY_TABLES.items():
        batch = [e for (t, _), e in latest.items() if t is entity_type]
        if batch:
            audit += await _upsert(
                session, tenant_id, model, id_column, batch, keys, first_seen, history
            )
    result.entities_applied = len({(a.entity_type, a.entity_id) for a in audit})
    # (An entity type without a table of its own would be in the events alone: neither
    # applied nor stale. Every type has one since 0019's transfers.)
    tabled = sum(1 for t, _ in latest if t in ENTITY_TABLES)
    result.entities_stale = tabled - result.entities_applied
    await append_audit(session, tenant_id, audit, keyring=keyring)


BACKFILL_ACTOR = "operator:backfill"
# The entity types a migration gave tables after their events were stored (their earlier
# events are backfilled) -> that migration.
BACKFILLED_TYPES: dict[str, str] = {
    EntityType.SUBSCRIPTION.value: "0013",
    EntityType.INVOICE.value: "0013",
    EntityType.PAYOUT.value: "0014",
    EntityType.TAX_RATE.value: "0015",
    EntityType.TAX_CALCULATION.value: "0015",
    EntityType.TRANSFER.value: "0019",
}


async def backfill_entities(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    keyring: MasterKeyring,
    actor: str = BACKFILL_ACTOR,
    unlisted: bool = False,
) -> WriteResult:
    """Apply the tenant's events that migrations 0013, 0014, 0015 and 0019 listed
    (``entity_backfill``:
    stored before their entity type had a table) to their rows, as the sink applies a batch:
    each version the row moves through audited (``actor``), a row already at or past an
    event's version left as it is. Idempotent: a second run applies nothing. Only the
    listed events: an events row inserted since (the application role may insert one)
    is never applied by it.

    ``unlisted``: every stored event of those types (subscription, invoice, payout, tax
    rate, tax calculation, transfer), listed or not: what a worker of the release before
    0013 (or 0014, 0015, 0019) stored after the
    migration ran (a rolling upgrade) was not listed. The operator vouches for them:
    `audit verify` names them first, as events never applied, and the application role
    could have inserted one.

    Refused (:class:`ChainWipedError`, nothing written) for a tenant whose chain is empty
    though events are stored that it held (``event_check.chain_wiped``): a chain that
    began, the backfill's own included, then deleted whole, rebuilt here under a new
    chain, verified clean and the deletion was gone (review h74m)."""
    result = WriteResult()
    async with tenant_session(engine, tenant_id) as session:
        await lock_tenant(session, tenant_id)
        if await chain_wiped(session, tenant_id):
            raise ChainWipedError(
                f"tenant {tenant_id}: events are recorded but its audit chain is empty "
                "(deleted: see `paystream audit verify`); not backfilled, which would build "
                "a new chain over it: restore the ledger from a backup"
            )
        query = select(Event).order_by(Event.time, Event.event_id)
        if unlisted:
            query = query.where(Event.entity_type.in_(tuple(BACKFILLED_TYPES)))
        else:
            query = query.join(
                EntityBackfill,
                (EntityBackfill.tenant_id == Event.tenant_id)
                & (EntityBackfill.event_id == Event.event_id),
            )
        stored = await session.execute(query)
        events = [
            LedgerEvent(
                event_id=e.event_id,
                type=e.type,
                tenant_id=tenant_id,
                causation_id=e.causation_id,
                time=e.time,
                entity_type=EntityType(e.entity_type),
                entity_id=e.entity_id,
                version=int(e.entity_version),
                data=e.data,
                actor=actor,
            )
            for (e,) in stored
        ]
        result.duplicates = len(events)  # (stored already: none written anew)
        if events:
            await _apply(session, keyring, tenant_id, events, {}, result)
    return result


async def _move_created_back(
    session: AsyncSession,
    table: Any,
    id_col: Any,
    before: Mapping[str, Mapping[str, Any]],
    events: list[LedgerEvent],
    first_seen: Mapping[tuple[EntityType, str], datetime],
) -> None:
    """A stored row whose batch holds an earlier event (version 1 after version 2, e.g.
    replayed from the ledger's dead letters) takes that event's time as ``created_at``:
    the row's creation is its earliest event, not the first one to arrive."""
    for e in events:
        prior = before.get(e.entity_id)
        earliest = first_seen[(e.entity_type, e.entity_id)]
        if prior is not None and prior["created_at"] > earliest:
            await session.execute(
                update(table)
                .where(table.c.tenant_id == e.tenant_id, id_col == e.entity_id)
                .where(table.c.created_at > earliest)
                .values(created_at=earliest)
            )


def _change(event: LedgerEvent) -> tuple[str, str, int]:
    return (event.entity_type, event.entity_id, event.version)


def _same_change(event_id: str, known: tuple[str, str, int], event: LedgerEvent) -> None:
    """A replay is the same change of the same entity; anything else under the id is
    another event, which skipping as a duplicate would silently lose."""
    if known != _change(event):
        raise EventIdConflictError(
            event_id,
            f"already stored for {known[0]} {known[1]} version {known[2]}, not "
            f"{event.entity_type} {event.entity_id} version {event.version}",
        )


async def _customer_keys(
    session: AsyncSession, keyring: MasterKeyring, tenant_id: str, events: list[LedgerEvent]
) -> dict[str, bytes]:
    """PII keys of the batch's customers; erased customers get none, so nothing is re-stored."""
    ids = {e.entity_id for e in events if e.entity_type is EntityType.CUSTOMER}
    if not ids:
        return {}
    erased: set[str] = set()
    for chunk in chunked(ids):
        erased.update(
            await session.scalars(
                select(Customer.customer_id).where(
                    Customer.customer_id.in_(chunk), Customer.erased_at.is_not(None)
                )
            )
        )
    return await customer_data_keys(session, keyring, tenant_id, ids - erased, create=True)


async def _insert_events(
    session: AsyncSession, tenant_id: str, events: list[LedgerEvent], keys: Mapping[str, bytes]
) -> None:
    rows = []
    for e in events:
        data = dict(e.data)
        if e.entity_type is EntityType.CUSTOMER:
            data = seal_event_data(keys.get(e.entity_id), tenant_id, e.event_id, data)
        rows.append(
            {
                "tenant_id": tenant_id,
                "event_id": e.event_id,
                "type": e.type,
                "causation_id": e.causation_id,
                "entity_type": e.entity_type.value,
                "entity_id": e.entity_id,
                "entity_version": e.version,
                "time": e.time,
                "data": data,
            }
        )
    await execute_in_chunks(session, pg_insert(table_of(Event)).on_conflict_do_nothing(), rows)


# The entities whose status moves only as their state machine says, checked by the
# ledger too: model -> (what it is called, its moves).
_STATUS_MOVES: dict[type[Base], tuple[str, Mapping[str, frozenset[str]]]] = {
    Payout: ("payout", PAYOUT_MOVES),
    ConnectedAccount: ("connected account", CONNECTED_ACCOUNT_MOVES),
    Transfer: ("transfer", TRANSFER_MOVES),
}


def _statuses_move_forward(
    kind: str,
    moves: Mapping[str, frozenset[str]],
    before: Mapping[str, Mapping[str, Any]],
    events: list[LedgerEvent],
    history: Mapping[tuple[EntityType, str], list[LedgerEvent]],
) -> None:
    """Refuse (as data: the event is dead-lettered) a version that moves the entity's
    status where none goes (``moves``). A payout's (PAYOUT_MOVES): failed and canceled
    are final, so a later version of a failed payout that says `paid` is never recorded
    (its amount was given back to the balance); paid -> failed is taken (a bank returns a
    payout). A connected account's (CONNECTED_ACCOUNT_MOVES): rejected is final, and
    pending, once left, is never entered again (the worker derives restricted then).
    The forward-only trigger checks versions only; the worker never emits such a move,
    so this is the ledger's own defence (review h74m)."""
    for e in events:
        prior = before.get(e.entity_id)
        stored = int(prior["version"]) if prior is not None else 0
        status = str(prior["status"]) if prior is not None else None
        steps = {s.version: s for s in reversed(history[(e.entity_type, e.entity_id)])}
        for version in sorted(v for v in steps if stored < v <= e.version):
            step = steps[version]
            to = str(step.columns.get("status"))
            if status is not None and to not in moves.get(status, frozenset()):
                raise InvalidEventError(
                    step.event_id,
                    f"{kind} {e.entity_id} version {version}: a {kind} that is {status} "
                    f"cannot become {to}",
                )
            status = to


async def _upsert(
    session: AsyncSession,
    tenant_id: str,
    model: type[Base],
    id_column: str,
    events: list[LedgerEvent],
    keys: Mapping[str, bytes],
    first_seen: Mapping[tuple[EntityType, str], datetime],
    history: Mapping[tuple[EntityType, str], list[LedgerEvent]],
) -> list[AuditEntry]:
    """Insert-or-advance the entity rows to their latest version; returns an audit entry
    for each version the row moved through (not only the last: how complete the trail
    is must not depend on how the outcomes were batched)."""
    table = table_of(model)
    id_col = table.c[id_column]
    before = {
        row[id_column]: dict(row)
        for chunk in chunked(e.entity_id for e in events)
        for row in (await session.execute(select(table).where(id_col.in_(chunk)))).mappings()
    }

    def image(e: LedgerEvent) -> dict[str, Any]:
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            id_column: e.entity_id,
            **e.columns,
            "version": e.version,
            "last_event_id": e.event_id,
            "created_at": first_seen[(e.entity_type, e.entity_id)],
            "updated_at": e.time,
        }
        if model is Customer:
            row |= seal_customer_columns(keys.get(e.entity_id), tenant_id, e.entity_id, e.data)
        return row

    checked = _STATUS_MOVES.get(model)
    if checked is not None:
        _statuses_move_forward(*checked, before, events, history)
    await _move_created_back(session, table, id_col, before, events, first_seen)
    rows = [image(e) for e in events]
    # created_at is set once (moved only back, above); erased_at belongs to
    # erase_customer, never to events.
    updated = [c for c in rows[0] if c not in ("tenant_id", id_column, "created_at")]
    stmt = pg_insert(table)
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.tenant_id, id_col],
        set_={c: stmt.excluded[c] for c in updated},
        where=table.c.version < stmt.excluded.version,
    ).returning(id_col)
    applied = set(await execute_in_chunks(session, upsert, rows, returning=True))
    now = datetime.now(UTC)
    entries = []
    for e, row in zip(events, rows, strict=True):
        if e.entity_id not in applied:
            continue
        prior = before.get(e.entity_id)
        stored = int(prior["version"]) if prior is not None else 0
        steps: dict[int, LedgerEvent] = {}  # by version, the first event that carried it
        for step in history[(e.entity_type, e.entity_id)]:
            if stored < step.version < e.version:
                steps.setdefault(step.version, step)
        steps[e.version] = e
        current = prior
        for version in sorted(steps):
            step = steps[version]
            after = {**(current or {}), **(row if step is e else image(step))}
            entries.append(
                AuditEntry(
                    actor=step.actor,
                    action=step.type,
                    entity_type=e.entity_type.value,
                    entity_id=e.entity_id,
                    before=summarise(current),
                    after=summarise(after),
                    occurred_at=now,
                )
            )
            current = after
    return entries
