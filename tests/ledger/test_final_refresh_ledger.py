"""A refresh of a final payout (canceled) or transfer (reversed entirely) in the ledger:
its `payout.updated` / `transfer.updated`, answered from the record (review h81rb F1),
is a version that moves canceled -> canceled and reversed -> reversed: PAYOUT_MOVES and
TRANSFER_MOVES take it, so it is stored and applied, not dead-lettered as a move the
entity cannot make, and every audit entry verifies."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import (
    ConnectedAccount,
    Payment,
    Payout,
    Refund,
    Subscription,
    Transfer,
)
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.agents.test_payouts import _settled
from tests.ledger.transfers import LINK, a_transfer_made


async def _stored_and_applied(
    app_engine: AsyncEngine, keyring: MasterKeyring, t: str, outs: list[CloudEvent], *models: Any
) -> list[Any]:
    """Every outcome's ledger events written: all stored, none stale (none refused as a
    move its entity cannot make); the one row of each of ``models``."""
    events = [e for o in outs for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert result.events_written == len(events)
    assert result.entities_stale == 0
    async with tenant_session(app_engine, t) as s:
        return [(await s.scalars(select(model))).one() for model in models]


@pytest.mark.asyncio
async def test_final_payouts_and_transfers_read_again_are_stored_and_applied(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        await _settled(h, t, 5_000)
        outs = [
            await h.send(
                "payout.create", t, {"payout_id": "po1", "amount": 1_000, "currency": "EUR"}
            ),
            await h.send("payout.cancel", t, {"payout_id": "po1"}),
            await h.send("payout.refresh", t, {"payout_id": "po1"}),
        ]
        outs += await a_transfer_made(h, t)
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1"}))
        outs.append(await h.send("transfer.refresh", t, {"transfer_id": "tr1"}))
    assert [kind(o) for o in outs] == [
        "payout.created", "payout.canceled", "payout.updated",
        "payment.succeeded", "transfer.created", "transfer.reversed", "transfer.updated",
    ], [data(o) for o in outs]  # fmt: skip
    payout, transfer = await _stored_and_applied(app_engine, keyring, t, outs, Payout, Transfer)
    assert (payout.status, payout.version) == ("canceled", 3)
    assert (transfer.status, transfer.amount_reversed, transfer.version) == ("reversed", 6_000, 3)
    assert (await verify_audit(app_engine, t, keyring)).problems == []


@pytest.mark.asyncio
async def test_a_failed_refund_and_a_rejected_account_read_again_are_stored_and_applied(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """The same for a refund failed here (`refund.failed` again, previous_status failed)
    and a connected account rejected here (`connected_account.updated`, rejected ->
    rejected: CONNECTED_ACCOUNT_MOVES takes it)."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        pay = {"payment_id": "p1", "amount": 2_000, "currency": "USD",
               "payment_method_token": "pm_card_refundFail"}  # fmt: skip
        outs = [
            await h.send("payment.create", t, pay),
            await h.send(
                "refund.create", t, {"payment_id": "p1", "refund_id": "r1", "amount": 1_500}
            ),
            await h.send("refund.refresh", t, {"refund_id": "r1"}),
            await h.send("refund.refresh", t, {"refund_id": "r1"}),
        ]
        body = {"connected_account_id": "ca1", "country": "US",
                "email": "shop+rejected@example.com", "capabilities": ["transfers"]}  # fmt: skip
        outs.append(await h.send("connected_account.create", t, body))
        await h.send(
            "connected_account.onboarding_link", t, {"connected_account_id": "ca1", **LINK}
        )
        for _ in range(2):
            outs.append(
                await h.send("connected_account.refresh", t, {"connected_account_id": "ca1"})
            )
    assert [kind(o) for o in outs] == [
        "payment.succeeded", "refund.succeeded", "refund.failed", "refund.failed",
        "connected_account.created", "connected_account.updated", "connected_account.updated",
    ], [data(o) for o in outs]  # fmt: skip
    assert [data(o)["object"]["status"] for o in outs[-2:]] == ["rejected", "rejected"]
    refund, account = await _stored_and_applied(
        app_engine, keyring, t, outs, Refund, ConnectedAccount
    )
    assert (refund.status, refund.version) == ("failed", 3)
    assert account.status == "rejected"
    assert (await verify_audit(app_engine, t, keyring)).problems == []


@pytest.mark.asyncio
async def test_a_canceled_payment_and_subscription_read_again_are_stored_and_applied(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """The same for a payment canceled here (`payment.canceled` again) and a subscription
    canceled here (`subscription.updated`, canceled -> canceled: SUBSCRIPTION_MOVES
    takes it)."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        pay = {"payment_id": "p1", "amount": 900, "currency": "USD",
               "payment_method_token": "pm_card_visa", "capture": "manual"}  # fmt: skip
        outs = [
            await h.send("payment.create", t, pay),
            await h.send("payment.cancel", t, {"payment_id": "p1"}),
            await h.send("payment.refresh", t, {"payment_id": "p1"}),
            await h.send("customer.create", t, {"customer_id": "c1"}),
            await h.send(
                "payment_method.attach",
                t,
                {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
            ),
        ]
        sub = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
               "amount": 1_000, "currency": "USD", "interval": "month"}  # fmt: skip
        outs.append(await h.send("subscription.create", t, sub))
        outs.append(await h.send("subscription.cancel", t, {"subscription_id": "s1"}))
        outs.append(await h.send("subscription.refresh", t, {"subscription_id": "s1"}))
    assert [kind(o) for o in outs] == [
        "payment.authorized", "payment.canceled", "payment.canceled", "customer.created",
        "payment_method.attached", "subscription.created", "subscription.canceled",
        "subscription.updated",
    ], [data(o) for o in outs]  # fmt: skip
    payment, subscription = await _stored_and_applied(
        app_engine, keyring, t, outs, Payment, Subscription
    )
    assert (payment.status, payment.version) == ("canceled", 3)
    assert subscription.status == "canceled"
    assert (await verify_audit(app_engine, t, keyring)).problems == []
