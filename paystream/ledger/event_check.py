"""Stored events against the entity rows they move, for ``audit verify``.

The writer stores an event and moves its entity's row to the event's version in one
transaction, so no stored event is ahead of its row. One is when the application role
inserted it under an id the ledger had not stored yet (ids derive from the tenant, the
command and the outcome type: they can be worked out): the genuine outcome under that
id is then taken for a replay and skipped, and its change never reaches the row
(review finding). Only what the row missed shows it.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from paystream.ledger.models import AuditLog, EntityBackfill, Event, MasterKeySeen

__all__ = ["chain_wiped", "events_ahead_of_their_rows"]

_SHOWN = 6  # ids kept per entity type (the verifier names five, then "...")


async def events_ahead_of_their_rows(
    session: AsyncSession, *, awaiting_backfill: bool = False
) -> dict[str, tuple[int, list[str]]]:
    """Per entity type: how many stored events are past their row's version (or have no
    row at all), and some of their ids. Those migrations 0013, 0014, 0015 and 0019 listed for
    ``paystream ledger backfill`` (stored before their type had a table) are counted
    apart: only with ``awaiting_backfill``."""
    from paystream.ledger.writer import ENTITY_TABLES  # (writer imports audit, which imports this)

    listed = exists().where(
        EntityBackfill.tenant_id == Event.tenant_id, EntityBackfill.event_id == Event.event_id
    )
    found: dict[str, tuple[int, list[str]]] = {}
    for entity_type, (model, id_column) in ENTITY_TABLES.items():
        table = model.__table__
        row_id, row_version = table.c[id_column], table.c.version
        ahead = (
            select(Event.event_id)
            .outerjoin(table, and_(row_id == Event.entity_id, table.c.tenant_id == Event.tenant_id))
            .where(
                Event.entity_type == entity_type.value,
                or_(row_id.is_(None), Event.entity_version > row_version),
                listed if awaiting_backfill else ~listed,
            )
            .order_by(Event.event_id)
        )
        ids = list((await session.scalars(ahead)).all())
        if ids:
            found[entity_type.value] = (len(ids), ids[:_SHOWN])
    return found


async def chain_wiped(session: AsyncSession, tenant_id: str) -> bool:
    """Has the tenant no audit chain, though events are stored that one would hold?

    Every event but those migrations 0013, 0014, 0015 and 0019 listed for ``paystream ledger
    backfill`` was chained when stored. Listed ones (stored before their type had a
    table) have no entries until the backfill applies them, so a tenant holding only
    those has no chain to have lost, while they wait. Once its chain began (the backfill's
    entries, or any other), the owner's trigger recorded the master key it is keyed under
    in ``master_keys_seen`` (migration 0012; the application role writes none of it):
    nothing listed is waiting then (the backfill applies a tenant's listing whole, in one
    transaction), and an empty chain was deleted. (Leaving out every listed event for
    ever, a backfilled chain deleted with its rows read as still waiting, and the backfill
    it advised rebuilt it: the deletion was gone; review h74m.)"""
    if (
        await session.execute(select(AuditLog.seq).where(AuditLog.tenant_id == tenant_id).limit(1))
    ).first() is not None:
        return False
    began = exists().where(MasterKeySeen.tenant_id == tenant_id)
    waiting = and_(
        ~began,
        exists().where(
            EntityBackfill.tenant_id == Event.tenant_id, EntityBackfill.event_id == Event.event_id
        ),
    )
    held = select(Event.event_id).where(Event.tenant_id == tenant_id, ~waiting).limit(1)
    return (await session.execute(held)).first() is not None
