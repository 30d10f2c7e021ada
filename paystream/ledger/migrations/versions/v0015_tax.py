"""Tax rates and tax calculations get entity tables; payments, invoices and subscriptions
the columns of their tax.

Tax outcomes (``tax_rate.created``/``archived``, ``tax.calculated``) were stored in
``events`` only, and a payment's ``amount_tax`` / ``tax_calculation_id``, an invoice's
``subtotal`` / ``tax`` and a subscription's ``tax_rate_ids`` were in its stored events but
not in its row. ``tax_rates`` and ``tax_calculations`` are made and secured as 0013 and
0014 made theirs: row-level security forced, with the tenant policy (0002); the
application role's SELECT, INSERT and UPDATE, never DELETE (0002, 0004); 0006's
forward-only trigger. A rate's ``percentage`` is the exact decimal string the rate was
made with (0 to 100, at most four decimals, as paystream.tax takes it): never a float.

Their events stored before this revision are listed in 0013's ``entity_backfill`` as
0014 listed payouts' (as the owner, tenant by tenant under the tenant policy, ``events``
locked against writes while they are read), for ``paystream ledger backfill``.

The new columns of the existing tables are nullable (a row before tax has none). A row
already there takes them from the stored event its ``last_event_id`` names: the very
event its version and its last audit entry came from, so nothing but what that event
said is written, at the same version. 0006's trigger refuses any same-version change, so
it is set aside for that one statement, as the owner, tenant by tenant, with the tables
locked against writes (the sink's writes wait for the commit). These values carry no
audit entry of their own (the master key is not the database's); the trigger keeps them
from changing thereafter, and the entity's next event audits them with the rest of the
row. (An entry written before this revision holds none of these columns: `audit verify`
compares what an entry holds.)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from paystream.ledger.migrations.entity_tables import (
    list_for_backfill,
    per_tenant,
    secure_entity_table,
    unlist_from_backfill,
)
from paystream.ledger.migrations.versions.v0001_schema import (
    TSTZ,
    _entity_columns,
    _index,
    _money_checks,
    _tenant_fk,
    _tenant_id,
)

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table → (its id column, its events' entity type): 0006's trigger arguments.
ENTITY_TABLES: dict[str, tuple[str, str]] = {
    "tax_rates": ("tax_rate_id", "tax_rate"),
    "tax_calculations": ("tax_calculation_id", "tax_calculation"),
}
# Existing table → its new columns (name, type, the JSON type its events carry it as).
COLUMNS: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "payments": (
        ("amount_tax", sa.BigInteger(), "number"),
        ("tax_calculation_id", sa.Text(), "string"),
    ),
    "invoices": (
        ("subtotal", sa.BigInteger(), "number"),
        ("tax", sa.BigInteger(), "number"),
    ),
    "subscriptions": (("tax_rate_ids", postgresql.JSONB(), "array"),),
}
MONEY = {"amount_tax", "subtotal", "tax"}
PERCENTAGE = r"^(100(\.0{1,4})?|[0-9]{1,2}(\.[0-9]{1,4})?)$"  # (paystream.tax's)


def _taken(column: str, json_type: str) -> str:
    """The event's ``column`` if it is of its JSON type (a whole number for money), else
    NULL: what the writer would have taken, and nothing a cast could fail on."""
    field = f"e.data -> '{column}'"
    if json_type == "array":
        return f"CASE WHEN jsonb_typeof({field}) = 'array' THEN {field} END"
    if json_type == "number":
        return (
            f"CASE WHEN jsonb_typeof({field}) = 'number' AND ({field})::text ~ '^[0-9]{{1,18}}$' "
            f"THEN ({field})::text::bigint END"
        )
    return f"CASE WHEN jsonb_typeof({field}) = 'string' THEN e.data ->> '{column}' END"


def upgrade() -> None:
    op.create_table(
        "tax_rates",
        _tenant_id(),
        sa.Column("tax_rate_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("percentage", sa.Text(), nullable=False),
        sa.Column("inclusive", sa.Boolean(), nullable=False),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("jurisdiction", sa.Text(), nullable=True),
        sa.Column("tax_type", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_tax_rate_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "tax_rate_id", name="pk_tax_rates"),
        _tenant_fk("tax_rates"),
        sa.CheckConstraint(f"percentage ~ '{PERCENTAGE}'", name="ck_tax_rates_percentage_decimal"),
    )
    _index("tax_rates", "tenant_id", "status", "updated_at")
    amounts = (
        "amount_subtotal",
        "amount_tax",
        "amount_tax_inclusive",
        "amount_tax_exclusive",
        "amount_total",
    )
    op.create_table(
        "tax_calculations",
        _tenant_id(),
        sa.Column("tax_calculation_id", sa.Text(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("amount_subtotal", sa.BigInteger(), nullable=False),
        sa.Column("amount_tax", sa.BigInteger(), nullable=False),
        sa.Column("amount_tax_inclusive", sa.BigInteger(), nullable=True),
        sa.Column("amount_tax_exclusive", sa.BigInteger(), nullable=True),
        sa.Column("amount_total", sa.BigInteger(), nullable=False),
        sa.Column(
            "tax_by_rate", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("line_items", postgresql.JSONB(), nullable=True),
        sa.Column("expires_at", TSTZ, nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "tax_calculation_id", name="pk_tax_calculations"),
        _tenant_fk("tax_calculations"),
        *_money_checks("tax_calculations", *amounts),
    )
    for table, (id_column, entity_type) in ENTITY_TABLES.items():
        secure_entity_table(table, id_column, entity_type)
    # The existing tables' new columns (nullable: a row before tax has none).
    for table, columns in COLUMNS.items():
        for name, kind, _ in columns:
            op.add_column(table, sa.Column(name, kind, nullable=True))
            if name in MONEY:
                op.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_{name}_non_negative "
                    f"CHECK ({name} >= 0)"
                )
    # Writes wait from here to the commit: what is listed and filled is all there is.
    op.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
    list_for_backfill(kind for _, kind in ENTITY_TABLES.values())
    # A row's new columns from the event its last_event_id names (its version's event),
    # where that event carries them (of the right JSON type: else left empty).
    for table, columns in COLUMNS.items():
        id_column = table.removesuffix("s") + "_id"
        entity_type = table.removesuffix("s")
        sets = ", ".join(f"{name} = {_taken(name, j)}" for name, _, j in columns)
        carries = " OR ".join(f"e.data ? '{name}'" for name, _, _ in columns)
        op.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_forward_only")
        per_tenant(
            f"""UPDATE {table} r SET {sets} FROM events e
                WHERE r.tenant_id = t AND e.tenant_id = t AND e.event_id = r.last_event_id
                  AND e.entity_type = '{entity_type}' AND e.entity_id = r.{id_column}
                  AND e.entity_version = r.version AND ({carries});"""  # noqa: S608 - constants
        )
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_forward_only")


def downgrade() -> None:
    # As 0013's and 0014's: rows the sink or the backfill wrote have audit entries, and
    # entries written since hold the new columns; dropped, `audit verify` would find
    # those rows unlike their entries for good. The release before runs on 0015: roll
    # the workers back, not the schema.
    held = []
    for table in (*ENTITY_TABLES, *COLUMNS):
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
        where = (
            ""
            if table in ENTITY_TABLES
            else " WHERE " + " OR ".join(f"{n} IS NOT NULL" for n, _, _ in COLUMNS[table])
        )
        if op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table}{where})")).scalar():  # noqa: S608
            held.append(table)
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0015 down: {', '.join(held)} hold audited tax rows or columns; "
            "dropping them cannot be undone by upgrading again (the release before runs on "
            "0015: roll the workers back, not the schema)"
        )
    for table in COLUMNS:
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    # The tax events this revision listed, unlisted again, tenant by tenant.
    unlist_from_backfill(kind for _, kind in ENTITY_TABLES.values())
    for table, columns in COLUMNS.items():
        for name, _, _ in columns:
            op.drop_column(table, name)  # (its check goes with it)
    for table in ENTITY_TABLES:
        op.drop_table(table)  # (its trigger and policy go with it; the function is 0006's)
