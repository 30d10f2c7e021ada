"""Transfers get an entity table, as payouts did in 0014.

A transfer (Stripe Connect's separate charges and transfers: the platform's balance
moved to one of its connected accounts, ``transfer.create``, and back in parts,
``transfer.reverse``) was stored in ``events`` only: no row of its latest state, no
audit entry, nothing for ``audit verify`` to check. ``transfers`` is made and secured
as 0014 to 0016 made theirs: row-level security forced, with the tenant policy (0002);
the application role's SELECT, INSERT and UPDATE, never DELETE (0002, 0004); 0006's
forward-only trigger.

A transfer names no customer (the platform's money to an account it onboarded): no
column of it is personal data an erasure must reach; its description, transfer group
and metadata are the tenant's words about its own money, kept as the payout's are.

The release before stored transfer events (entity type ``transfer``, since transfers
came): those stored before this revision ran are listed in 0013's ``entity_backfill``
(tenant by tenant under the tenant policy, ``events`` locked against writes while they
are read, as 0014 did), and ``paystream ledger backfill`` applies them with the
keyring; until it runs, ``audit verify`` names them as waiting for it.

Revision ID: 0019
Revises: 0018
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
    _entity_columns,
    _index,
    _money_checks,
    _tenant_fk,
    _tenant_id,
)

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "transfers"
ID_COLUMN = "transfer_id"
ENTITY_TYPE = "transfer"


def upgrade() -> None:
    op.create_table(
        TABLE,
        _tenant_id(),
        sa.Column(ID_COLUMN, sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("amount_reversed", sa.BigInteger(), nullable=True),
        sa.Column("connected_account_id", sa.Text(), nullable=True),
        sa.Column("payment_id", sa.Text(), nullable=True),
        sa.Column("transfer_group", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_transfer_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", ID_COLUMN, name=f"pk_{TABLE}"),
        _tenant_fk(TABLE),
        *_money_checks(TABLE, "amount", "amount_reversed"),
    )
    _index(TABLE, "tenant_id", "status", "updated_at")
    _index(TABLE, "tenant_id", "provider", "provider_transfer_id")
    _index(TABLE, "tenant_id", "connected_account_id")
    secure_entity_table(TABLE, ID_COLUMN, ENTITY_TYPE)
    # The transfer events already stored, listed for the backfill (as 0014 listed payouts').
    op.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
    list_for_backfill([ENTITY_TYPE])


def downgrade() -> None:
    # As 0014's: rows the sink or the backfill wrote have audit entries; dropped, the
    # upgrade back would list every stored transfer event again and rebuild the rows under
    # entries whose ``before`` no longer links to the chain (audit verify red for good).
    # The release before runs on 0019 (it stores transfers as events alone): roll the
    # workers back, not the schema.
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    held = op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")).scalar()  # noqa: S608
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0019 down: {TABLE} hold audited rows; dropping them cannot be "
            "undone by upgrading again (the release before runs on 0019: roll the workers "
            "back, not the schema)"
        )
    # The transfer events this revision listed, unlisted again (the release before knows
    # no transfers table), tenant by tenant as they were listed.
    unlist_from_backfill([ENTITY_TYPE])
    op.drop_table(TABLE)  # (its trigger and policy go with it; the function is 0006's)
