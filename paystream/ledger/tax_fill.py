"""The tax columns (migration 0015) of rows a worker of the release before it wrote after
it ran, in a rolling upgrade (review h74q).

The setup job migrates first, so the previous release's workers keep writing payments,
invoices and subscriptions on the new schema; their writer knows none of 0015's columns
(``amount_tax``/``tax_calculation_id``, ``subtotal``/``tax``, ``tax_rate_ids``), though
the events they store carry them. Such a row is left with those columns NULL, after the
migration's one-off fill ran: ``ledger tax-report`` would leave its tax out for good.

:func:`fill_tax_columns` fills them by the migration's own rules (``v0015_tax``'s
``COLUMNS`` and ``_taken``): each from the stored event the row's ``last_event_id``
names, at the row's version (the event its last audit entry came from), only where that
event carries it with the right JSON type; and, unlike the migration, only where the
column is NULL (never a value overwritten). Set-based (one statement per table),
idempotent (a second run fills nothing). As the owner (``DATABASE_URL``), under the
tenant policy, with 0006's forward-only trigger set aside for those statements (it
refuses any same-version change) and the three tables locked against writes in the
sink's order (payments, subscriptions, invoices: its writes wait for the commit, and
neither waits on the other's lock while holding one the other needs). The values carry no
audit entry of their own, exactly as the migration's fill: the master key is not the
database's; an entry written without these columns holds none of them, so `audit verify`
neither flags nor vouches for them until the entity's next event audits them with the
row, and the trigger keeps them from changing meanwhile.

:func:`rows_missing_tax_columns` is what `audit verify` names: rows that such a fill
would change.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from paystream.ledger.migrations.versions.v0015_tax import COLUMNS, _taken
from paystream.ledger.session import TENANT_SETTING

__all__ = ["fill_tax_columns", "rows_missing_tax_columns"]

# The tables in the order the sink writes them (writer.ENTITY_TABLES): locked so.
_LOCK_ORDER = ("payments", "subscriptions", "invoices")
_SHOWN = 6  # ids kept per table (the verifier names five, then "...")


def _matched(table: str, present: frozenset[str] | None = None) -> tuple[str, str]:
    """(the join of a row to the event its version came from, the condition that the
    event carries a column the row lacks), as 0015's fill joins them; of the columns
    ``present`` only, if given."""
    id_column = table.removesuffix("s") + "_id"
    entity_type = table.removesuffix("s")
    join = (
        f"e.tenant_id = r.tenant_id AND e.event_id = r.last_event_id "
        f"AND e.entity_type = '{entity_type}' AND e.entity_id = r.{id_column} "
        f"AND e.entity_version = r.version"
    )
    lacking = " OR ".join(
        f"(r.{name} IS NULL AND {_taken(name, j)} IS NOT NULL)"
        for name, _, j in COLUMNS[table]
        if present is None or name in present
    )
    return join, f"({lacking})"


async def fill_tax_columns(owner: AsyncEngine, tenant_id: str) -> dict[str, int]:
    """Fill the tenant's rows' NULL tax columns from their version's event (the module's
    rules); one transaction. Returns, per table, how many rows were filled."""
    filled: dict[str, int] = {}
    async with owner.begin() as conn:
        await _as_tenant(conn, tenant_id)
        await conn.execute(text(f"LOCK TABLE {', '.join(_LOCK_ORDER)} IN SHARE ROW EXCLUSIVE MODE"))
        present = await _present(conn)
        for table in _LOCK_ORDER:
            if table not in present:
                continue  # (not migrated to 0015: nothing to fill)
            join, lacking = _matched(table, present[table])
            sets = ", ".join(
                f"{name} = COALESCE(r.{name}, {_taken(name, j)})"
                for name, _, j in COLUMNS[table]
                if name in present[table]
            )
            await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_forward_only"))
            done = await conn.execute(
                text(
                    f"UPDATE {table} r SET {sets} FROM events e "  # noqa: S608 - constants
                    f"WHERE r.tenant_id = :tenant AND {join} AND {lacking}"
                ),
                {"tenant": tenant_id},
            )
            await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {table}_forward_only"))
            filled[table] = int(done.rowcount or 0)
    return filled


async def _present(conn: AsyncConnection | AsyncSession) -> dict[str, frozenset[str]]:
    """Per table, which of 0015's columns it has (a ledger not migrated to 0015: none)."""
    names = [name for columns in COLUMNS.values() for name, _, _ in columns]
    present: dict[str, frozenset[str]] = {}
    for table, column in await conn.execute(
        text(
            "SELECT c.relname, a.attname FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.oid IN (SELECT to_regclass(t) FROM unnest(CAST(:tables AS text[])) t) "
            "AND a.attname = ANY(CAST(:names AS text[])) AND NOT a.attisdropped"
        ),
        {"tables": list(_LOCK_ORDER), "names": names},
    ):
        present[str(table)] = present.get(str(table), frozenset()) | {str(column)}
    return present


async def _as_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    await conn.execute(
        text("SELECT set_config(:name, :tenant, true)"),
        {"name": TENANT_SETTING, "tenant": tenant_id},
    )


async def rows_missing_tax_columns(session: AsyncSession) -> dict[str, tuple[int, list[str]]]:
    """Per table, how many of the session's tenant's rows lack a tax column their
    version's event carries (what :func:`fill_tax_columns` would fill), and some ids.
    Read as the application role, under its tenant policy. A ledger not yet migrated to
    0015 has none of the columns: nothing is missing."""
    present = await _present(session)
    found: dict[str, tuple[int, list[str]]] = {}
    for table in _LOCK_ORDER:
        if table not in present:
            continue
        join, lacking = _matched(table, present[table])
        id_column = table.removesuffix("s") + "_id"
        rows = (
            await session.execute(
                text(
                    f"SELECT r.{id_column}, count(*) OVER () FROM {table} r "  # noqa: S608
                    f"JOIN events e ON {join} WHERE {lacking} ORDER BY r.{id_column} "
                    f"LIMIT {_SHOWN}"
                )
            )
        ).all()
        if rows:
            found[table] = (int(rows[0][1]), [str(r[0]) for r in rows])
    return found
