"""Keyed audit chain, audit heads that only move forward, no deletes of money rows.

* ``audit_log.key_id``: the master key whose derived MAC key made the row's hash (see
  ledger/audit.py). A plain hash let whoever can write the tables rewrite a row and
  recompute the chain after it; the key never reaches the database.
* ``audit_legacy``: per tenant, where its chain stood when this revision ran (seq and
  hash). Unkeyed rows up to there are the older version's; any other is reported. Kept
  by the owner (written here; the application role may only read its own tenant's).
* ``audit_key_retirements``: per tenant and retired master key, the last seq written
  under it, recorded by ``paystream keys rotate`` (as the owner). A row under a retired
  key past that is reported: a leaked old key cannot extend the chain.
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

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
NO_DELETE = ("customers", "payment_methods", "payments", "refunds", "disputes")
TENANT_PREDICATE = "tenant_id = current_setting('app.current_tenant_id', true)"
OWNER_ONLY = ("audit_legacy", "audit_key_retirements")


def upgrade() -> None:
    # (IF NOT EXISTS: a downgrade keeps the column, see below.)
    op.execute("ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS key_id text")
    op.create_table(
        "audit_legacy",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_audit_legacy"),
    )
    op.create_table(
        "audit_key_retirements",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "retired_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key_id", name="pk_audit_key_retirements"),
    )
    # Where every chain stands now (before RLS holds the owner to one tenant at a time);
    # after a downgrade, rows the older code wrote meanwhile are taken in too.
    # (The owner is held to the tenant policy too, FORCE: lifted for this one read.)
    op.execute("ALTER TABLE audit_heads NO FORCE ROW LEVEL SECURITY")
    op.execute(
        "INSERT INTO audit_legacy (tenant_id, seq, hash) "
        "SELECT tenant_id, seq, hash FROM audit_heads WHERE seq > 0"
    )
    op.execute("ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY")
    for table in OWNER_ONLY:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
        )
        op.execute(f"GRANT SELECT ON {table} TO {APP_ROLE}")
    # `keys rotate` records retirements across tenants as the owner (by name, as 0003).
    op.execute(
        """
        DO $$ BEGIN
          EXECUTE format(
            'CREATE POLICY owner_records_retirements ON audit_key_retirements TO %I '
            'USING (true) WITH CHECK (true)',
            (SELECT tableowner FROM pg_tables
              WHERE schemaname = current_schema() AND tablename = 'audit_key_retirements'));
        END $$
        """
    )
    # ... and reads where each chain stands then (the heads, and nothing else across
    # tenants; FORCE holds the owner to the tenant policy otherwise).
    op.execute(
        """
        DO $$ BEGIN
          EXECUTE format(
            'CREATE POLICY owner_reads_heads ON audit_heads FOR SELECT TO %I USING (true)',
            (SELECT tableowner FROM pg_tables
              WHERE schemaname = current_schema() AND tablename = 'audit_heads'));
        END $$
        """
    )
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
    op.execute("DROP POLICY owner_reads_heads ON audit_heads")
    op.execute("DROP TRIGGER audit_heads_no_truncate ON audit_heads")
    op.execute("DROP TRIGGER audit_heads_forward_only ON audit_heads")
    op.execute("DROP FUNCTION audit_heads_refuse_rewind()")
    for table in NO_DELETE:
        op.execute(f"GRANT DELETE ON {table} TO {APP_ROLE}")
    op.drop_table("audit_key_retirements")
    op.drop_table("audit_legacy")
    # ``key_id`` stays: without it no row written since this revision could ever be
    # verified again (each would be checked as an unkeyed hash). The older code ignores
    # it; the unkeyed rows it writes are taken into ``audit_legacy`` on the way back up.
