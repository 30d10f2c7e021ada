"""What the revisions after 0013 that give entities tables of their own (0014 payouts,
0015 tax) do alike: secure a new entity table as 0013 secured its two, and list the
events stored before them in 0013's ``entity_backfill`` (and unlist them on the way
down), tenant by tenant under the tenant policy.

0013 and the revisions before it keep their own statements: a revision already run
must emit the same thing ever after."""

from __future__ import annotations

from collections.abc import Iterable

from alembic import op

from paystream.ledger.migrations.versions.v0013_subscriptions_invoices import (
    BACKFILL,
    GRANTS,
    _secure,
)

# Every tenant the sink wrote has an audit head (it locks that first), which the owner reads.
TENANTS_WRITTEN = "SELECT tenant_id FROM audit_heads ORDER BY tenant_id"
TENANTS_LISTED = f"SELECT DISTINCT tenant_id FROM {BACKFILL} ORDER BY tenant_id"  # noqa: S608


def per_tenant(body: str, *, tenants: str = TENANTS_WRITTEN) -> None:
    """``body`` (SQL naming the tenant ``t``) for every tenant ``tenants`` selects, as
    the owner under the tenant policy (no ALTER TABLE: its ACCESS EXCLUSIVE lock would
    stop every read of the table until the commit)."""
    op.execute(
        f"""
        DO $$ DECLARE t text; BEGIN
          FOR t IN {tenants} LOOP
            PERFORM set_config('app.current_tenant_id', t, true);
            {body}
          END LOOP;
          PERFORM set_config('app.current_tenant_id', '', true);
        END $$
        """
    )


def secure_entity_table(table: str, id_column: str, entity_type: str) -> None:
    """``table`` secured as 0013 secured its entity tables: row-level security forced,
    with the tenant policy (0002); the application role's SELECT, INSERT and UPDATE,
    never DELETE (0002, 0004); 0006's forward-only trigger, whose function (with 0007's
    SQLSTATE and 0008's search path) serves any entity table through its arguments."""
    _secure(table, GRANTS)
    op.execute(
        f"CREATE TRIGGER {table}_forward_only BEFORE UPDATE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION "
        f"ledger_entity_forward_only('{id_column}', '{entity_type}')"
    )


def _kinds(entity_types: Iterable[str]) -> str:
    return ", ".join(f"'{kind}'" for kind in entity_types)


def list_for_backfill(entity_types: Iterable[str]) -> None:
    """The stored events of ``entity_types`` listed in ``entity_backfill`` for
    ``paystream ledger backfill`` (one listed already stays as it is). The caller locks
    ``events`` against writes first, so that what is listed is all there is."""
    per_tenant(
        f"""INSERT INTO {BACKFILL} (tenant_id, event_id)
              SELECT tenant_id, event_id FROM events
              WHERE tenant_id = t AND entity_type IN ({_kinds(entity_types)})
              ON CONFLICT DO NOTHING;"""  # noqa: S608 - constants
    )


def unlist_from_backfill(entity_types: Iterable[str]) -> None:
    """The events of ``entity_types`` ``list_for_backfill`` listed, unlisted again (a
    downgrade: the revision before knows no table of theirs), tenant by tenant as they
    were listed."""
    per_tenant(
        f"""DELETE FROM {BACKFILL} b USING events e
              WHERE b.tenant_id = t AND e.tenant_id = t AND e.event_id = b.event_id
                AND e.entity_type IN ({_kinds(entity_types)});""",  # noqa: S608 - constants
        tenants=TENANTS_LISTED,
    )
