"""A tenant's audit head names a row of its chain, and each row extends the chain.

0004's trigger stops the head moving back; forward it took any (seq, hash). The
application role, which moves the head, could set it to the largest bigint: every later
append of the tenant then overflowed, and the ledger sink, taking that for an event it
cannot store, dead-lettered the tenant's every outcome and skipped its erasures (review
finding). Nor could a head far ahead of its chain be told from one whose newest rows
were cut. Now a head (inserted or moved forward) must name an ``audit_log`` row of its
tenant, with that seq and hash: the writer appends its rows before it moves the head,
in the same transaction, so it always does; a head at 0 is a chain not begun.

The function reads ``audit_log`` as the caller, under its tenant's policy (a writer's
session is its tenant's), with the ledger's schema first (see 0008).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paystream.ledger.migrations.versions.v0008_trigger_functions_own_schema import SEARCH_PATH

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_FUNCTION = """
CREATE FUNCTION audit_heads_name_a_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
  IF NEW.seq <> 0 AND (TG_OP = 'INSERT' OR NEW.seq <> OLD.seq) AND NOT EXISTS (
       SELECT 1 FROM audit_log
        WHERE tenant_id = NEW.tenant_id AND seq = NEW.seq AND hash = NEW.hash
     ) THEN
    RAISE EXCEPTION 'audit_heads name their chain''s newest row: seq % refused',
      NEW.seq USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$
"""
# A row extends its tenant's chain: the first, or linked to the row before it. Else the
# app role, which inserts rows, planted one at the last bigint and moved the head onto
# it (review finding). The writer inserts a batch's rows in order (in one statement when
# this was written; executemany calls since 0010's time); a row trigger's query sees the
# rows inserted before it, in the statement as in the transaction.
_LINKED = """
CREATE FUNCTION audit_log_linked() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
  IF NEW.seq <> 1 AND NOT EXISTS (
       SELECT 1 FROM audit_log
        WHERE tenant_id = NEW.tenant_id AND seq = NEW.seq - 1 AND hash = NEW.prev_hash
     ) THEN
    RAISE EXCEPTION 'audit_log rows extend their chain: seq % refused', NEW.seq
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$
"""
assert f"search_path = {SEARCH_PATH} " in _FUNCTION  # (0008's, as its functions have)
assert f"search_path = {SEARCH_PATH} " in _LINKED


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER audit_heads_name_a_row BEFORE INSERT OR UPDATE ON audit_heads "
        "FOR EACH ROW EXECUTE FUNCTION audit_heads_name_a_row()"
    )
    op.execute(_LINKED)
    op.execute(
        "CREATE TRIGGER audit_log_linked BEFORE INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_linked()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_linked ON audit_log")
    op.execute("DROP FUNCTION audit_log_linked()")
    op.execute("DROP TRIGGER audit_heads_name_a_row ON audit_heads")
    op.execute("DROP FUNCTION audit_heads_name_a_row()")
