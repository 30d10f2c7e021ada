"""Subscriptions and invoices get entity tables, as payments, refunds and disputes have.

Their outcomes (``subscription.*``, an invoice in ``related``) were stored in ``events``
only: no row of their latest state, no audit entry, nothing for ``audit verify`` to
check. ``subscriptions`` and ``invoices`` are made as 0001 made the entity tables and
secured as the later revisions secured those: row-level security forced, with the tenant
policy (0002); the application role's SELECT, INSERT and UPDATE, never DELETE (0002,
0004); 0006's forward-only trigger (its function, with 0007's SQLSTATE and 0008's search
path, serves any entity table through its arguments).

The events of the two types stored before this revision ran are listed in
``entity_backfill`` (written here, as the owner; the application role reads its
tenant's rows and writes none): their rows do not exist yet, and building them takes
audit entries, keyed under the master key the database never sees. ``paystream ledger
backfill`` does that with the keyring, for the listed events alone: an events row the
application role inserts later is never listed, so the backfill cannot make a forged
event count. Until it runs, ``audit verify`` names the listed events as waiting for it.

It locks ``events`` against writes while it lists them (one read of the table): the
sink's writes wait for its commit meanwhile, reads do not.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from paystream.ledger.migrations.versions.v0001_schema import (
    TSTZ,
    _entity_columns,
    _index,
    _money_checks,
    _tenant_fk,
    _tenant_id,
)
from paystream.ledger.migrations.versions.v0002_security import APP_ROLE, TENANT_PREDICATE

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table → (its id column, its events' entity type): 0006's trigger arguments (no column
# of either is emptied by an erasure).
ENTITY_TABLES: dict[str, tuple[str, str]] = {
    "subscriptions": ("subscription_id", "subscription"),
    "invoices": ("invoice_id", "invoice"),
}
# As 0002 granted the entity tables, less 0004's DELETE.
GRANTS = "SELECT, INSERT, UPDATE"
BACKFILL = "entity_backfill"


def _secure(table: str, privileges: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} "
        f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
    )
    op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        _tenant_id(),
        sa.Column("subscription_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("payment_method_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=True),
        sa.Column("interval_count", sa.BigInteger(), nullable=True),
        sa.Column("trial_end", TSTZ, nullable=True),
        sa.Column("current_period_start", TSTZ, nullable=True),
        sa.Column("current_period_end", TSTZ, nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("canceled_at", TSTZ, nullable=True),
        sa.Column("latest_invoice_id", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_subscription_id", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "subscription_id", name="pk_subscriptions"),
        _tenant_fk("subscriptions"),
        *_money_checks("subscriptions", "amount"),
        sa.CheckConstraint(
            "interval_count IS NULL OR interval_count >= 1",
            name="ck_subscriptions_interval_count_positive",
        ),
    )
    _index("subscriptions", "tenant_id", "customer_id")
    _index("subscriptions", "tenant_id", "status", "updated_at")
    _index("subscriptions", "tenant_id", "provider", "provider_subscription_id")
    op.create_table(
        "invoices",
        _tenant_id(),
        sa.Column("invoice_id", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("period_start", TSTZ, nullable=True),
        sa.Column("period_end", TSTZ, nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_invoice_id", sa.Text(), nullable=True),
        sa.Column("provider_payment_id", sa.Text(), nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "invoice_id", name="pk_invoices"),
        _tenant_fk("invoices"),
        *_money_checks("invoices", "amount"),
    )
    _index("invoices", "tenant_id", "subscription_id")
    _index("invoices", "tenant_id", "customer_id")
    for table, (id_column, entity_type) in ENTITY_TABLES.items():
        _secure(table, GRANTS)
        op.execute(
            f"CREATE TRIGGER {table}_forward_only BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION "
            f"ledger_entity_forward_only('{id_column}', '{entity_type}')"
        )
    op.create_table(
        BACKFILL,
        _tenant_id(),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name=f"pk_{BACKFILL}"),
        _tenant_fk(BACKFILL),
    )
    # The events already stored, read as the owner before the table is secured: tenant
    # by tenant, under the tenant policy (no ALTER TABLE events: its ACCESS
    # EXCLUSIVE lock would stop every read of events until the commit). Every tenant
    # the sink wrote has an audit head (it locks that first), which the owner reads.
    op.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
    kinds = ", ".join(f"'{kind}'" for _, kind in ENTITY_TABLES.values())
    op.execute(
        f"""
        DO $$ DECLARE t text; BEGIN
          FOR t IN SELECT tenant_id FROM audit_heads ORDER BY tenant_id LOOP
            PERFORM set_config('app.current_tenant_id', t, true);
            INSERT INTO {BACKFILL} (tenant_id, event_id)
              SELECT tenant_id, event_id FROM events
              WHERE tenant_id = t AND entity_type IN ({kinds});
          END LOOP;
          PERFORM set_config('app.current_tenant_id', '', true);
        END $$
        """  # noqa: S608 - constants
    )
    _secure(BACKFILL, "SELECT")
    # The owner reads which tenants have events listed (`paystream ledger backfill` with
    # no --tenant), and nothing else across tenants (by name, as 0003 and 0004).
    op.execute(
        """
        DO $$ BEGIN
          EXECUTE format(
            'CREATE POLICY owner_reads_backfill ON entity_backfill FOR SELECT TO %I '
            'USING (true)',
            (SELECT tableowner FROM pg_tables
              WHERE schemaname = current_schema() AND tablename = 'entity_backfill'));
        END $$
        """
    )


def downgrade() -> None:
    # Rows the sink or the backfill wrote have audit entries: dropped, the upgrade back
    # would list every stored event again (the app role's forged ones with them) and
    # rebuild the rows under entries whose ``before`` no longer links to the chain (audit
    # verify red for good). The release before runs on 0013: roll the workers back only.
    for table in ENTITY_TABLES:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")  # (the owner's view)
    held = [
        table
        for table in ENTITY_TABLES
        if op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar()  # noqa: S608
    ]
    if held and context.config.attributes.get("target") != "base":  # (base: all goes)
        raise RuntimeError(
            f"migration 0013 down: {', '.join(held)} hold audited rows; dropping them "
            "cannot be undone by upgrading again (the release before runs on 0013: roll "
            "the workers back, not the schema)"
        )
    op.drop_table(BACKFILL)
    for table in ENTITY_TABLES:
        op.drop_table(table)  # (its trigger and policy go with it; the function is 0006's)
