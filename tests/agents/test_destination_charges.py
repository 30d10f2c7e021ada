"""Destination charges (Stripe Connect) through the pipeline, on the real simulator: a
payment naming a connected account of the tenant's and an application fee, the transfer
and the fee as effects in the simulator's Redis ledger (once per key: a replay makes
none), a partial capture's fee capped at what was captured, a refund's reversed transfer
and refunded fee; every rejection before any provider call (another tenant's account,
one not enabled, a fee without an account or above the amount, a tenant acting for a
connected account, Square and Paddle, refund options on a payment without one)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.handlers import HANDLERS, Rejection
from paystream.agents.idempotency_keeping import request_hash
from paystream.gateways import base as gw
from paystream.gateways.errors import GatewayError
from paystream.gateways.stripe_rules import account_takes_charges
from paystream.streams import commands as c
from paystream.streams.outcomes import RejectReason
from paystream.tables.state_machines import connected_account_status
from tests.agents.connected_account_setup import handler_ctx, unreachable_gateway
from tests.agents.harness import Harness, data, kind, simulator_of

pytestmark = pytest.mark.asyncio

LINK = {
    "refresh_url": "https://platform.example/reauth",
    "return_url": "https://platform.example/done",
}


def _rejected(out: Any, reason: str) -> str:
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == reason, data(out)
    return str(data(out)["message"])


async def _account(h: Harness, t: str, tag: str = "enabled") -> dict[str, Any]:
    """A connected account of ``t``'s, onboarded as ``tag`` (the simulator's email tag)."""
    body = {"country": "US", "email": f"shop+{tag}@example.com", "capabilities": ["transfers"]}
    made = await h.send("connected_account.create", t, body)
    assert kind(made) == "connected_account.created", data(made)
    aid = data(made)["object"]["id"]
    await h.send("connected_account.onboarding_link", t, {"connected_account_id": aid, **LINK})
    read = await h.send("connected_account.refresh", t, {"connected_account_id": aid})
    assert data(read)["object"]["status"] == tag, data(read)
    return dict(data(read)["object"])


def _pay(account_id: str | None, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": 10_000, "currency": "USD",
                            "payment_method_token": "pm_card_visa", **kw}  # fmt: skip
    if account_id is not None:
        body["connected_account_id"] = account_id
    return body


async def _money(h: Harness, t: str) -> list[tuple[str, int | None]]:
    """The simulator's effects but the accounts' own: (kind, amount)."""
    return [
        (e.kind, e.amount)
        for e in await simulator_of(h, t).effects()
        if not e.kind.startswith("account")
    ]


async def test_a_destination_charge_transfers_and_takes_the_fee_back_once(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    body = _pay(acct["id"], application_fee_amount=1_230)
    out = await harness.send("payment.create", t, body, command_id="pay-1")
    assert kind(out) == "payment.succeeded", data(out)
    obj = data(out)["object"]
    assert (obj["connected_account_id"], obj["application_fee_amount"]) == (acct["id"], 1_230)
    assert await _money(harness, t) == [
        ("charge", 10_000), ("transfer", 10_000), ("application_fee", 1_230)
    ]  # fmt: skip
    # Redelivered (the same command id): answered as it was, nothing moved again.
    again = await harness.send("payment.create", t, body, command_id="pay-1")
    assert data(again)["object"]["id"] == obj["id"], data(again)
    assert len(await _money(harness, t)) == 3
    transfer = [e for e in await simulator_of(harness, t).effects() if e.kind == "transfer"]
    assert transfer[0].object_id == acct["provider_account_id"]


async def test_without_a_fee_the_whole_amount_is_transferred(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    out = await harness.send("payment.create", t, _pay(acct["id"]))
    assert data(out)["object"]["application_fee_amount"] == 0, data(out)
    assert await _money(harness, t) == [("charge", 10_000), ("transfer", 10_000)]


async def test_a_plain_payment_names_no_destination(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, _pay(None))
    assert kind(out) == "payment.succeeded", data(out)
    obj = data(out)["object"]
    assert "connected_account_id" not in obj and "application_fee_amount" not in obj, obj
    assert await _money(harness, t) == [("charge", 10_000)]


async def test_a_partial_capture_caps_the_fee_at_what_was_captured(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send(
        "payment.create", t, _pay(acct["id"], application_fee_amount=4_000, capture="manual")
    )
    assert kind(made) == "payment.authorized", data(made)
    pid = data(made)["object"]["id"]
    assert await _money(harness, t) == [("authorization", 10_000)]  # (nothing moved yet)
    out = await harness.send("payment.capture", t, {"payment_id": pid, "amount": 3_000})
    assert kind(out) == "payment.succeeded", data(out)
    assert data(out)["object"]["application_fee_amount"] == 3_000
    assert (await _money(harness, t))[1:] == [
        ("capture", 3_000), ("transfer", 3_000), ("application_fee", 3_000)
    ]  # fmt: skip


async def test_a_partial_capture_above_the_fee_keeps_it(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send(
        "payment.create", t, _pay(acct["id"], application_fee_amount=500, capture="manual")
    )
    pid = data(made)["object"]["id"]
    out = await harness.send("payment.capture", t, {"payment_id": pid, "amount": 6_000})
    assert data(out)["object"]["application_fee_amount"] == 500, data(out)
    assert (await _money(harness, t))[1:] == [
        ("capture", 6_000), ("transfer", 6_000), ("application_fee", 500)
    ]  # fmt: skip


async def test_a_refund_reverses_the_transfer_and_refunds_the_fee(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send("payment.create", t, _pay(acct["id"], application_fee_amount=1_000))
    pid = data(made)["object"]["id"]
    body = {"payment_id": pid, "amount": 5_000, "reverse_transfer": True,
            "refund_application_fee": True}  # fmt: skip
    out = await harness.send("refund.create", t, body, command_id="re-1")
    assert kind(out) == "refund.succeeded", data(out)
    assert (await _money(harness, t))[3:] == [
        ("refund", 5_000), ("transfer_reversal", 5_000), ("application_fee_refund", 500)
    ]  # fmt: skip
    await harness.send("refund.create", t, body, command_id="re-1")  # (redelivered)
    assert len(await _money(harness, t)) == 6
    # Without the options the platform bears the refund: nothing reversed.
    rest = await harness.send("refund.create", t, {"payment_id": pid, "amount": 1_000})
    assert kind(rest) == "refund.succeeded", data(rest)
    assert (await _money(harness, t))[6:] == [("refund", 1_000)]


async def test_refund_options_need_a_destination_charge(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await harness.send("payment.create", t, _pay(None))
    pid = data(made)["object"]["id"]
    both = {"reverse_transfer": True, "refund_application_fee": True}
    for options in ({"reverse_transfer": True}, both):
        out = await harness.send("refund.create", t, {"payment_id": pid, **options})
        assert "destination charge" in _rejected(out, "validation_error")
    assert await _money(harness, t) == [("charge", 10_000)]


async def test_another_tenants_account_is_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    acct = await _account(harness, a)
    theirs = await harness.send("payment.create", b, _pay(acct["id"]))
    unknown = await harness.send("payment.create", b, _pay("ca_nobody"))
    assert _rejected(theirs, "not_found") == f"no such connected account: {acct['id']}"
    assert _rejected(unknown, "not_found") == "no such connected account: ca_nobody"
    assert await _money(harness, b) == []


@pytest.mark.parametrize("tag", ["restricted", "rejected"])
async def test_an_account_not_enabled_is_refused(harness: Harness, tag: str) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, tag)
    message = _rejected(await harness.send("payment.create", t, _pay(acct["id"])), "invalid_state")
    assert f"is {tag}" in message and "enabled" in message, message
    assert await _money(harness, t) == []


async def test_a_pending_account_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await harness.send("connected_account.create", t, {"country": "US"})
    aid = data(made)["object"]["id"]
    message = _rejected(await harness.send("payment.create", t, _pay(aid)), "invalid_state")
    assert "is pending" in message, message


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"application_fee_amount": 10}, "needs connected_account_id"),
        ({"connected_account_id": "ca_1", "application_fee_amount": 10_001}, "exceeds"),
        ({"connected_account_id": "ca_1", "application_fee_amount": -1}, "greater than"),
    ],
)
async def test_a_bad_fee_is_a_validation_error(
    harness: Harness, extra: dict[str, Any], needle: str
) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, {**_pay(None), **extra})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "validation_error"
    assert needle in str(data(out)), data(out)
    assert await _money(harness, t) == []


async def test_a_tenant_acting_for_a_connected_account_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    harness.tenants[t] = {**harness.tenants[t], "connected_account": "acct_1Merchant"}
    message = _rejected(await harness.send("payment.create", t, _pay(acct["id"])), "unsupported")
    assert "acct_1Merchant" in message and "platform" in message, message
    assert await _money(harness, t) == []


async def test_a_tenant_narrowed_out_of_connected_accounts_is_refused(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"capabilities": ["customers", "payments"]})
    message = _rejected(await harness.send("payment.create", t, _pay("ca_1")), "unsupported")
    assert "connected_accounts" in message, message


@pytest.mark.parametrize("provider", ["square", "paddle"])
async def test_square_and_paddle_answer_unsupported_before_any_call(
    redis_url: str, provider: str
) -> None:
    """Their gateways reach nothing here (an address no server holds): a call made would
    be `provider_unavailable`, not `unsupported`."""
    async with unreachable_gateway(redis_url, provider) as gateway:
        body = c.CreatePayment.model_validate(_pay("ca_1", application_fee_amount=5))
        with pytest.raises(Rejection) as refused:
            await HANDLERS["payment.create"](handler_ctx(gateway, "payment.create"), body)
        assert refused.value.reason is RejectReason.UNSUPPORTED, refused.value
        assert f"{provider} does not support" in str(refused.value), refused.value


async def test_earlier_commands_keep_their_hashes() -> None:
    """A payment or refund without the new fields hashes as before they existed."""
    pay = c.CreatePayment.model_validate(_pay(None))
    assert request_hash("payment.create", pay) == request_hash(
        "payment.create", {k: v for k, v in pay.model_dump(mode="json").items()
                           if k not in ("connected_account_id", "application_fee_amount")}
    )  # fmt: skip
    refund = c.CreateRefund(payment_id="p1")
    assert request_hash("refund.create", refund) == request_hash(
        "refund.create", {"payment_id": "p1", "refund_id": None, "amount": None,
                          "reason": None, "metadata": {}}
    )  # fmt: skip


async def test_a_capture_made_at_the_provider_is_read_back_with_the_fee_capped(
    harness: Harness,
) -> None:
    """Captured in part outside paystream (the provider's dashboard) and read back by a
    refresh: the fee recorded is what the provider collected, at most the capture."""
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send(
        "payment.create", t, _pay(acct["id"], application_fee_amount=4_000, capture="manual")
    )
    obj = data(made)["object"]
    capture = gw.CapturePayment(provider_payment_id=obj["provider_payment_id"], amount=2_500)
    await simulator_of(harness, t).capture_payment(capture, idempotency_key="dashboard-1")
    read = await harness.send("payment.refresh", t, {"payment_id": obj["id"]})
    assert kind(read) == "payment.succeeded", data(read)
    assert data(read)["object"]["application_fee_amount"] == 2_500
    assert (await _money(harness, t))[-2:] == [("transfer", 2_500), ("application_fee", 2_500)]


async def test_refunding_the_fee_needs_the_transfer_reversed(harness: Harness) -> None:
    """Stripe (Connect, destination charges, Issue refunds): "if you refund the
    application fee for a destination charge, you must also reverse the transfer".
    Alone it would hand the platform's fee to an account that keeps its transfer:
    refused before any call, nothing refunded."""
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send("payment.create", t, _pay(acct["id"], application_fee_amount=1_000))
    pid = data(made)["object"]["id"]
    for reverse in (None, False):
        body: dict[str, Any] = {"payment_id": pid, "refund_application_fee": True}
        if reverse is not None:
            body["reverse_transfer"] = reverse
        out = await harness.send("refund.create", t, body)
        _rejected(out, "validation_error")
        assert "refund_application_fee needs reverse_transfer" in str(data(out)), data(out)
    assert [k for k, _ in await _money(harness, t)] == ["charge", "transfer", "application_fee"]


async def test_the_simulator_refuses_a_fee_refund_without_the_reversal(harness: Harness) -> None:
    """The simulator (as Stripe) refuses it too, for a caller that is not the handler."""
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send("payment.create", t, _pay(acct["id"], application_fee_amount=1_000))
    req = gw.CreateRefund(
        provider_payment_id=data(made)["object"]["provider_payment_id"],
        refund_application_fee=True,
    )
    with pytest.raises(GatewayError) as refused:
        await simulator_of(harness, t).create_refund(req, idempotency_key="fee-alone")
    assert "reverse_transfer" in str(refused.value), refused.value
    assert [k for k, _ in await _money(harness, t)] == ["charge", "transfer", "application_fee"]


async def test_refunded_entirely_in_parts_the_whole_transfer_and_fee_come_back(
    harness: Harness,
) -> None:
    """Stripe's flow of funds (Connect, destination charges): with an application fee
    "the full charge amount is immediately transferred ... to the transfer_data[destination]
    account", the fee "then transferred back to the platform"; a refund reversing the
    transfer takes back "a proportional amount of the transfer", and the charge refunded
    entirely, "the entire transfer is reversed" and "the entire application fee is
    refunded as well". Four refunds of a quarter: 10 000 reversed, the fee of 1 given back
    (each quarter's share of it rounds to 0: the last takes what is left)."""
    t = harness.add_tenant()
    acct = await _account(harness, t)
    made = await harness.send("payment.create", t, _pay(acct["id"], application_fee_amount=1))
    pid = data(made)["object"]["id"]
    assert (await _money(harness, t)) == [
        ("charge", 10_000), ("transfer", 10_000), ("application_fee", 1)
    ]  # fmt: skip
    body = {"payment_id": pid, "amount": 2_500, "reverse_transfer": True,
            "refund_application_fee": True}  # fmt: skip
    for _ in range(4):
        out = await harness.send("refund.create", t, body)
        assert kind(out) == "refund.succeeded", data(out)
    moved = await _money(harness, t)
    reversed_ = sum(a or 0 for k, a in moved if k == "transfer_reversal")
    fee_back = sum(a or 0 for k, a in moved if k == "application_fee_refund")
    assert (reversed_, fee_back) == (10_000, 1), moved


async def test_the_simulator_refuses_a_capture_fee_without_a_destination(
    harness: Harness,
) -> None:
    """A capture naming an application fee for a payment that transfers nothing is refused
    (as the FAKE refuses it for Stripe), not dropped: nothing is captured."""
    t = harness.add_tenant()
    made = await harness.send("payment.create", t, _pay(None, capture="manual"))
    req = gw.CapturePayment(
        provider_payment_id=data(made)["object"]["provider_payment_id"],
        amount=5_000,
        application_fee_amount=100,
    )
    with pytest.raises(GatewayError) as refused:
        await simulator_of(harness, t).capture_payment(req, idempotency_key="fee-no-dest")
    assert "destination" in str(refused.value), refused.value
    assert [k for k, _ in await _money(harness, t)] == ["authorization"]


async def test_a_recipient_account_takes_destination_charges(harness: Harness) -> None:
    """Review h79r_a L3: an account that requested `transfers` alone (Stripe's recipient
    service agreement: it "can't process payments") never has its charges enabled; its
    payouts enabled, it is `enabled` and takes destination charges (Stripe needs the
    destination's `transfers` capability only)."""
    t = harness.add_tenant()
    acct = await _account(harness, t)  # (capabilities: transfers alone)
    assert (acct["charges_enabled"], acct["payouts_enabled"], acct["status"]) == (
        False, True, "enabled"
    ), acct  # fmt: skip
    out = await harness.send("payment.create", t, _pay(acct["id"], application_fee_amount=500))
    assert kind(out) == "payment.succeeded", data(out)
    assert (await _money(harness, t))[1:] == [("transfer", 10_000), ("application_fee", 500)]


async def test_an_account_taking_charges_is_enabled_with_them_only(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {"country": "US", "email": "shop+enabled@example.com",
            "capabilities": ["card_payments", "transfers"]}  # fmt: skip
    made = await harness.send("connected_account.create", t, body)
    aid = data(made)["object"]["id"]
    await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": aid, **LINK}
    )
    read = await harness.send("connected_account.refresh", t, {"connected_account_id": aid})
    obj = data(read)["object"]
    assert (obj["charges_enabled"], obj["payouts_enabled"], obj["status"]) == (
        True,
        True,
        "enabled",
    )


async def test_an_account_status_needs_charges_only_where_it_takes_them() -> None:
    assert [account_takes_charges(c) for c in ([], ["transfers"], ["card_payments"])] == [
        True, False, True
    ]  # fmt: skip
    recipient = connected_account_status(False, True, True, None, "pending", takes_charges=False)
    merchant = connected_account_status(False, True, True, None, "pending")
    assert (recipient, merchant) == ("enabled", "restricted")
    # Payouts off (a requirement past due): restricted either way.
    assert connected_account_status(False, False, True, "requirements.past_due", "enabled",
                                    takes_charges=False) == "restricted"  # fmt: skip
