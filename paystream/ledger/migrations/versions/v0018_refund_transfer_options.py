"""Refunds get a destination charge's refund options.

A refund of a destination charge (refund.create with ``reverse_transfer`` and
``refund_application_fee``) records whether it took the refunded share back from the
connected account's transfer and gave the application fee back (review h79r_a L4: a
reconciliation of the platform's fees could not tell). Both columns are nullable: a
refund that named neither has neither. ``refunds`` keeps its row-level security (forced,
the tenant policy), its grants (never DELETE) and 0006's forward-only trigger: columns
added to a secured table are secured with it.

The release before stored no refund option (it kept none): no row or event carries
these fields, so nothing is filled from ``events`` and nothing is listed for
``paystream ledger backfill``.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "refunds"
COLUMNS = (("reverse_transfer", sa.Boolean()), ("refund_application_fee", sa.Boolean()))


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column(TABLE, sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    # As 0017's: rows written since hold audit entries with these columns; dropped,
    # `audit verify` would find those rows unlike their entries for good. The release
    # before runs on 0018 (it writes neither column): roll the workers back, not the schema.
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    where = " OR ".join(f"{name} IS NOT NULL" for name, _ in COLUMNS)
    held_sql = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE {where})"  # noqa: S608 - constants
    held = op.get_bind().execute(sa.text(held_sql)).scalar()
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0018 down: {TABLE} hold audited refund options; dropping their "
            "columns cannot be undone by upgrading again (the release before runs on 0018: "
            "roll the workers back, not the schema)"
        )
    for name, _ in COLUMNS:
        op.drop_column(TABLE, name)
