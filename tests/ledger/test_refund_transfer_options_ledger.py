"""A destination charge's refund options in the ledger (migration 0018, review h79r_a
L4): a refund that reversed the transfer and refunded the application fee, stored from a
real harness's outcomes, says so on its ``refunds`` row (a plain refund names neither),
each write with an audit entry that verifies, another tenant seeing none of it under
row-level security; 0018 up and down while no row holds them, its downgrade refused (and
rolled back whole) once one does."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import events as ledger_events
from paystream.ledger import tenant_session, verify_audit, write_events, writer
from paystream.ledger.events import EntityType
from paystream.ledger.models import Refund
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.ledger.migration_roundtrip import round_trip_while_unset

NEW = ("reverse_transfer", "refund_application_fee")


def as_before_0018(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer of a version before 0018 (for the older migrations' tests): refunds'
    rows without its columns."""
    fields = {k: v for k, v in ledger_events._FIELDS[EntityType.REFUND].items() if k not in NEW}
    monkeypatch.setitem(ledger_events._FIELDS, EntityType.REFUND, fields)
    table = Refund.__table__
    old = Table(
        table.name,
        MetaData(),
        *(
            Column(c.name, c.type, primary_key=c.primary_key)
            for c in table.columns
            if c.name not in NEW
        ),
    )
    monkeypatch.setitem(
        writer.ENTITY_TABLES,
        EntityType.REFUND,
        (type("OldRefund", (), {"__table__": old}), writer.ENTITY_TABLES[EntityType.REFUND][1]),
    )


LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}
PASSWORD = "m18-pw"


@pytest.mark.asyncio
async def test_a_refunds_transfer_options_are_stored(
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
        pay = {"payment_id": "p1", "amount": 10_000, "currency": "USD",
               "payment_method_token": "pm_card_visa", "connected_account_id": "ca1",
               "application_fee_amount": 1_000}  # fmt: skip
        outs.append(await h.send("payment.create", t, pay))
        both = {"payment_id": "p1", "refund_id": "r1", "amount": 2_000,
                "reverse_transfer": True, "refund_application_fee": True}  # fmt: skip
        outs.append(await h.send("refund.create", t, both))
        platform_bears = {"payment_id": "p1", "refund_id": "r2", "amount": 1_000,
                          "reverse_transfer": False}  # fmt: skip
        outs.append(await h.send("refund.create", t, platform_bears))
        plain = {"payment_id": "p2", "amount": 500, "currency": "USD",
                 "payment_method_token": "pm_card_visa"}  # fmt: skip
        outs.append(await h.send("payment.create", other, plain))
        outs.append(await h.send("refund.create", other, {"payment_id": "p2", "refund_id": "r3"}))
    assert [kind(o) for o in outs][3:] == [
        "payment.succeeded", "refund.succeeded", "refund.succeeded", "payment.succeeded",
        "refund.succeeded",
    ], [data(o) for o in outs]  # fmt: skip
    shown = [data(o)["object"] for o in outs[4:6]]
    assert [(o.get("reverse_transfer"), o.get("refund_application_fee")) for o in shown] == [
        (True, True), (False, None)
    ]  # fmt: skip
    plain_refund = data(outs[-1])["object"]
    assert "reverse_transfer" not in plain_refund, plain_refund  # (left out while None)
    assert "refund_application_fee" not in plain_refund, plain_refund
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    await write_events(app_engine, events, keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        rows = (await s.scalars(select(Refund).order_by(Refund.refund_id))).all()
    assert [(r.refund_id, r.reverse_transfer, r.refund_application_fee) for r in rows] == [
        ("r1", True, True), ("r2", False, None)
    ]  # fmt: skip
    async with tenant_session(app_engine, other) as s:
        mine = (await s.scalars(select(Refund))).all()  # (its own only, under RLS)
    assert [(r.refund_id, r.reverse_transfer, r.refund_application_fee) for r in mine] == [
        ("r3", None, None)
    ]
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    assert (await verify_audit(app_engine, other, keyring)).problems == []


def test_0018_up_and_down_while_unset_then_refused_once_a_row_holds_them(
    module_database_url: str,
) -> None:
    refund = {"payment_id": "p1", "amount": 1_000, "currency": "USD", "status": "succeeded"}
    reversed_ = {**refund, "reverse_transfer": True, "refund_application_fee": False}
    # (a refund naming neither option: the downgrade may go; one naming them: refused)
    run = round_trip_while_unset(
        module_database_url,
        password=PASSWORD,
        previous="0017",
        expected_head="0019",
        table="refunds",
        columns=NEW,
        unset=("m18", "refund", "r0", refund),
        held=("m18", "refund", "r1", reversed_),
    )
    assert run.before == [] and run.made == ["refund_application_fee", "reverse_transfer"]
    assert run.gone == ([], "0017") and run.problems == []
    assert run.refusal is not None and run.refusal.startswith(
        "migration 0018 down: refunds hold audited refund options"
    )
    assert run.at == "0019"  # (the whole downgrade rolled back)
