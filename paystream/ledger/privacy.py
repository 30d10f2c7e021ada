"""Data-subject requests: export a customer's data, or erase it by destroying their key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.audit import AuditEntry, append_audit, lock_tenant
from paystream.ledger.errors import CustomerNotFoundError
from paystream.ledger.events import EntityType
from paystream.ledger.keys import SqlKeyStore, customer_data_keys
from paystream.ledger.models import (
    Base,
    Customer,
    Dispute,
    Event,
    Invoice,
    Payment,
    PaymentMethod,
    Refund,
    Subscription,
    Tenant,
)
from paystream.ledger.pii import CUSTOMER_PII_COLUMNS, open_customer_columns, open_event_data
from paystream.ledger.session import tenant_session
from paystream.ledger.writer import summarise
from paystream.tenancy.crypto import MasterKeyring, customer_key_ref

__all__ = ["erase_customer", "export_customer"]

# An erasure that arrives before the customer's first event leaves a row at this version,
# so every real event (version >= 0) still applies but can no longer store PII.
TOMBSTONE_VERSION = -1


def _jsonable(row: Any, drop: tuple[str, ...] = ("tenant_id",)) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key in drop or key.endswith("_ciphertext"):
            continue
        out[key] = value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value
    return out


async def export_customer(
    engine: AsyncEngine, keyring: MasterKeyring, tenant_id: str, customer_id: str
) -> dict[str, Any]:
    """Everything held about a customer, PII decrypted, as a JSON-able dict."""
    async with tenant_session(engine, tenant_id) as session:
        customer = (
            (
                await session.execute(
                    select(Customer.__table__).where(Customer.customer_id == customer_id)
                )
            )
            .mappings()
            .one_or_none()
        )
        if customer is None:
            raise CustomerNotFoundError(f"customer {customer_id!r} not found")
        keys = await customer_data_keys(session, keyring, tenant_id, [customer_id], create=False)
        key = keys.get(customer_id)

        async def rows(model: type[Base], *where: Any) -> list[dict[str, Any]]:
            result = await session.execute(select(model.__table__).where(*where))
            return [_jsonable(r) for r in result.mappings()]

        payments = await rows(Payment, Payment.customer_id == customer_id)
        # A subquery, not a list of ids: a customer of years may have more payments than
        # a statement takes bind parameters (32,767).
        payment_ids = select(Payment.payment_id).where(Payment.customer_id == customer_id)
        method_ids = select(PaymentMethod.payment_method_id).where(
            PaymentMethod.customer_id == customer_id
        )
        refund_ids = select(Refund.refund_id).where(Refund.payment_id.in_(payment_ids))
        dispute_ids = select(Dispute.dispute_id).where(Dispute.payment_id.in_(payment_ids))
        subscription_ids = select(Subscription.subscription_id).where(
            Subscription.customer_id == customer_id
        )
        # An invoice names its customer and its subscription: either makes it theirs.
        theirs = or_(
            Invoice.customer_id == customer_id, Invoice.subscription_id.in_(subscription_ids)
        )
        invoice_ids = select(Invoice.invoice_id).where(theirs)
        # Every entity exported, with its events (review finding: those of the customer's
        # payment methods, refunds and disputes were left out).
        events = await session.execute(
            select(Event.__table__)
            .where(
                or_(
                    *(
                        (Event.entity_type == kind.value) & Event.entity_id.in_(ids)
                        for kind, ids in (
                            (EntityType.PAYMENT, payment_ids),
                            (EntityType.PAYMENT_METHOD, method_ids),
                            (EntityType.REFUND, refund_ids),
                            (EntityType.DISPUTE, dispute_ids),
                            (EntityType.SUBSCRIPTION, subscription_ids),
                            (EntityType.INVOICE, invoice_ids),
                        )
                    ),
                    (Event.entity_type == EntityType.CUSTOMER.value)
                    & (Event.entity_id == customer_id),
                )
            )
            .order_by(Event.time, Event.event_id)
        )
        history = []
        for event in events.mappings():
            item = _jsonable(event)
            if event["entity_type"] == EntityType.CUSTOMER.value:
                item["data"] = open_event_data(key, tenant_id, event["event_id"], event["data"])
            history.append(item)
        return {
            "tenant_id": tenant_id,
            "customer": {
                **_jsonable(customer),
                **open_customer_columns(key, tenant_id, customer_id, dict(customer)),
                "erased": customer["erased_at"] is not None,
            },
            "payment_methods": await rows(PaymentMethod, PaymentMethod.customer_id == customer_id),
            "payments": payments,
            "refunds": await rows(Refund, Refund.payment_id.in_(payment_ids)),
            "disputes": await rows(Dispute, Dispute.payment_id.in_(payment_ids)),
            "subscriptions": await rows(Subscription, Subscription.customer_id == customer_id),
            "invoices": await rows(Invoice, theirs),
            "events": history,
        }


async def erase_customer(
    engine: AsyncEngine,
    tenant_id: str,
    customer_id: str,
    *,
    keyring: MasterKeyring,
    actor: str = "system:privacy",
) -> bool:
    """Crypto-shred a customer's PII: delete their data key and clear the ciphertext.

    Amounts, ids and history rows stay (they are needed for accounting); sealed PII in
    stored events becomes undecryptable. Later events for the customer store no PII.
    Returns False if the customer was already erased, their key gone with it.
    """
    now = datetime.now(UTC)
    async with tenant_session(engine, tenant_id) as session:
        await session.execute(
            pg_insert(Tenant).values(tenant_id=tenant_id).on_conflict_do_nothing()
        )
        await lock_tenant(session, tenant_id)
        before = (
            (
                await session.execute(
                    select(Customer.__table__).where(Customer.customer_id == customer_id)
                )
            )
            .mappings()
            .one_or_none()
        )
        shredded = await SqlKeyStore(session).delete(tenant_id, customer_key_ref(customer_id))
        was: dict[str, Any] | None = None if before is None else dict(before)
        if was is not None and was["erased_at"] is not None:
            if not shredded:
                return False
            # Marked erased with its key still there (a bug, or a write no erasure made):
            # every sealed event of the customer could still be opened. The key goes,
            # said in the audit trail (review finding: "already erased" kept it).
            after = was
        else:
            cleared: dict[str, Any] = dict.fromkeys(CUSTOMER_PII_COLUMNS.values())
            if was is None:
                # Erasure can overtake the customer's events in the pipeline: leave a
                # tombstone.
                await session.execute(
                    pg_insert(Customer).values(
                        tenant_id=tenant_id,
                        customer_id=customer_id,
                        version=TOMBSTONE_VERSION,
                        last_event_id="",
                        created_at=now,
                        updated_at=now,
                        erased_at=now,
                    )
                )
            else:
                await session.execute(
                    update(Customer)
                    .where(Customer.customer_id == customer_id)
                    .values(**cleared, erased_at=now)
                )
            after = {**(was or {}), **cleared, "erased_at": now}
        await append_audit(
            session,
            tenant_id,
            [
                AuditEntry(
                    actor=actor,
                    action="com.paystream.customer.erased",
                    entity_type=EntityType.CUSTOMER.value,
                    entity_id=customer_id,
                    before=summarise(was),
                    after=summarise(after),
                    occurred_at=now,
                )
            ],
            keyring=keyring,
        )
    return True
