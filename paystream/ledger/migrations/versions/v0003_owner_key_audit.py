"""The schema owner may read every tenant's data-key headers (which master key wraps them).

`paystream keys rotate` (is anything left under a retired master key?) and `paystream
doctor` (is every wrapping key in the keyring?) ask that as the owner. FORCE ROW LEVEL
SECURITY holds the owner to the tenant policy too, so an owner that is not a superuser
(as on managed PostgreSQL) saw no rows at all: rotation reported nothing left and exited
0, and the operator dropped a key the ledger still needed. SELECT only, on data_keys
only; the keys stay wrapped (opening one needs the master key, which the database never
sees).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "owner_key_audit"


def upgrade() -> None:
    # To the table's owner by name (whoever ran the migrations), not to PUBLIC.
    op.execute(
        """
        DO $$ BEGIN
          EXECUTE format(
            'CREATE POLICY owner_key_audit ON data_keys FOR SELECT TO %I USING (true)',
            (SELECT tableowner FROM pg_tables
              WHERE schemaname = current_schema() AND tablename = 'data_keys'));
        END $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP POLICY {POLICY} ON data_keys")
