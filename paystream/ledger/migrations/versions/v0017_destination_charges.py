"""Payments get the columns of a destination charge.

A payment made on behalf of one of the tenant's connected accounts (Stripe Connect's
destination charges: payment.create with ``connected_account_id`` and
``application_fee_amount``) names that account and the fee its platform keeps (at most
the amount captured). Both columns are nullable: a payment without a destination has
neither. ``payments`` keeps its row-level security (forced, the tenant policy), its
grants (never DELETE) and 0006's forward-only trigger: columns added to a secured table
are secured with it. The fee is money: a whole number of minor units, never negative.

The release before stored no destination charge (it had none): no row or event carries
these fields, so nothing is filled from ``events`` and nothing is listed for
``paystream ledger backfill``.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "payments"
COLUMNS = (("connected_account_id", sa.Text()), ("application_fee_amount", sa.BigInteger()))


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column(TABLE, sa.Column(name, kind, nullable=True))
    op.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT ck_{TABLE}_application_fee_amount_non_negative "
        "CHECK (application_fee_amount >= 0)"
    )


def downgrade() -> None:
    # As 0015's: rows written since hold audit entries with these columns; dropped,
    # `audit verify` would find those rows unlike their entries for good. The release
    # before runs on 0017 (it writes neither column): roll the workers back, not the schema.
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    where = " OR ".join(f"{name} IS NOT NULL" for name, _ in COLUMNS)
    held_sql = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE {where})"  # noqa: S608 - constants
    held = op.get_bind().execute(sa.text(held_sql)).scalar()
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0017 down: {TABLE} hold audited destination charges; dropping their "
            "columns cannot be undone by upgrading again (the release before runs on 0017: "
            "roll the workers back, not the schema)"
        )
    for name, _ in COLUMNS:
        op.drop_column(TABLE, name)  # (its check goes with it)
