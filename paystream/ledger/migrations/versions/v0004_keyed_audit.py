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
    # The audit columns and tables survive a downgrade (see below): IF NOT EXISTS.
    op.execute("ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS key_id text")
    fresh = not _exists("audit_legacy")
    op.execute(
        "CREATE TABLE IF NOT EXISTS audit_legacy ("
        "tenant_id varchar(64) NOT NULL, from_seq bigint NOT NULL, seq bigint NOT NULL, "
        "hash bytea NOT NULL, CONSTRAINT pk_audit_legacy PRIMARY KEY (tenant_id, from_seq))"
    )
    op.execute(
        "CREATE TABLE IF NOT EXISTS audit_key_retirements ("
        "tenant_id varchar(64) NOT NULL, key_id text NOT NULL, through_seq bigint NOT NULL, "
        "retired_at timestamptz NOT NULL DEFAULT now(), "
        "CONSTRAINT pk_audit_key_retirements PRIMARY KEY (tenant_id, key_id))"
    )
    # Unkeyed rows at the end of each chain (all of it at the first upgrade; after a
    # downgrade, what the older version wrote meanwhile) are the older version's: their
    # range is recorded, from after the last keyed row or recorded range to the last row
    # (not the head: a head moved on ahead of its rows covers nothing). Unkeyed rows
    # before a keyed one were not written by it (it never ran between them) and stay
    # reported. The owner is held to the tenant policy too (FORCE): lifted for this.
    owned = ("audit_heads", "audit_log", "audit_legacy")
    for table in owned:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(
        """
        INSERT INTO audit_legacy (tenant_id, from_seq, seq, hash)
        SELECT l.tenant_id,
               greatest(coalesce(k.last_keyed, 0), coalesce(r.last_recorded, 0)) + 1,
               l.seq, l.hash
        FROM (SELECT DISTINCT ON (tenant_id) tenant_id, seq, hash FROM audit_log
              ORDER BY tenant_id, seq DESC) l
        LEFT JOIN (SELECT tenant_id, max(seq) AS last_keyed FROM audit_log
                   WHERE key_id IS NOT NULL GROUP BY tenant_id) k USING (tenant_id)
        LEFT JOIN (SELECT tenant_id, max(seq) AS last_recorded FROM audit_legacy
                   GROUP BY tenant_id) r USING (tenant_id)
        WHERE l.seq > greatest(coalesce(k.last_keyed, 0), coalesce(r.last_recorded, 0))
        """
    )
    for table in owned:
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    if not fresh:
        return _restore_rest()
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
    _restore_rest()


def _exists(table: str) -> bool:
    bind = op.get_bind()
    return bool(bind.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar())


def _restore_rest() -> None:
    """What a downgrade removes, put back."""
    # The owner reads where each chain stands (`keys rotate` records retirements from
    # the heads), and nothing else across tenants; FORCE holds it to the policy otherwise.
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
    # ``key_id`` and the two record tables stay: without them no row written since this
    # revision could ever be verified again, and on the way back up a forged unkeyed row
    # would pass for the older version's. The older code ignores them; the unkeyed rows
    # it writes at the chains' ends are recorded on the way back up.
