"""transfer.refresh on the real simulator: a reversal made outside paystream (the
simulator's test hook, as Stripe's Dashboard or its negative balance recovery) is learnt
as a transfer.reversed exactly as a transfer.reverse's (the transfers table, its
payment's amount_transferred, the refund it held back allowed now, analytics counting
it), once however often it is read or redelivered; nothing new is transfer.updated; a
transfer reversed entirely is final (read again: transfer.updated from its record);
another tenant's or an unknown transfer not_found; Square and Paddle have no transfers
to read."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.handlers import HANDLERS, Rejection
from paystream.gateways import base as gw
from paystream.gateways.errors import UnsupportedOperation
from paystream.insights.observe import observe
from paystream.streams import commands as c
from paystream.streams.outcomes import RejectReason
from tests.agents.connected_account_setup import handler_ctx, unreachable_gateway
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_transfers import _account, _paid, _rejected, _tr, _transfers

pytestmark = pytest.mark.asyncio


async def _made(h: Harness, t: str, amount: int = 7_000) -> tuple[dict[str, Any], dict[str, Any]]:
    """A transfer of ``amount`` from a 10 000 payment: (the transfer, the payment)."""
    acct = await _account(h, t)
    pay = await _paid(h, t)
    made = await h.send("transfer.create", t, _tr(acct["id"], amount, payment_id=pay["id"]))
    assert kind(made) == "transfer.created", data(made)
    return dict(data(made)["object"]), pay


def _row(h: Harness, t: str, table: str, entity_id: str) -> dict[str, Any]:
    return dict(getattr(h.tables, table)[f"{t}:{entity_id}"])


async def test_the_command_is_registered() -> None:
    assert "transfer.refresh" in c.COMMANDS and "transfer.refresh" in HANDLERS
    assert "transfer.refresh" in c.PROVIDER_READS


async def test_a_reversal_made_outside_paystream_is_learnt_once(harness: Harness) -> None:
    t = harness.add_tenant()
    tr, pay = await _made(harness, t)
    # Refused while the transfer holds the funds (3 000 refundable).
    body = {"payment_id": pay["id"], "amount": 5_000}
    held = await harness.send("refund.create", t, body, command_id="re-1")
    _rejected(held, "invalid_state")
    unchanged = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(unchanged) == "transfer.updated", data(unchanged)
    assert data(unchanged)["previous_status"] == "created"
    assert "related" not in data(unchanged) and "amount_reversed_now" not in data(unchanged)
    # The platform reverses 4 000 of it in the provider's dashboard: paystream is not told.
    await simulator_of(harness, t).reverse_transfer_outside(tr["provider_transfer_id"], 4_000)
    assert _row(harness, t, "transfers", tr["id"])["amount_reversed"] == 0
    read = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]}, command_id="rf-1")
    assert kind(read) == "transfer.reversed", data(read)
    obj = data(read)["object"]
    assert (obj["status"], obj["amount_reversed"]) == ("partially_reversed", 4_000)
    assert (data(read)["previous_status"], data(read)["amount_reversed_now"]) == ("created", 4_000)
    (related,) = data(read)["related"]
    assert related["entity_id"] == pay["id"] and related["object"]["amount_transferred"] == 3_000
    assert _row(harness, t, "transfers", tr["id"])["amount_reversed"] == 4_000
    assert _row(harness, t, "payments", pay["id"])["amount_transferred"] == 3_000
    # Counted by analytics as a reversal (what it took back).
    facts = observe(read)
    assert facts is not None and facts.transfer_reversed == 4_000, facts
    # Redelivered: the same answer; read again: nothing new, amount_transferred lowered once.
    again = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]}, command_id="rf-1")
    assert data(again) == data(read)
    anew = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(anew) == "transfer.updated", data(anew)
    assert data(anew)["previous_status"] == "partially_reversed"
    seen = observe(anew)
    assert seen is not None and seen.transfer_reversed == 0, seen
    assert _row(harness, t, "payments", pay["id"])["amount_transferred"] == 3_000
    # The refund held back goes through now (7 000 refundable).
    refunded = await harness.send("refund.create", t, body, command_id="re-1")
    assert kind(refunded) == "refund.succeeded", data(refunded)
    # The simulator's own ledger: the reversal once (the hook's), no reversal by paystream.
    assert await _transfers(harness, t) == [
        ("transfer.created", 7_000),
        ("transfer.reversed", 4_000),
    ]


class _ReadsCounted(dict[str, Any]):
    """A table that counts its reads."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return super().__getitem__(key)


async def test_nothing_reversed_leaves_the_payment_unread(harness: Harness) -> None:
    """A refresh that learns nothing neither changes nor reads the transfer's payment
    (a table read per refresh for nothing); one that learns a reversal reads it once."""
    t = harness.add_tenant()
    tr, pay = await _made(harness, t)
    payments = harness.tables.payments = _ReadsCounted(harness.tables.payments)
    unchanged = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(unchanged) == "transfer.updated", data(unchanged)
    assert payments.reads == 0
    await simulator_of(harness, t).reverse_transfer_outside(tr["provider_transfer_id"], 1_000)
    read = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(read) == "transfer.reversed", data(read)
    assert payments.reads > 0
    assert _row(harness, t, "payments", pay["id"])["amount_transferred"] == 6_000


async def test_a_transfer_reversed_entirely_outside_is_final(harness: Harness) -> None:
    t = harness.add_tenant()
    tr, pay = await _made(harness, t, 6_000)
    part = await harness.send("transfer.reverse", t, {"transfer_id": tr["id"], "amount": 1_000})
    assert kind(part) == "transfer.reversed", data(part)
    await simulator_of(harness, t).reverse_transfer_outside(tr["provider_transfer_id"])
    read = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(read) == "transfer.reversed", data(read)
    assert (data(read)["object"]["status"], data(read)["amount_reversed_now"]) == (
        "reversed",
        5_000,
    )
    assert data(read)["previous_status"] == "partially_reversed"
    assert data(read)["related"][0]["object"]["amount_transferred"] == 0
    final = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(final) == "transfer.updated", data(final)  # (from its record, unread)
    assert (data(final)["previous_status"], data(final)["object"]["status"]) == (
        "reversed",
        "reversed",
    )
    assert _row(harness, t, "payments", pay["id"])["amount_transferred"] == 0
    # What came back may go out again.
    acct = tr["connected_account_id"]
    anew = await harness.send("transfer.create", t, _tr(acct, 10_000, payment_id=pay["id"]))
    assert kind(anew) == "transfer.created", data(anew)


async def test_a_transfer_without_a_payment_is_read_back_alone(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    await _paid(harness, t)  # (funds, settling)
    await simulator_of(harness, t).advance_clock(3 * 24 * 3600)
    made = await harness.send("transfer.create", t, _tr(acct["id"], 2_000))
    assert kind(made) == "transfer.created", data(made)
    tr = data(made)["object"]
    await simulator_of(harness, t).reverse_transfer_outside(tr["provider_transfer_id"], 500)
    read = await harness.send("transfer.refresh", t, {"transfer_id": tr["id"]})
    assert kind(read) == "transfer.reversed" and data(read)["amount_reversed_now"] == 500
    assert "related" not in data(read), data(read)


async def test_an_unknown_or_another_tenants_transfer_is_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    tr, _ = await _made(harness, a)
    unknown = await harness.send("transfer.refresh", b, {"transfer_id": "tr_nobody"})
    assert _rejected(unknown, "not_found") == "no such transfer: tr_nobody"
    theirs = await harness.send("transfer.refresh", b, {"transfer_id": tr["id"]})
    assert _rejected(theirs, "not_found") == f"no such transfer: {tr['id']}"


@pytest.mark.parametrize("provider", ["square", "paddle"])
async def test_square_and_paddle_have_no_transfers_to_read(redis_url: str, provider: str) -> None:
    """Their gateways reach nothing here (an address no server holds): a call made would
    be `provider_unavailable`, not `unsupported`."""
    async with unreachable_gateway(redis_url, provider) as gateway:
        with pytest.raises(Rejection) as missing:
            await HANDLERS["transfer.refresh"](
                handler_ctx(gateway, "transfer.refresh"), c.RefreshTransfer(transfer_id="tr_1")
            )
        assert missing.value.reason is RejectReason.NOT_FOUND, missing.value
        with pytest.raises(UnsupportedOperation):
            await gateway.retrieve_transfer(
                gw.RetrieveTransfer(provider_transfer_id="tr_1"), idempotency_key="k"
            )
