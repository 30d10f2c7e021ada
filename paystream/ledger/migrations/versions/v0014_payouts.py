"""Payouts get an entity table, as subscriptions and invoices did in 0013.

Their outcomes (``payout.*``) were stored in ``events`` only: no row of their latest
state, no audit entry, nothing for ``audit verify`` to check. ``payouts`` is made as 0001
made the entity tables and secured as 0013 secured its two: row-level security forced,
with the tenant policy (0002); the application role's SELECT, INSERT and UPDATE, never
DELETE (0002, 0004); 0006's forward-only trigger (its function, with 0007's SQLSTATE and
0008's search path, serves any entity table through its arguments).

A payout is the tenant's own money sent to the tenant's own bank account: it names no
customer, so no column of it is personal data an erasure must reach, and it carries its
description, statement descriptor and metadata (the tenant's words about its payout) as
the payout record does. (A payment's or subscription's stay in its events: a customer's.)

The payout events stored before this revision ran are listed in 0013's
``entity_backfill`` (as the owner, tenant by tenant under the tenant policy, with
``events`` locked against writes while they are read, as 0013 did), and ``paystream
ledger backfill`` applies them with the keyring; until it runs, ``audit verify`` names
them as waiting for it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from paystream.ledger.migrations.entity_tables import (
    list_for_backfill,
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

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "payouts"
ID_COLUMN = "payout_id"
ENTITY_TYPE = "payout"


def upgrade() -> None:
    op.create_table(
        TABLE,
        _tenant_id(),
        sa.Column(ID_COLUMN, sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=True),
        sa.Column("arrival_date", TSTZ, nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("statement_descriptor", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_payout_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", ID_COLUMN, name=f"pk_{TABLE}"),
        _tenant_fk(TABLE),
        *_money_checks(TABLE, "amount"),
    )
    _index(TABLE, "tenant_id", "status", "updated_at")
    _index(TABLE, "tenant_id", "provider", "provider_payout_id")
    secure_entity_table(TABLE, ID_COLUMN, ENTITY_TYPE)
    # The payout events already stored, read as the owner tenant by tenant under the
    # tenant policy (as 0013: no ALTER TABLE events). Every tenant the sink wrote has an
    # audit head (it locks that first, payouts' events alone too), which the owner reads.
    # The tenant policy lets the owner insert the tenant's rows into entity_backfill.
    op.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
    list_for_backfill([ENTITY_TYPE])


def downgrade() -> None:
    # As 0013's: rows the sink or the backfill wrote have audit entries; dropped, the
    # upgrade back would list every stored payout event again (the app role's forged ones
    # with them) and rebuild the rows under entries whose ``before`` no longer links to
    # the chain (audit verify red for good). The release before runs on 0014: roll the
    # workers back only.
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    held = op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")).scalar()  # noqa: S608
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0014 down: {TABLE} hold audited rows; dropping them cannot be "
            "undone by upgrading again (the release before runs on 0014: roll the workers "
            "back, not the schema)"
        )
    # The payout events this revision listed, unlisted again (0013's backfill knows no
    # payout table), tenant by tenant as they were listed.
    unlist_from_backfill([ENTITY_TYPE])
    op.drop_table(TABLE)  # (its trigger and policy go with it; the function is 0006's)
