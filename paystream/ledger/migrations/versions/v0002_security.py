"""Row-level security per tenant, the application role's grants, append-only audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
TENANT_PREDICATE = "tenant_id = current_setting('app.current_tenant_id', true)"

# Least privilege per table: history (events, audit_log) is insert-only, tenants and the
# audit heads are never deleted by the application.
GRANTS: dict[str, str] = {
    "tenants": "SELECT, INSERT, UPDATE",
    "data_keys": "SELECT, INSERT, UPDATE, DELETE",
    "customers": "SELECT, INSERT, UPDATE, DELETE",
    "payment_methods": "SELECT, INSERT, UPDATE, DELETE",
    "payments": "SELECT, INSERT, UPDATE, DELETE",
    "refunds": "SELECT, INSERT, UPDATE, DELETE",
    "disputes": "SELECT, INSERT, UPDATE, DELETE",
    "events": "SELECT, INSERT",
    "audit_log": "SELECT, INSERT",
    "audit_heads": "SELECT, INSERT, UPDATE",
}


def upgrade() -> None:
    # Roles are cluster-wide: create it once, NOLOGIN; `migrate.upgrade(app_password=...)`
    # turns on LOGIN with a password, so no secret is ever written into a migration.
    op.execute(
        """
        DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'paystream_app') THEN
            CREATE ROLE paystream_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
          END IF;
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    for table, privileges in GRANTS.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        # FORCE: the table owner obeys the policy too (only superusers/BYPASSRLS skip it).
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
        )
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
    # Privileges already keep the app from changing history; the trigger also stops the
    # owner and anything granted later, so tampering needs a deliberate DISABLE TRIGGER.
    op.execute(
        """
        CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
    op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    op.execute("DROP FUNCTION audit_log_refuse_change()")
    for table in GRANTS:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
        op.execute(f"DROP POLICY tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    # The role itself stays: it is cluster-wide and may hold grants in other databases.
