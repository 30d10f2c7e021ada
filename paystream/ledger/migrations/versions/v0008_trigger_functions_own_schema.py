"""The ledger's trigger functions read the ledger's tables, never a session's own.

A function runs with the caller's search path, and PostgreSQL searches a session's
temporary schema first. The application role could create a temporary ``events`` table
holding a made-up event, and the entity rows' forward-only trigger (0006) then accepted
a rewrite of a payment "by" that event: amount changed, no event stored, no audit entry,
`audit verify` passing, the temporary table gone at commit (review finding). Each trigger
function now resolves names in ``public`` (where 0001 made the tables; 0002 grants there)
with the temporary schema last.

Defence in depth: the database no longer lets every role create temporary tables
(``TEMPORARY`` revoked from PUBLIC and from the application role, which needs none).
Revoking takes the database's owner; a migration run by another role leaves the
privilege as it was, with PostgreSQL's warning, and the functions are safe regardless.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paystream.ledger.migrations.versions.v0002_security import APP_ROLE

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = (
    "ledger_entity_forward_only()",
    "audit_log_refuse_change()",
    "audit_heads_refuse_rewind()",
)
SEARCH_PATH = "pg_catalog, public, pg_temp"


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET search_path = {SEARCH_PATH}")
    op.execute(
        "DO $$ BEGIN "
        "EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); "
        f"EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM {APP_ROLE}', current_database()); "
        "END $$"
    )


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN "
        "EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); "
        "END $$"
    )
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET search_path")
