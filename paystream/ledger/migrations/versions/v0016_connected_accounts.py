"""Connected accounts get an entity table, made with the entity itself.

A connected account (Stripe Connect: a merchant's account under the tenant's platform
account) is made by ``connected_account.create`` and read back by
``connected_account.refresh``: its outcomes' latest state is kept in
``connected_accounts``, made and secured as 0013, 0014 and 0015 made theirs: row-level
security forced, with the tenant policy (0002); the application role's SELECT, INSERT
and UPDATE, never DELETE (0002, 0004); 0006's forward-only trigger.

No row of it holds personal data: the account's email is sent to the provider only,
and its onboarding links (bearer URLs) are never stored anywhere, ``events`` included
(their outcome names no entity). The release before stored no connected account event
(it had none), so nothing is listed for ``paystream ledger backfill``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from paystream.ledger.migrations.entity_tables import secure_entity_table
from paystream.ledger.migrations.versions.v0001_schema import (
    _entity_columns,
    _index,
    _tenant_fk,
    _tenant_id,
)

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "connected_accounts"
ID_COLUMN = "connected_account_id"
ENTITY_TYPE = "connected_account"


def upgrade() -> None:
    op.create_table(
        TABLE,
        _tenant_id(),
        sa.Column(ID_COLUMN, sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("business_type", sa.Text(), nullable=True),
        sa.Column("capabilities", postgresql.JSONB(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_account_id", sa.Text(), nullable=True),
        sa.Column("charges_enabled", sa.Boolean(), nullable=True),
        sa.Column("payouts_enabled", sa.Boolean(), nullable=True),
        sa.Column("details_submitted", sa.Boolean(), nullable=True),
        sa.Column("currently_due", postgresql.JSONB(), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", ID_COLUMN, name=f"pk_{TABLE}"),
        _tenant_fk(TABLE),
    )
    _index(TABLE, "tenant_id", "status", "updated_at")
    _index(TABLE, "tenant_id", "provider", "provider_account_id")
    secure_entity_table(TABLE, ID_COLUMN, ENTITY_TYPE)


def downgrade() -> None:
    # As 0014's: rows the sink wrote have audit entries; dropped, `audit verify` would find
    # their entries without rows for good. The release before runs on 0016 (it writes no
    # connected account): roll the workers back, not the schema.
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    held = op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")).scalar()  # noqa: S608
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0016 down: {TABLE} hold audited rows; dropping them cannot be "
            "undone by upgrading again (the release before runs on 0016: roll the workers "
            "back, not the schema)"
        )
    op.drop_table(TABLE)  # (its trigger and policy go with it; the function is 0006's)
