"""Destination charges in the ledger (migration 0017): a payment made on behalf of a
connected account, captured in part (its fee capped) and refunded with its transfer
reversed, stored from a real harness's outcomes: its ``payments`` row names the account
and the fee, each write with an audit entry that verifies; under row-level security
another tenant sees none of it; a negative fee is refused by the database; migration
0017 up and down while no row holds them, its downgrade refused (and rolled back whole)
once one does."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import Payment
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.ledger.factories import EventFactory
from tests.ledger.migration_roundtrip import round_trip_while_unset

LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}
PASSWORD = "m17-pw"


@pytest.mark.asyncio
async def test_a_destination_charge_is_stored_with_its_account_and_fee(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t, other = h.add_tenant(), h.add_tenant()
        body = {"connected_account_id": "ca1", "country": "US",
                "email": "shop+enabled@example.com", "capabilities": ["transfers"]}  # fmt: skip
        outs = [await h.send("connected_account.create", t, body)]
        outs.append(
            await h.send(
                "connected_account.onboarding_link", t, {"connected_account_id": "ca1", **LINK}
            )
        )
        outs.append(await h.send("connected_account.refresh", t, {"connected_account_id": "ca1"}))
        pay = {"payment_id": "p1", "amount": 10_000, "currency": "USD", "capture": "manual",
               "payment_method_token": "pm_card_visa", "connected_account_id": "ca1",
               "application_fee_amount": 4_000}  # fmt: skip
        outs.append(await h.send("payment.create", t, pay))
        outs.append(await h.send("payment.capture", t, {"payment_id": "p1", "amount": 3_000}))
        refund = {"payment_id": "p1", "amount": 1_000, "reverse_transfer": True}
        outs.append(await h.send("refund.create", t, refund))
        plain = {"payment_id": "p2", "amount": 500, "currency": "USD",
                 "payment_method_token": "pm_card_visa"}  # fmt: skip
        outs.append(await h.send("payment.create", other, plain))
    assert [kind(o) for o in outs][3:] == [
        "payment.authorized", "payment.succeeded", "refund.succeeded", "payment.succeeded"
    ], [data(o) for o in outs]  # fmt: skip
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    await write_events(app_engine, events, keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        row = (await s.scalars(select(Payment))).one()
    assert (row.payment_id, row.connected_account_id, row.application_fee_amount) == (
        "p1", "ca1", 3_000
    )  # fmt: skip
    assert (row.amount_captured, row.amount_refunded) == (3_000, 1_000)
    async with tenant_session(app_engine, other) as s:
        rows = (await s.scalars(select(Payment))).all()  # (its own only, under RLS)
    assert [(r.payment_id, r.connected_account_id, r.application_fee_amount) for r in rows] == [
        ("p2", None, None)
    ]
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    assert (await verify_audit(app_engine, other, keyring)).problems == []
    # Money is never negative, here as in every amount column: the row's check refuses it.
    bad = {"amount": 1_000, "currency": "USD", "status": "succeeded",
           "connected_account_id": "ca1", "application_fee_amount": -1}  # fmt: skip
    with pytest.raises(DBAPIError, match="application_fee_amount_non_negative"):
        await write_events(
            app_engine, [EventFactory()(t, "payment", "p9", 1, bad)], keyring=keyring
        )


def test_0017_up_and_down_while_unset_then_refused_once_a_row_holds_them(
    module_database_url: str,
) -> None:
    payment = {"amount": 1_000, "currency": "USD", "status": "succeeded",
               "amount_captured": 1_000}  # fmt: skip
    charged = {**payment, "connected_account_id": "ca1", "application_fee_amount": 100}
    # (a payment without a destination: the downgrade may go; one with: refused)
    run = round_trip_while_unset(
        module_database_url,
        password=PASSWORD,
        previous="0016",
        expected_head="0019",
        table="payments",
        columns=("connected_account_id", "application_fee_amount"),
        unset=("m17", "payment", "p0", payment),
        held=("m17", "payment", "p1", charged),
    )
    assert run.before == [] and run.made == ["application_fee_amount", "connected_account_id"]
    assert run.gone == ([], "0016") and run.problems == []
    assert run.refusal is not None and run.refusal.startswith(
        "migration 0017 down: payments hold audited destination charges"
    )
    assert run.at == "0019"  # (the whole downgrade rolled back)
