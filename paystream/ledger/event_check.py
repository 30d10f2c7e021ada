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

from paystream.ledger.models import EntityBackfill, Event

__all__ = ["events_ahead_of_their_rows"]

_SHOWN = 6  # ids kept per entity type (the verifier names five, then "...")


async def events_ahead_of_their_rows(
    session: AsyncSession, *, awaiting_backfill: bool = False
) -> dict[str, tuple[int, list[str]]]:
    """Per entity type: how many stored events are past their row's version (or have no
    row at all), and some of their ids. Those migrations 0013 and 0014 listed for
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
