"""SQLAlchemy models of the ledger; the migrations create exactly this schema (a test checks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import CHAR, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "TENANT_TABLES",
    "AuditHead",
    "AuditKeyRetirement",
    "AuditLegacy",
    "AuditLog",
    "Base",
    "ConnectedAccount",
    "Customer",
    "DataKey",
    "Dispute",
    "EntityBackfill",
    "Event",
    "Invoice",
    "MasterKeySeen",
    "Payment",
    "PaymentMethod",
    "Payout",
    "Refund",
    "Subscription",
    "TaxCalculation",
    "TaxRate",
    "Tenant",
    "Transfer",
    "table_of",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names (migrations refer to them)."""

    metadata = MetaData(naming_convention=NAMING)


def table_of(model: type[Base]) -> Table:
    """The model's Core table (SQLAlchemy types ``__table__`` as any FromClause). Bulk
    writes go to it as executemany calls (``chunks.execute_in_chunks``), not through the
    ORM's per-row bookkeeping."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _tenant_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(["tenant_id"], ["tenants.tenant_id"], ondelete="RESTRICT")


Tenantid = String(64)
Tstz = DateTime(timezone=True)


class Tenant(Base):
    """A tenant known to the ledger (the registry of record is the tenants topic)."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(r"tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="tenant_id_format"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    name: Mapped[str] = mapped_column(Text, server_default="")
    status: Mapped[str] = mapped_column(Text, server_default="active")
    created_at: Mapped[datetime] = mapped_column(Tstz, server_default=func.now())


class DataKey(Base):
    """A wrapped data key: ``customer/<id>`` for a customer's PII (a tenant secret carries
    its own, in its sealed string in the registry)."""

    __tablename__ = "data_keys"
    __table_args__ = (
        _tenant_fk(),
        Index(None, "tenant_id", "master_key_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    key_ref: Mapped[str] = mapped_column(Text, primary_key=True)
    master_key_id: Mapped[str] = mapped_column(Text)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Tstz, server_default=func.now())
    rewrapped_at: Mapped[datetime | None] = mapped_column(Tstz)


class _Entity:
    """Columns every versioned entity row carries."""

    version: Mapped[int] = mapped_column(BigInteger)
    last_event_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Tstz)
    updated_at: Mapped[datetime] = mapped_column(Tstz)


def _money_checks(*columns: str) -> tuple[CheckConstraint, ...]:
    checks = [CheckConstraint(r"currency ~ '^[A-Z]{3}$'", name="currency_iso4217")]
    checks += [CheckConstraint(f"{c} >= 0", name=f"{c}_non_negative") for c in columns]
    return tuple(checks)


class Customer(_Entity, Base):
    """A customer; email, name and address are ciphertext under the customer's data key."""

    __tablename__ = "customers"
    __table_args__ = (_tenant_fk(),)

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    provider_customer_id: Mapped[str | None] = mapped_column(Text)
    email_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    name_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    address_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    erased_at: Mapped[datetime | None] = mapped_column(Tstz)


class PaymentMethod(_Entity, Base):
    """A tokenised payment method: provider token and display facts, never a card number."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        _tenant_fk(),
        CheckConstraint(r"last4 IS NULL OR last4 ~ '^[0-9]{4}$'", name="last4_digits"),
        CheckConstraint("exp_month IS NULL OR exp_month BETWEEN 1 AND 12", name="exp_month"),
        CheckConstraint("exp_year IS NULL OR exp_year BETWEEN 2000 AND 2200", name="exp_year"),
        Index(None, "tenant_id", "customer_id"),
        Index(None, "tenant_id", "fingerprint"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    payment_method_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    provider_token: Mapped[str | None] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(Text)
    last4: Mapped[str | None] = mapped_column(CHAR(4))
    exp_month: Mapped[int | None] = mapped_column(SmallInteger)
    exp_year: Mapped[int | None] = mapped_column(SmallInteger)
    fingerprint: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)


class Payment(_Entity, Base):
    """A payment's latest state; amounts in minor units."""

    __tablename__ = "payments"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks(
            "amount", "amount_captured", "amount_refunded", "amount_tax", "application_fee_amount"
        ),
        Index(None, "tenant_id", "customer_id"),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "provider", "provider_payment_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    payment_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(Text)
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    amount_captured: Mapped[int] = mapped_column(BigInteger, server_default="0")
    amount_refunded: Mapped[int] = mapped_column(BigInteger, server_default="0")
    provider: Mapped[str | None] = mapped_column(Text)
    provider_payment_id: Mapped[str | None] = mapped_column(Text)
    failure_code: Mapped[str | None] = mapped_column(Text)
    # Migration 0015: the tax contained in ``amount`` and the tax calculation it came
    # from, for a payment that named one (None: untaxed, or stored before tax).
    amount_tax: Mapped[int | None] = mapped_column(BigInteger)
    tax_calculation_id: Mapped[str | None] = mapped_column(Text)
    # Migration 0017: a destination charge's connected account and the application fee
    # its platform keeps (None: a payment without a destination).
    connected_account_id: Mapped[str | None] = mapped_column(Text)
    application_fee_amount: Mapped[int | None] = mapped_column(BigInteger)


class Refund(_Entity, Base):
    """A refund's latest state."""

    __tablename__ = "refunds"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount"),
        Index(None, "tenant_id", "payment_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    refund_id: Mapped[str] = mapped_column(Text, primary_key=True)
    payment_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    provider_refund_id: Mapped[str | None] = mapped_column(Text)
    failure_code: Mapped[str | None] = mapped_column(Text)
    # Migration 0018: a destination charge's refund options as sent (None: not named).
    reverse_transfer: Mapped[bool | None] = mapped_column(Boolean)
    refund_application_fee: Mapped[bool | None] = mapped_column(Boolean)


class Dispute(_Entity, Base):
    """A dispute's latest state."""

    __tablename__ = "disputes"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount"),
        Index(None, "tenant_id", "payment_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    dispute_id: Mapped[str] = mapped_column(Text, primary_key=True)
    payment_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    provider_dispute_id: Mapped[str | None] = mapped_column(Text)
    evidence_due_by: Mapped[datetime | None] = mapped_column(Tstz)


class Subscription(_Entity, Base):
    """A subscription's latest state (migration 0013): ``amount`` in minor units billed
    every ``interval_count`` ``interval`` s. Its description and metadata stay in its
    events, as a payment's do."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount"),
        CheckConstraint(
            "interval_count IS NULL OR interval_count >= 1", name="interval_count_positive"
        ),
        Index(None, "tenant_id", "customer_id"),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "provider", "provider_subscription_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(Text)
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    interval: Mapped[str | None] = mapped_column(Text)
    interval_count: Mapped[int | None] = mapped_column(BigInteger)
    trial_end: Mapped[datetime | None] = mapped_column(Tstz)
    current_period_start: Mapped[datetime | None] = mapped_column(Tstz)
    current_period_end: Mapped[datetime | None] = mapped_column(Tstz)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, server_default="false")
    canceled_at: Mapped[datetime | None] = mapped_column(Tstz)
    latest_invoice_id: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    provider_subscription_id: Mapped[str | None] = mapped_column(Text)
    # Migration 0015: its tax rates (paystream's ids), applied to every invoice.
    tax_rate_ids: Mapped[list[str] | None] = mapped_column(JSONB(none_as_null=True))


class Invoice(_Entity, Base):
    """One period's charge of a subscription (migration 0013); ``created_by`` is the
    command that first recorded it (each invoice counted once by it)."""

    __tablename__ = "invoices"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount", "subtotal", "tax"),
        Index(None, "tenant_id", "subscription_id"),
        Index(None, "tenant_id", "customer_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    invoice_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    period_start: Mapped[datetime | None] = mapped_column(Tstz)
    period_end: Mapped[datetime | None] = mapped_column(Tstz)
    provider: Mapped[str | None] = mapped_column(Text)
    provider_invoice_id: Mapped[str | None] = mapped_column(Text)
    provider_payment_id: Mapped[str | None] = mapped_column(Text)
    failure_code: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    # Migration 0015: a taxed subscription's invoice: ``amount`` (charged) is its total,
    # ``subtotal`` plus exclusive ``tax`` (None: untaxed, or stored before tax).
    subtotal: Mapped[int | None] = mapped_column(BigInteger)
    tax: Mapped[int | None] = mapped_column(BigInteger)


class Payout(_Entity, Base):
    """A payout's latest state (migration 0014): ``amount`` in minor units sent from the
    tenant's available balance at its provider to its own bank account. A payout is the
    tenant's, never a customer's: its description, statement descriptor and metadata
    (the tenant's words about its own money) are kept here, as the payout record carries
    them, and no erasure reaches them (none names a customer). ``created_by`` is the
    command that made it."""

    __tablename__ = "payouts"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount"),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "provider", "provider_payout_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    payout_id: Mapped[str] = mapped_column(Text, primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(Text)
    arrival_date: Mapped[datetime | None] = mapped_column(Tstz)
    failure_code: Mapped[str | None] = mapped_column(Text)
    failure_message: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    statement_descriptor: Mapped[str | None] = mapped_column(Text)
    # ("metadata" is the declarative base's own attribute: the column keeps the name.)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    provider: Mapped[str | None] = mapped_column(Text)
    provider_payout_id: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)


class TaxRate(_Entity, Base):
    """A tenant's tax rate (migration 0015), as its record: made once, then only archived
    (status active | archived). ``percentage`` is the exact decimal string it was made
    with (0 to 100, at most 4 decimals: never a float; cast to numeric to compute)."""

    __tablename__ = "tax_rates"
    __table_args__ = (
        _tenant_fk(),
        CheckConstraint(
            r"percentage ~ '^(100(\.0{1,4})?|[0-9]{1,2}(\.[0-9]{1,4})?)$'",
            name="percentage_decimal",
        ),
        Index(None, "tenant_id", "status", "updated_at"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    tax_rate_id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str | None] = mapped_column(Text)
    percentage: Mapped[str] = mapped_column(Text)
    inclusive: Mapped[bool] = mapped_column(Boolean)
    country: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(Text)
    jurisdiction: Mapped[str | None] = mapped_column(Text)
    tax_type: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # ("metadata" is the declarative base's own attribute: the column keeps the name.)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    provider: Mapped[str | None] = mapped_column(Text)
    provider_tax_rate_id: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)


class ConnectedAccount(_Entity, Base):
    """A connected account's latest state (migration 0016): a merchant's account under the
    tenant's platform account, as its record has it (status pending | enabled |
    restricted | rejected; what its provider last said: the flags, the names of the
    requirements due, the disabled reason). Its email is the provider's alone, and no
    onboarding link is ever stored: nothing here is a customer's personal data."""

    __tablename__ = "connected_accounts"
    __table_args__ = (
        _tenant_fk(),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "provider", "provider_account_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    connected_account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    type: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    business_type: Mapped[str | None] = mapped_column(Text)
    capabilities: Mapped[list[str] | None] = mapped_column(JSONB(none_as_null=True))
    # ("metadata" is the declarative base's own attribute: the column keeps the name.)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    provider: Mapped[str | None] = mapped_column(Text)
    provider_account_id: Mapped[str | None] = mapped_column(Text)
    charges_enabled: Mapped[bool | None] = mapped_column(Boolean)
    payouts_enabled: Mapped[bool | None] = mapped_column(Boolean)
    details_submitted: Mapped[bool | None] = mapped_column(Boolean)
    currently_due: Mapped[list[str] | None] = mapped_column(JSONB(none_as_null=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)


class Transfer(_Entity, Base):
    """A transfer's latest state (migration 0019): ``amount`` in minor units moved from
    the platform's balance to one of the tenant's connected accounts (Stripe Connect's
    separate charges and transfers), ``amount_reversed`` of it taken back since (status
    created | partially_reversed | reversed; state_machines.TRANSFER_MOVES). It names no
    customer: its description, transfer group and metadata (the tenant's words about its
    own money) are kept here, as the payout's are. ``payment_id``: the payment its funds
    came from (Stripe's source_transaction), if any."""

    __tablename__ = "transfers"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks("amount", "amount_reversed"),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "provider", "provider_transfer_id"),
        Index(None, "tenant_id", "connected_account_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    transfer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    amount_reversed: Mapped[int | None] = mapped_column(BigInteger)
    connected_account_id: Mapped[str | None] = mapped_column(Text)
    payment_id: Mapped[str | None] = mapped_column(Text)
    transfer_group: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # ("metadata" is the declarative base's own attribute: the column keeps the name.)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    provider: Mapped[str | None] = mapped_column(Text)
    provider_transfer_id: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)


class TaxCalculation(_Entity, Base):
    """A tax.calculate's answer (migration 0015), in minor units: ``amount_total`` is
    ``amount_subtotal`` plus exclusive tax; ``tax_by_rate`` each rate's tax over every
    line (what a tax report splits a payment's tax by); its lines as the record has them."""

    __tablename__ = "tax_calculations"
    __table_args__ = (
        _tenant_fk(),
        *_money_checks(
            "amount_subtotal",
            "amount_tax",
            "amount_tax_inclusive",
            "amount_tax_exclusive",
            "amount_total",
        ),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    tax_calculation_id: Mapped[str] = mapped_column(Text, primary_key=True)
    currency: Mapped[str] = mapped_column(CHAR(3))
    amount_subtotal: Mapped[int] = mapped_column(BigInteger)
    amount_tax: Mapped[int] = mapped_column(BigInteger)
    amount_tax_inclusive: Mapped[int | None] = mapped_column(BigInteger)
    amount_tax_exclusive: Mapped[int | None] = mapped_column(BigInteger)
    amount_total: Mapped[int] = mapped_column(BigInteger)
    tax_by_rate: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    line_items: Mapped[list[Any] | None] = mapped_column(JSONB(none_as_null=True))
    expires_at: Mapped[datetime | None] = mapped_column(Tstz)
    provider: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """An outcome CloudEvent as received; PII fields in ``data`` are sealed, not plaintext."""

    __tablename__ = "events"
    __table_args__ = (
        _tenant_fk(),
        Index(None, "tenant_id", "entity_type", "entity_id", "entity_version"),
        Index(None, "tenant_id", "time"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    causation_id: Mapped[str | None] = mapped_column(Text)
    entity_type: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    entity_version: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(Tstz)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    recorded_at: Mapped[datetime] = mapped_column(Tstz, server_default=func.now())


class AuditLog(Base):
    """Append-only, chained per tenant: hash = HMAC(key, prev_hash || canonical row), the
    key derived from the master key ``key_id`` names (see ledger/audit.py)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        _tenant_fk(),
        CheckConstraint("seq >= 1", name="seq_positive"),
        Index(None, "tenant_id", "entity_type", "entity_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(Tstz)
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    entity_type: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(Text)  # None: unkeyed (before 0004)


class AuditHead(Base):
    """Last (seq, hash) per tenant: the append lock, and how a truncated tail is detected."""

    __tablename__ = "audit_heads"
    __table_args__ = (_tenant_fk(),)

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditLegacy(Base):
    """Ranges of a tenant's chain the version before keyed chains wrote (recorded by
    migration 0004: the whole chain at the first upgrade, the unkeyed end after a
    downgrade): unkeyed rows ``from_seq``..``seq`` (ending in ``hash``) are accepted;
    any other is reported. Written by the migration; the application role reads it."""

    __tablename__ = "audit_legacy"

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    from_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditKeyRetirement(Base):
    """A master key retired for a tenant's chain: the last seq written under it, recorded
    by ``paystream keys rotate`` as the owner. A row under it past that is reported."""

    __tablename__ = "audit_key_retirements"

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    through_seq: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    retired_at: Mapped[datetime] = mapped_column(Tstz, server_default=func.now())


class MasterKeySeen(Base):
    """A master key (its id) a tenant's audit rows are keyed under or its data keys are
    wrapped under, recorded by the owner's trigger (migration 0012); tenant ``*``: the
    key `paystream keys rotate` made current. The writer asks the ledger whether it knows
    any key of its keyring before it begins a tenant's chain, or extends one past a key
    `keys rotate` retired (``ledger_master_key_known``)."""

    __tablename__ = "master_keys_seen"

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(Tstz, server_default=func.now())


class EntityBackfill(Base):
    """A stored event of an entity type whose table came after it (migration 0013: the
    subscription and invoice events stored before ``subscriptions`` and ``invoices``
    existed; 0014: the payout events stored before ``payouts``), listed by the migration
    as the owner: ``paystream ledger backfill`` applies
    these, and only these, to their rows with audit entries. The application role reads
    its tenant's rows and writes none (an events row it inserted is never listed)."""

    __tablename__ = "entity_backfill"
    __table_args__ = (_tenant_fk(),)

    tenant_id: Mapped[str] = mapped_column(Tenantid, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)


# Every table holding tenant rows: each gets RLS enabled + forced and the tenant policy.
TENANT_TABLES: tuple[str, ...] = tuple(Base.metadata.tables)
