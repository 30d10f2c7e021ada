"""Keyed audit chain, audit heads that only move forward, no deletes of money rows.

* ``audit_log.key_id``: the master key whose derived MAC key made the row's hash (see
  ledger/audit.py). A plain hash let whoever can write the tables rewrite a row and
  recompute the chain after it; the key never reaches the database. Rows written before
  this revision keep no key id: vouched for by the first keyed row after them.
* ``audit_heads`` only moves forward: deleting the newest audit rows and moving the head
  back to the last one kept passed verification. Like the log's own triggers, this
  makes tampering a deliberate ``DISABLE TRIGGER`` by the owner.
* The application role loses DELETE on the entity tables: the writer only upserts and
  erasure updates; a compromised worker or injected statement could delete payments,
  unaudited. (``data_keys`` keeps it: erasure deletes a customer's key.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
NO_DELETE = ("customers", "payment_methods", "payments", "refunds", "disputes")


def upgrade() -> None:
    # (IF NOT EXISTS: a downgrade keeps the column, see below.)
    op.execute("ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS key_id text")
    for table in NO_DELETE:
        op.execute(f"REVOKE DELETE ON {table} FROM {APP_ROLE}")
    op.execute(
        """
        CREATE FUNCTION audit_heads_refuse_rewind() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP IN ('DELETE', 'TRUNCATE') OR NEW.tenant_id <> OLD.tenant_id
             OR NEW.seq < OLD.seq
             OR (NEW.seq = OLD.seq AND NEW.hash <> OLD.hash) THEN
            RAISE EXCEPTION 'audit_heads only move forward: % refused', TG_OP
              USING ERRCODE = 'insufficient_privilege';
          END IF;
          RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_heads_forward_only BEFORE UPDATE OR DELETE ON audit_heads "
        "FOR EACH ROW EXECUTE FUNCTION audit_heads_refuse_rewind()"
    )
    op.execute(
        "CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_refuse_rewind()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_heads_no_truncate ON audit_heads")
    op.execute("DROP TRIGGER audit_heads_forward_only ON audit_heads")
    op.execute("DROP FUNCTION audit_heads_refuse_rewind()")
    for table in NO_DELETE:
        op.execute(f"GRANT DELETE ON {table} TO {APP_ROLE}")
    # ``key_id`` stays: without it no row written since this revision could ever be
    # verified again (each would be checked as an unkeyed hash). The older code ignores
    # it; its rows are written unkeyed and verify as a tail to seal.
