"""Ledger tables: tenants, keys, entities, events and the audit log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.DateTime(timezone=True)


def _tenant_id() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(64), nullable=False)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.tenant_id"],
        name=f"fk_{table}_tenant_id_tenants",
        ondelete="RESTRICT",
    )


def _entity_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("last_event_id", sa.Text(), nullable=False),
        sa.Column("created_at", TSTZ, nullable=False),
        sa.Column("updated_at", TSTZ, nullable=False),
    ]


def _money_checks(table: str, *columns: str) -> list[sa.CheckConstraint]:
    checks = [sa.CheckConstraint(r"currency ~ '^[A-Z]{3}$'", name=f"ck_{table}_currency_iso4217")]
    checks += [
        sa.CheckConstraint(f"{c} >= 0", name=f"ck_{table}_{c}_non_negative") for c in columns
    ]
    return checks


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "tenants",
        _tenant_id(),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("created_at", TSTZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenants"),
        sa.CheckConstraint(
            r"tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="ck_tenants_tenant_id_format"
        ),
    )
    op.create_table(
        "data_keys",
        _tenant_id(),
        sa.Column("key_ref", sa.Text(), nullable=False),
        sa.Column("master_key_id", sa.Text(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TSTZ, server_default=sa.func.now(), nullable=False),
        sa.Column("rewrapped_at", TSTZ, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "key_ref", name="pk_data_keys"),
        _tenant_fk("data_keys"),
    )
    _index("data_keys", "tenant_id", "master_key_id")
    op.create_table(
        "customers",
        _tenant_id(),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("provider_customer_id", sa.Text(), nullable=True),
        sa.Column("email_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("name_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("address_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("erased_at", TSTZ, nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_customers"),
        _tenant_fk("customers"),
    )
    op.create_table(
        "payment_methods",
        _tenant_id(),
        sa.Column("payment_method_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_token", sa.Text(), nullable=True),
        sa.Column("brand", sa.Text(), nullable=True),
        sa.Column("last4", postgresql.CHAR(4), nullable=True),
        sa.Column("exp_month", sa.SmallInteger(), nullable=True),
        sa.Column("exp_year", sa.SmallInteger(), nullable=True),
        sa.Column("fingerprint", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "payment_method_id", name="pk_payment_methods"),
        _tenant_fk("payment_methods"),
        sa.CheckConstraint(
            r"last4 IS NULL OR last4 ~ '^[0-9]{4}$'", name="ck_payment_methods_last4_digits"
        ),
        sa.CheckConstraint(
            "exp_month IS NULL OR exp_month BETWEEN 1 AND 12", name="ck_payment_methods_exp_month"
        ),
        sa.CheckConstraint(
            "exp_year IS NULL OR exp_year BETWEEN 2000 AND 2200", name="ck_payment_methods_exp_year"
        ),
    )
    _index("payment_methods", "tenant_id", "customer_id")
    _index("payment_methods", "tenant_id", "fingerprint")
    op.create_table(
        "payments",
        _tenant_id(),
        sa.Column("payment_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("payment_method_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("amount_captured", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("provider_payment_id", sa.Text(), nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "payment_id", name="pk_payments"),
        _tenant_fk("payments"),
        *_money_checks("payments", "amount", "amount_captured", "amount_refunded"),
    )
    _index("payments", "tenant_id", "customer_id")
    _index("payments", "tenant_id", "status", "updated_at")
    _index("payments", "tenant_id", "provider", "provider_payment_id")
    op.create_table(
        "refunds",
        _tenant_id(),
        sa.Column("refund_id", sa.Text(), nullable=False),
        sa.Column("payment_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("provider_refund_id", sa.Text(), nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "refund_id", name="pk_refunds"),
        _tenant_fk("refunds"),
        *_money_checks("refunds", "amount"),
    )
    _index("refunds", "tenant_id", "payment_id")
    op.create_table(
        "disputes",
        _tenant_id(),
        sa.Column("dispute_id", sa.Text(), nullable=False),
        sa.Column("payment_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", postgresql.CHAR(3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("provider_dispute_id", sa.Text(), nullable=True),
        sa.Column("evidence_due_by", TSTZ, nullable=True),
        *_entity_columns(),
        sa.PrimaryKeyConstraint("tenant_id", "dispute_id", name="pk_disputes"),
        _tenant_fk("disputes"),
        *_money_checks("disputes", "amount"),
    )
    _index("disputes", "tenant_id", "payment_id")
    op.create_table(
        "events",
        _tenant_id(),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("causation_id", sa.Text(), nullable=True),
        sa.Column("entity_type", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("entity_version", sa.BigInteger(), nullable=False),
        sa.Column("time", TSTZ, nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("recorded_at", TSTZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name="pk_events"),
        _tenant_fk("events"),
    )
    _index("events", "tenant_id", "entity_type", "entity_id", "entity_version")
    _index("events", "tenant_id", "time")
    op.create_table(
        "audit_log",
        _tenant_id(),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("occurred_at", TSTZ, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("entity_type", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("before", postgresql.JSONB(), nullable=True),
        sa.Column("after", postgresql.JSONB(), nullable=True),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="pk_audit_log"),
        _tenant_fk("audit_log"),
        sa.CheckConstraint("seq >= 1", name="ck_audit_log_seq_positive"),
    )
    _index("audit_log", "tenant_id", "entity_type", "entity_id")
    op.create_table(
        "audit_heads",
        _tenant_id(),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_audit_heads"),
        _tenant_fk("audit_heads"),
    )


def downgrade() -> None:
    # Revision 0004's audit records survive its own downgrade (see there): gone with base.
    op.execute("DROP TABLE IF EXISTS audit_key_retirements, audit_legacy")
    for table in (
        "audit_heads",
        "audit_log",
        "events",
        "disputes",
        "refunds",
        "payments",
        "payment_methods",
        "customers",
        "data_keys",
        "tenants",
    ):
        op.drop_table(table)
