"""Separate charges and transfers (Stripe Connect) through the pipeline, on the real
simulator: transfer.create from a payment's funds (Stripe's source_transaction) or from
the available balance, transfer.reverse in part then in full; each effect once in the
simulator's Redis ledger (a replay moves nothing again), the balance moved; a transfer
above what is left of its payment, or above the available balance, refused; every
rejection before any provider call (another tenant's account or payment, an account not
enabled or without the transfers capability, a payment not succeeded or a destination
charge, another currency, a tenant acting for a connected account, Square and Paddle)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.agents.handlers import HANDLERS, HandlerContext, Rejection
from paystream.streams import commands as c
from paystream.streams.outcomes import CommandRef, RejectReason
from tests.agents.connected_account_setup import handler_ctx, unreachable_gateway
from tests.agents.harness import Harness, data, kind, simulator_of

pytestmark = pytest.mark.asyncio

DAY = 24 * 3600
LINK = {
    "refresh_url": "https://platform.example/reauth",
    "return_url": "https://platform.example/done",
}


def _rejected(out: Any, reason: str) -> str:
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == reason, data(out)
    return str(data(out)["message"])


async def _account(
    h: Harness, t: str, tag: str = "enabled", capabilities: tuple[str, ...] = ("transfers",)
) -> dict[str, Any]:
    """A connected account of ``t``'s, onboarded as ``tag`` (the simulator's email tag)."""
    body = {"country": "US", "email": f"shop+{tag}@example.com", "capabilities": [*capabilities]}
    made = await h.send("connected_account.create", t, body)
    assert kind(made) == "connected_account.created", data(made)
    aid = data(made)["object"]["id"]
    await h.send("connected_account.onboarding_link", t, {"connected_account_id": aid, **LINK})
    read = await h.send("connected_account.refresh", t, {"connected_account_id": aid})
    assert data(read)["object"]["status"] == tag, data(read)
    return dict(data(read)["object"])


async def _paid(h: Harness, t: str, amount: int = 10_000, **kw: Any) -> dict[str, Any]:
    body = {"amount": amount, "currency": "USD", "payment_method_token": "pm_card_visa", **kw}
    out = await h.send("payment.create", t, body)
    assert kind(out) in ("payment.succeeded", "payment.authorized"), data(out)
    return dict(data(out)["object"])


async def _transfers(h: Harness, t: str) -> list[tuple[str, int | None]]:
    return [
        (e.kind, e.amount)
        for e in await simulator_of(h, t).effects()
        if e.kind.startswith("transfer.")
    ]


async def _available(h: Harness, t: str, currency: str = "USD") -> int:
    out = await h.send("balance.retrieve", t, {})
    found = {b["currency"]: b["available"] for b in data(out)["balances"]}
    return int(found.get(currency, 0))


def _tr(account_id: str, amount: int, **kw: Any) -> dict[str, Any]:
    return {"connected_account_id": account_id, "amount": amount, "currency": "USD", **kw}


async def test_the_commands_are_registered() -> None:
    assert {"transfer.create", "transfer.reverse"} <= set(c.COMMANDS)
    assert {"transfer.create", "transfer.reverse"} <= set(HANDLERS)


async def test_a_transfer_from_a_payment_moves_its_funds_once(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    body = _tr(acct["id"], 7_000, payment_id=pay["id"], transfer_group="order-1",
               description="seller share", metadata={"order": "1"})  # fmt: skip
    out = await harness.send("transfer.create", t, body, command_id="tr-1")
    assert kind(out) == "transfer.created", data(out)
    obj = data(out)["object"]
    assert (obj["status"], obj["amount"], obj["amount_reversed"]) == ("created", 7_000, 0)
    assert (obj["connected_account_id"], obj["payment_id"]) == (acct["id"], pay["id"])
    assert (obj["transfer_group"], obj["metadata"]) == ("order-1", {"order": "1"})
    assert obj["provider_transfer_id"].startswith("tr_"), obj
    (related,) = data(out)["related"]
    assert related["entity_id"] == pay["id"] and related["object"]["amount_transferred"] == 7_000
    assert await _transfers(harness, t) == [("transfer.created", 7_000)]
    # Funds of a charge not yet settled: taken from available, below zero until it does.
    assert await _available(harness, t) == -7_000
    # Redelivered (the same command id): the identical answer, nothing moved again.
    again = await harness.send("transfer.create", t, body, command_id="tr-1")
    assert data(again) == data(out)
    assert await _transfers(harness, t) == [("transfer.created", 7_000)]
    effect = [e for e in await simulator_of(harness, t).effects() if e.kind == "transfer.created"]
    assert effect[0].object_id == obj["provider_transfer_id"]


async def test_a_transfer_above_what_is_left_of_its_payment_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    refunded = await harness.send("refund.create", t, {"payment_id": pay["id"], "amount": 2_000})
    assert kind(refunded) == "refund.succeeded", data(refunded)
    first = await harness.send("transfer.create", t, _tr(acct["id"], 5_000, payment_id=pay["id"]))
    assert kind(first) == "transfer.created", data(first)
    # 10 000 captured, 2 000 refunded, 5 000 transferred: 3 000 left.
    over = await harness.send("transfer.create", t, _tr(acct["id"], 3_001, payment_id=pay["id"]))
    message = _rejected(over, "validation_error")
    assert "more than is left" in message and "(30.00 USD:" in message, message
    assert await _transfers(harness, t) == [("transfer.created", 5_000)]
    rest = await harness.send("transfer.create", t, _tr(acct["id"], 3_000, payment_id=pay["id"]))
    assert kind(rest) == "transfer.created", data(rest)
    assert data(rest)["related"][0]["object"]["amount_transferred"] == 8_000


async def _refunds(h: Harness, t: str) -> list[int | None]:
    return [e.amount for e in await simulator_of(h, t).effects() if e.kind == "refund"]


async def test_a_refund_of_funds_a_transfer_moved_is_refused_until_reversed(
    harness: Harness,
) -> None:
    """Stripe refunds a charge whatever its source transfers moved, and reverses none of
    them: the platform would pay the customer back what the account keeps (review
    h79r_g M1). Refused before any call, not remembered: once reversed it is refundable."""
    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    made = await harness.send("transfer.create", t, _tr(acct["id"], 7_000, payment_id=pay["id"]))
    assert kind(made) == "transfer.created", data(made)
    body = {"payment_id": pay["id"], "amount": 5_000}
    over = await harness.send("refund.create", t, body, command_id="re-over")
    message = _rejected(over, "invalid_state")
    assert "70.00 USD" in message and "transfer.reverse" in message, message
    assert "30.00 USD" in message, message  # (what is refundable now)
    whole = await harness.send("refund.create", t, {"payment_id": pay["id"]})
    _rejected(whole, "invalid_state")  # (without an amount: all that is left)
    assert await _refunds(harness, t) == []
    part = await harness.send("refund.create", t, {"payment_id": pay["id"], "amount": 3_000})
    assert kind(part) == "refund.succeeded", data(part)
    tid = data(made)["object"]["id"]
    back = await harness.send("transfer.reverse", t, {"transfer_id": tid, "amount": 5_000})
    assert kind(back) == "transfer.reversed", data(back)
    # The same command again, once the funds came back: refunded now.
    again = await harness.send("refund.create", t, body, command_id="re-over")
    assert kind(again) == "refund.succeeded", data(again)
    assert await _refunds(harness, t) == [3_000, 5_000]


async def test_the_simulator_refuses_more_than_is_left_of_its_source(harness: Harness) -> None:
    """The provider's own check (the handler's, let through, is the provider's to make)."""
    from paystream.gateways import base as gw
    from paystream.gateways.errors import GatewayError
    from paystream.money import Money

    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t, 1_000)
    sim = simulator_of(harness, t)
    req = gw.CreateTransfer(
        amount=Money(amount=1_001, currency="USD"),
        destination_account=acct["provider_account_id"],
        source_payment_id=pay["provider_payment_id"],
    )
    with pytest.raises(GatewayError) as refused:
        await sim.create_transfer(req, idempotency_key="k-over")
    assert "exceeds what is left" in refused.value.message, refused.value
    assert await _transfers(harness, t) == []


async def test_without_a_payment_the_available_balance_pays(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    short = await harness.send("transfer.create", t, _tr(acct["id"], 500))
    assert "more than the platform's available balance" in _rejected(short, "balance_insufficient")
    await _paid(harness, t, 4_000)
    await simulator_of(harness, t).advance_clock(2 * DAY)
    assert await _available(harness, t) == 4_000
    out = await harness.send("transfer.create", t, _tr(acct["id"], 3_000))
    assert kind(out) == "transfer.created", data(out)
    assert "related" not in data(out) or not data(out)["related"], data(out)
    assert await _available(harness, t) == 1_000
    too_much = await harness.send("transfer.create", t, _tr(acct["id"], 1_001))
    _rejected(too_much, "balance_insufficient")
    assert await _transfers(harness, t) == [("transfer.created", 3_000)]


async def test_a_transfer_reversed_in_part_then_in_full(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    made = await harness.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=pay["id"]))
    tid = data(made)["object"]["id"]
    part = {"transfer_id": tid, "amount": 2_500}
    first = await harness.send("transfer.reverse", t, part, command_id="rev-1")
    assert kind(first) == "transfer.reversed", data(first)
    obj = data(first)["object"]
    assert (obj["status"], obj["amount_reversed"]) == ("partially_reversed", 2_500)
    assert (data(first)["previous_status"], data(first)["amount_reversed_now"]) == (
        "created",
        2_500,
    )
    assert data(first)["related"][0]["object"]["amount_transferred"] == 3_500
    again = await harness.send("transfer.reverse", t, part, command_id="rev-1")
    assert data(again) == data(first)
    over = await harness.send("transfer.reverse", t, {"transfer_id": tid, "amount": 3_501})
    assert "more than is left" in _rejected(over, "validation_error")
    rest = await harness.send("transfer.reverse", t, {"transfer_id": tid})
    assert kind(rest) == "transfer.reversed", data(rest)
    assert (data(rest)["object"]["status"], data(rest)["object"]["amount_reversed"]) == (
        "reversed",
        6_000,
    )
    assert data(rest)["amount_reversed_now"] == 3_500
    assert data(rest)["related"][0]["object"]["amount_transferred"] == 0
    done = await harness.send("transfer.reverse", t, {"transfer_id": tid, "amount": 1})
    assert "nothing is left" in _rejected(done, "invalid_state")
    assert await _transfers(harness, t) == [
        ("transfer.created", 6_000), ("transfer.reversed", 2_500), ("transfer.reversed", 3_500)
    ]  # fmt: skip
    assert await _available(harness, t) == 0  # (all of it back)
    # What came back of the payment's transfers may go out again.
    anew = await harness.send("transfer.create", t, _tr(acct["id"], 10_000, payment_id=pay["id"]))
    assert kind(anew) == "transfer.created", data(anew)


async def test_an_unknown_transfer_is_not_found(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send("transfer.reverse", t, {"transfer_id": "tr_nobody"})
    assert _rejected(out, "not_found") == "no such transfer: tr_nobody"


async def test_another_tenants_account_or_payment_is_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    acct = await _account(harness, a)
    mine = await _account(harness, b)
    pay = await _paid(harness, a)
    theirs = await harness.send("transfer.create", b, _tr(acct["id"], 100))
    unknown = await harness.send("transfer.create", b, _tr("ca_nobody", 100))
    assert _rejected(theirs, "not_found") == f"no such connected account: {acct['id']}"
    assert _rejected(unknown, "not_found") == "no such connected account: ca_nobody"
    their_pay = await harness.send("transfer.create", b, _tr(mine["id"], 100, payment_id=pay["id"]))
    assert _rejected(their_pay, "not_found") == f"no such payment: {pay['id']}"
    made = await harness.send("transfer.create", a, _tr(acct["id"], 100, payment_id=pay["id"]))
    their_transfer = {"transfer_id": data(made)["object"]["id"]}
    _rejected(await harness.send("transfer.reverse", b, their_transfer), "not_found")
    assert await _transfers(harness, b) == []


@pytest.mark.parametrize("tag", ["restricted", "rejected"])
async def test_an_account_not_enabled_is_refused(harness: Harness, tag: str) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, tag)
    message = _rejected(
        await harness.send("transfer.create", t, _tr(acct["id"], 100)), "invalid_state"
    )
    assert f"is {tag}" in message and "a transfer needs an enabled account" in message, message
    assert await _transfers(harness, t) == []


async def test_an_account_without_the_transfers_capability_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, capabilities=("card_payments",))
    message = _rejected(
        await harness.send("transfer.create", t, _tr(acct["id"], 100)), "invalid_state"
    )
    assert "without the transfers capability" in message, message
    # The same check now guards a destination charge (the series' _destination): before
    # any call, nothing charged (review h79r_g L2).
    body = {"amount": 1_000, "currency": "USD", "payment_method_token": "pm_card_visa",
            "connected_account_id": acct["id"]}  # fmt: skip
    charge = _rejected(await harness.send("payment.create", t, body), "invalid_state")
    assert "without the transfers capability" in charge and "a destination charge" in charge
    assert [
        e for e in await simulator_of(harness, t).effects() if e.kind in ("charge", "authorization")
    ] == []


async def test_the_source_payment_must_be_a_succeeded_plain_charge(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    held = await _paid(harness, t, capture="manual")
    out = await harness.send("transfer.create", t, _tr(acct["id"], 100, payment_id=held["id"]))
    assert "is authorized" in _rejected(out, "invalid_state")
    dest = await _paid(harness, t, connected_account_id=acct["id"])
    out = await harness.send("transfer.create", t, _tr(acct["id"], 100, payment_id=dest["id"]))
    assert "is a destination charge" in _rejected(out, "invalid_state")
    plain = await _paid(harness, t)
    other = {**_tr(acct["id"], 100, payment_id=plain["id"]), "currency": "EUR"}
    assert "is in USD, not EUR" in _rejected(
        await harness.send("transfer.create", t, other), "validation_error"
    )
    assert await _transfers(harness, t) == []


async def test_a_tenant_acting_for_a_connected_account_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    harness.tenants[t] = {**harness.tenants[t], "connected_account": "acct_1Merchant"}
    message = _rejected(
        await harness.send("transfer.create", t, _tr(acct["id"], 100)), "unsupported"
    )
    assert "acct_1Merchant" in message and "platform" in message, message


async def test_a_tenant_narrowed_out_of_connected_accounts_is_refused(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"capabilities": ["customers", "payments"]})
    message = _rejected(await harness.send("transfer.create", t, _tr("ca_1", 100)), "unsupported")
    assert "connected_accounts" in message, message
    # A reversal reads its transfer first (its own redelivery is answered from the
    # transfer's memory, whatever the gateway is now): none such here, not_found.
    out = await harness.send("transfer.reverse", t, {"transfer_id": "tr_1"})
    assert _rejected(out, "not_found") == "no such transfer: tr_1"


async def test_a_chosen_transfer_id_is_one_transfer(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    body = _tr(acct["id"], 1_000, payment_id=pay["id"], transfer_id="seller-7")
    first = await harness.send("transfer.create", t, body)
    assert data(first)["object"]["id"] == "seller-7", data(first)
    # Another command id naming the same transfer: not a second transfer.
    second = await harness.send("transfer.create", t, body)
    assert _rejected(second, "invalid_state") == "transfer seller-7 already exists"
    assert await _transfers(harness, t) == [("transfer.created", 1_000)]


@pytest.mark.parametrize("provider", ["square", "paddle"])
async def test_square_and_paddle_answer_unsupported_before_any_call(
    redis_url: str, provider: str
) -> None:
    """Their gateways reach nothing here (an address no server holds): a call made would
    be `provider_unavailable`, not `unsupported`."""
    async with unreachable_gateway(redis_url, provider) as gateway:
        body = c.CreateTransfer.model_validate(_tr("ca_1", 100))
        with pytest.raises(Rejection) as refused:
            await HANDLERS["transfer.create"](handler_ctx(gateway, "transfer.create"), body)
        assert refused.value.reason is RejectReason.UNSUPPORTED, refused.value
        assert f"{provider} does not support" in str(refused.value), refused.value
        # (A reversal reads its transfer first: a Square or Paddle tenant has none.)
        with pytest.raises(Rejection) as missing:
            await HANDLERS["transfer.reverse"](
                handler_ctx(gateway, "transfer.reverse"), c.ReverseTransfer(transfer_id="tr_1")
            )
        assert missing.value.reason is RejectReason.NOT_FOUND, missing.value


@pytest.mark.parametrize(
    "body",
    [
        {"connected_account_id": "ca_1", "amount": 0, "currency": "USD"},
        {"connected_account_id": "ca_1", "amount": 100, "currency": "XXX"},
        {"amount": 100, "currency": "USD"},
        {"connected_account_id": "ca_1", "amount": 100, "currency": "USD", "transfer_group": ""},
    ],
)
async def test_a_bad_transfer_is_a_validation_error(harness: Harness, body: dict[str, Any]) -> None:
    t = harness.add_tenant()
    _rejected(await harness.send("transfer.create", t, body), "validation_error")


async def test_a_reversal_let_through_never_lowers_what_is_reversed(harness: Harness) -> None:
    """A reversal whose call reached the provider, its answer lost (let through after the
    crash), then another reversal recorded: answered again under its key, the provider
    says what was reversed then; the transfer keeps what is reversed now (review h79r_g
    L1: it went back to the first answer's, and its payment's amount_transferred with it
    stayed, so the two disagreed)."""
    from paystream.agents.handlers import reverse_transfer
    from paystream.gateways import base as gw

    t = harness.add_tenant()
    acct = await _account(harness, t)
    pay = await _paid(harness, t)
    made = await harness.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=pay["id"]))
    rec = data(made)["object"]
    sim = simulator_of(harness, t)
    cmd = CommandRef(
        tenant_id=t, command_id="rev-a", command_type="transfer.reverse",
        idempotency_key="rev-a", time=datetime.now(UTC),
    )  # fmt: skip
    ctx = HandlerContext(cmd=cmd, gateway=sim, tables=harness.tables, let_through=True)
    # Its first attempt: the provider reversed 2 000, the answer never recorded.
    lost = gw.ReverseTransfer(provider_transfer_id=rec["provider_transfer_id"], amount=2_000)
    await sim.reverse_transfer(lost, idempotency_key=ctx.idem)
    other = await harness.send("transfer.reverse", t, {"transfer_id": rec["id"], "amount": 3_000})
    assert data(other)["object"]["amount_reversed"] == 5_000, data(other)
    done = await reverse_transfer(ctx, c.ReverseTransfer(transfer_id=rec["id"], amount=2_000))
    assert done.primary is not None
    assert done.primary.model_dump()["amount_reversed"] == 5_000
    assert done.extra["amount_reversed_now"] == 0
    assert await _transfers(harness, t) == [
        ("transfer.created", 6_000), ("transfer.reversed", 2_000), ("transfer.reversed", 3_000)
    ]  # fmt: skip
