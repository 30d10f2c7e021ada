"""Privacy: export decrypts a customer's data; erase crypto-shreds it for good."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    CustomerNotFoundError,
    erase_customer,
    export_customer,
    tenant_session,
    verify_audit,
    write_events,
)
from paystream.ledger.models import Customer, DataKey, Event, Payment
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory

ADDRESS = {"line1": "1 Main St", "city": "Springfield"}


async def _customer_with_payment(
    engine: AsyncEngine, keyring: MasterKeyring, make: EventFactory, tenant: str
) -> None:
    await write_events(
        engine,
        [
            make.customer(tenant, "cus_1", email="ann@example.com", name="Ann", address=ADDRESS),
            make.customer(tenant, "cus_2", email="bob@example.com", name="Bob"),
            make.payment(tenant, "pay_1", customer_id="cus_1", amount=4200, currency="EUR"),
            make(
                tenant,
                "refund",
                "re_1",
                1,
                {"payment_id": "pay_1", "amount": 200, "currency": "EUR", "status": "succeeded"},
            ),
        ],
        keyring=keyring,
    )


async def test_export_returns_decrypted_customer_data(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _customer_with_payment(app_engine, keyring, make_event, "pr1")
    exported = await export_customer(app_engine, keyring, "pr1", "cus_1")
    customer = exported["customer"]
    assert (customer["email"], customer["name"], customer["address"]) == (
        "ann@example.com",
        "Ann",
        ADDRESS,
    )
    assert customer["erased"] is False
    assert [p["amount"] for p in exported["payments"]] == [4200]
    assert [r["refund_id"] for r in exported["refunds"]] == ["re_1"]
    customer_events = [e for e in exported["events"] if e["entity_type"] == "customer"]
    assert customer_events[0]["data"]["email"] == "ann@example.com"
    assert "bob@example.com" not in repr(exported)
    json.dumps(exported)  # JSON-able as promised


async def test_export_of_unknown_or_foreign_customer_fails(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _customer_with_payment(app_engine, keyring, make_event, "pr2")
    with pytest.raises(CustomerNotFoundError):
        await export_customer(app_engine, keyring, "pr3", "cus_1")  # exists only in pr2


async def test_erase_shreds_pii_but_keeps_amounts_and_ids(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    await _customer_with_payment(app_engine, keyring, make_event, "pr4")
    assert await erase_customer(app_engine, "pr4", "cus_1", keyring=keyring) is True
    assert await erase_customer(app_engine, "pr4", "cus_1", keyring=keyring) is False  # idempotent
    exported = await export_customer(app_engine, keyring, "pr4", "cus_1")
    customer = exported["customer"]
    assert customer["erased"] is True
    assert (customer["email"], customer["name"], customer["address"]) == (None, None, None)
    assert exported["payments"][0]["amount"] == 4200
    for event in exported["events"]:
        if event["entity_type"] == "customer":
            assert event["data"]["email"] == {"erased": True}
    async with tenant_session(app_engine, "pr4") as s:
        refs = (await s.scalars(select(DataKey.key_ref))).all()
        assert refs == ["customer/cus_2"]  # only the other customer's key remains
        assert await s.scalar(select(Payment.amount).where(Payment.payment_id == "pay_1")) == 4200
    other = await export_customer(app_engine, keyring, "pr4", "cus_2")
    assert other["customer"]["email"] == "bob@example.com"
    result = await verify_audit(app_engine, "pr4", keyring)
    assert result.ok


async def test_later_events_for_an_erased_customer_store_no_pii(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    # the erasure overtakes the customer's events: a tombstone keeps the PII out
    assert await erase_customer(app_engine, "pr5", "cus_late", keyring=keyring) is True
    await write_events(
        app_engine,
        [make_event.customer("pr5", "cus_late", 3, email="late@example.com")],
        keyring=keyring,
    )
    async with tenant_session(app_engine, "pr5") as s:
        customer = (await s.scalars(select(Customer))).one()
        assert customer.version == 3
        assert customer.erased_at is not None
        assert customer.email_ciphertext is None
        assert (await s.scalars(select(DataKey))).all() == []
    exported = await export_customer(app_engine, keyring, "pr5", "cus_late")
    assert "late@example.com" not in repr(exported)


async def test_erasure_shreds_description_and_metadata_in_stored_events_too(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    """The pipeline blanks them on erasure as personal data; the ledger's insert-only
    events must not keep them readable."""
    secret = {"description": "Jane Doe, DOB 1980-02-03", "metadata": {"phone": "+44 7700"}}
    await write_events(app_engine, [make_event.customer("pr9", "cus_9", **secret)], keyring=keyring)
    exported = await export_customer(app_engine, keyring, "pr9", "cus_9")
    [event] = [e for e in exported["events"] if e["entity_type"] == "customer"]
    assert (event["data"]["description"], event["data"]["metadata"]) == tuple(secret.values())
    assert await erase_customer(app_engine, "pr9", "cus_9", keyring=keyring) is True
    async with tenant_session(app_engine, "pr9") as s:
        stored = json.dumps((await s.scalars(select(Event.data))).all())
    assert "Jane Doe" not in stored and "7700" not in stored


async def test_an_erasure_whose_event_the_ledger_refuses_still_shreds(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command agent erased the customer: whatever became of the outcome's ledger
    row (here refused: its event id already names another change), the customer's data
    key must go. It used to be kept, their PII readable, with nothing said."""
    from dataclasses import replace
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from paystream.agents import ledger_sink as ls
    from paystream.ledger.sink import LedgerSink
    from paystream.settings import CloudEventsMode, load_settings
    from paystream.streams.codec import encode_event
    from paystream.streams.outcomes import CommandRef, build_outcome

    t = "pr10"
    await write_events(
        app_engine, [make_event.customer(t, "cus_1", email="x@y.z")], keyring=keyring
    )
    cmd = CommandRef(
        tenant_id=t,
        command_id="cmd_erase",
        command_type="customer.erase",
        idempotency_key="k",
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    obj = {"tenant_id": t, "id": "cus_1", "entity_type": "customer", "version": 2}
    data = {"tenant_id": t, "command_id": cmd.command_id, "entity_type": "customer",
            "entity_id": "cus_1", "version": 2, "object": obj}  # fmt: skip
    outcome = build_outcome(cmd, "customer.erased", data)
    clash = replace(make_event.payment(t, "pay_x"), event_id=outcome.get_id())
    await write_events(app_engine, [clash], keyring=keyring)  # the id names another change
    record = encode_event(outcome, t.encode(), CloudEventsMode.BINARY)
    message = SimpleNamespace(
        key=record.key, value=record.value, headers=list(record.headers), timestamp=1.7e9,
        topic="paystream.events", partition=0, offset=1,
    )  # fmt: skip
    runner = ls.LedgerSinkRunner(load_settings())
    runner._sink = LedgerSink(app_engine, keyring)
    parked: list[object] = []

    async def park(records: object, dead: dict[int, object]) -> None:
        parked.extend(dead.values())

    monkeypatch.setattr(runner, "_park", park)
    await runner.run_batch([SimpleNamespace(message=message)])  # type: ignore[list-item]
    assert len(parked) == 1  # the refused event
    async with tenant_session(app_engine, t) as s:
        assert (await s.scalars(select(DataKey))).all() == []
        assert (await s.scalars(select(Customer))).one().email_ciphertext is None


async def test_an_erasure_the_database_refuses_is_logged_not_a_stalled_sink(
    app_engine: AsyncEngine, keyring: MasterKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    from paystream.ledger.sink import LedgerSink

    sink = LedgerSink(app_engine, keyring)
    # PostgreSQL refuses NUL in text: a data error, which no retry can fix.
    assert await sink.erase_customer("pr11", "cus\x00nul") is False
    assert "refused by the database" in caplog.text and "data key is not deleted" in caplog.text
