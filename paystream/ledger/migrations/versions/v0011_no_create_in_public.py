"""Nobody but the owner creates objects in the ledger's schema (review h67l).

PostgreSQL 14 and older grant CREATE on schema ``public`` to PUBLIC (clusters upgraded
from them keep it). A function or operator the application role made there, a closer
match than pg_catalog's, ran inside the forward-only trigger and, with the owner's
rights, in the owner's own sessions (`paystream migrate`, `keys rotate`, `doctor`).
Revoking takes the schema's owner; run by another role, PostgreSQL only warns (and
`assert_rls_enforced` refuses an application role that can still create there).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paystream.ledger.migrations.versions.v0002_security import APP_ROLE

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"REVOKE CREATE ON SCHEMA public FROM {APP_ROLE}")


def downgrade() -> None:
    pass  # (what the cluster granted before is not known: left revoked)
