"""The ledger records which master keys it has seen, so a worker on the wrong key cannot
begin a new tenant's audit chain.

A worker refuses to extend a chain whose newest row is under a master key its keyring
lacks (review h67l), but a tenant with no chain yet (its first ledger write) gave it
nothing to check: a worker started with another environment's or a mistyped
``PAYSTREAM_MASTER_KEY`` began the tenant's chain, and wrapped its customers' data keys,
under that key, and nothing said so until ``audit verify``. Row-level security keeps the
application role from looking at other tenants' rows to learn which keys the ledger uses,
so the ledger now records them:

* ``master_keys_seen``: per tenant, each master key id (never key material) its audit
  rows are keyed under or its data keys are wrapped under, and the marker tenant ``*``
  for the key ``paystream keys rotate`` made current. Written by the owner only: by a
  trigger on ``audit_log`` inserts and ``data_keys`` inserts and re-wraps (SECURITY
  DEFINER, the owner's, with 0008's fixed search path), by ``keys rotate``, and here,
  from the rows already there. The application role may read its tenant's rows (as
  ``audit_key_retirements``), and write none.
* ``ledger_master_key_known(tenant, key_ids, may_be_first)``: true when the ledger has
  recorded one of ``key_ids`` (of another tenant, or ``keys rotate``'s record), or, with
  ``may_be_first`` (a chain begun), no key of any other tenant (a fresh ledger: the
  first key is taken). SECURITY DEFINER (it reads every tenant's rows, and answers only
  that), executable by the application role alone. The writer asks it with its keyring's
  key ids (current and retired) before a tenant's first audit row, and past a chain end
  under a key ``keys rotate`` retired (review h71i; not a first key then, review h71k: a
  one-tenant ledger rotated before 0012 records no other tenant's key), and refuses as it
  does a chain under a key it lacks (``config``: the sink waits for the operator).

It locks ``data_keys``, then ``audit_log`` (the writers' order: review h71i), before
anything else, so no row is written while it creates the triggers and reads
``audit_log`` once (a sequential scan: its indexes lead with the tenant); the ledger's
writes, and reads of ``audit_log``, wait for its commit meanwhile.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paystream.ledger.migrations.versions.v0002_security import APP_ROLE, TENANT_PREDICATE
from paystream.ledger.migrations.versions.v0008_trigger_functions_own_schema import SEARCH_PATH

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "master_keys_seen"

_RECORD = """
CREATE FUNCTION master_keys_seen_record() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
  k text;
BEGIN
  IF TG_TABLE_NAME = 'audit_log' THEN
    k := NEW.key_id;
  ELSE
    k := NEW.master_key_id;
  END IF;
  IF k IS NOT NULL AND NOT EXISTS (
       SELECT 1 FROM master_keys_seen WHERE tenant_id = NEW.tenant_id AND key_id = k
     ) THEN
    INSERT INTO master_keys_seen (tenant_id, key_id) VALUES (NEW.tenant_id, k)
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END $$
"""
# Other tenants' rows only: the tenant's own (its data keys, inserted in the same
# transaction before its first audit row) cannot vouch for the key its chain begins under.
_KNOWN = """
CREATE FUNCTION ledger_master_key_known(tenant text, key_ids text[], may_be_first boolean)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
  SELECT (may_be_first AND NOT EXISTS (SELECT 1 FROM master_keys_seen WHERE tenant_id <> tenant))
      OR EXISTS (
        SELECT 1 FROM master_keys_seen WHERE tenant_id <> tenant AND key_id = ANY (key_ids)
      )
$$
"""
assert f"search_path = {SEARCH_PATH} " in _RECORD  # (0008's, as the other functions have)
assert f"search_path = {SEARCH_PATH} " in _KNOWN
KNOWN_SIGNATURE = "ledger_master_key_known(text, text[], boolean)"
_TRIGGERS = {
    "audit_log": "AFTER INSERT ON audit_log",
    "data_keys": "AFTER INSERT OR UPDATE OF master_key_id ON data_keys",
}


def upgrade() -> None:
    # In the writers' order (a new customer's data key, then its audit row), audit_log at
    # once in the mode the backfill takes: a write in flight finishes first, rather than
    # deadlocking with the triggers' creation (review h71i).
    op.execute("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE")
    op.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
    op.execute(
        f"CREATE TABLE {TABLE} ("
        "tenant_id varchar(64) NOT NULL, key_id text NOT NULL, "
        "first_seen_at timestamptz NOT NULL DEFAULT now(), "
        f"CONSTRAINT pk_{TABLE} PRIMARY KEY (tenant_id, key_id))"
    )
    op.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {TABLE} "
        f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
    )
    # The owner's (by name, as 0003 and 0004): its trigger and function read and write
    # every tenant's rows, and `keys rotate` records the key it made current.
    op.execute(
        """
        DO $$ BEGIN
          EXECUTE format(
            'CREATE POLICY owner_records_master_keys ON master_keys_seen TO %I '
            'USING (true) WITH CHECK (true)',
            (SELECT tableowner FROM pg_tables
              WHERE schemaname = current_schema() AND tablename = 'master_keys_seen'));
        END $$
        """
    )
    op.execute(f"GRANT SELECT ON {TABLE} TO {APP_ROLE}")
    op.execute(_RECORD)
    op.execute("REVOKE ALL ON FUNCTION master_keys_seen_record() FROM PUBLIC")
    for when in _TRIGGERS.values():
        op.execute(
            f"CREATE TRIGGER master_keys_seen {when} "
            "FOR EACH ROW EXECUTE FUNCTION master_keys_seen_record()"
        )
    op.execute(_KNOWN)
    op.execute(f"REVOKE ALL ON FUNCTION {KNOWN_SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {KNOWN_SIGNATURE} TO {APP_ROLE}")
    # What is there already (the owner is held to the tenant policy on audit_log: lifted
    # for this, as 0004 does; it reads data_keys under 0003's policy).
    op.execute("ALTER TABLE audit_log NO FORCE ROW LEVEL SECURITY")
    op.execute(
        "INSERT INTO master_keys_seen (tenant_id, key_id) "
        "SELECT DISTINCT tenant_id, key_id FROM audit_log WHERE key_id IS NOT NULL "
        "UNION SELECT DISTINCT tenant_id, master_key_id FROM data_keys "
        "ON CONFLICT DO NOTHING"
    )
    op.execute("ALTER TABLE audit_log FORCE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {KNOWN_SIGNATURE}")
    for table in _TRIGGERS:
        op.execute(f"DROP TRIGGER master_keys_seen ON {table}")
    op.execute("DROP FUNCTION master_keys_seen_record()")
    op.execute(f"DROP TABLE {TABLE}")
