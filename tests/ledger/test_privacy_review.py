"""Privacy review findings: an erasure finds a customer marked erased whose data key is
still there; an export holds the events of every entity it exports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import erase_customer, export_customer, tenant_session, write_events
from paystream.ledger.key_check import customers_keys_checked
from paystream.ledger.models import AuditLog, Customer, DataKey
from paystream.tenancy.crypto import MasterKeyring


async def test_a_customer_marked_erased_with_its_key_left_is_shredded(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """Marked erased (its ciphertext cleared, erased_at set: the forward-only rule allows
    it) by something that was no erasure: its data key was left, every sealed event of
    the customer still readable, and `erase` answered "already erased"."""
    t = "erx"
    event = make_event.customer(t, "cus_1", email="ann@example.com", name="Ann")
    await write_events(app_engine, [event], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(
            update(Customer)
            .where(Customer.customer_id == "cus_1")
            .values(erased_at=text("now()"), email_ciphertext=None, name_ciphertext=None)
        )
    # audit verify names it (it was checked only for customers not erased).
    async with tenant_session(app_engine, t) as s:
        problems = await customers_keys_checked(s, keyring, t)
    assert problems.left_after_erasure == ["cus_1"]
    assert await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        assert not await customers_keys_checked(s, keyring, t)
    async with tenant_session(app_engine, t) as s:
        assert (await s.execute(select(DataKey.key_ref))).scalars().all() == []
        actions = (await s.execute(select(AuditLog.action))).scalars().all()
    assert actions.count("com.paystream.customer.erased") == 1
    exported = await export_customer(app_engine, keyring, t, "cus_1")
    assert "ann@example.com" not in str(exported)
    assert not await erase_customer(app_engine, t, "cus_1", keyring=keyring)  # nothing left


async def test_an_export_holds_the_events_of_every_entity_it_exports(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    t = "exq"
    paid = {"payment_id": "pay_1", "amount": 1, "currency": "USD"}
    await write_events(
        app_engine,
        [
            make_event.customer(t, "cus_1"),
            make_event.payment(t, "pay_1", customer_id="cus_1"),
            make_event(t, "refund", "re_1", 1, {**paid, "status": "succeeded"}),
            make_event(t, "payment_method", "pm_1", 1, {"customer_id": "cus_1", "last4": "4242"}),
            make_event(t, "dispute", "dp_1", 1, {**paid, "status": "needs_response"}),
            make_event.customer(t, "cus_2"),
            make_event(t, "payment_method", "pm_2", 1, {"customer_id": "cus_2", "last4": "1111"}),
        ],
        keyring=keyring,
    )
    exported = await export_customer(app_engine, keyring, t, "cus_1")
    by_entity = sorted((e["entity_type"], e["entity_id"]) for e in exported["events"])
    assert by_entity == [
        ("customer", "cus_1"),
        ("dispute", "dp_1"),
        ("payment", "pay_1"),
        ("payment_method", "pm_1"),
        ("refund", "re_1"),
    ]
