"""Payouts and balances through the pipeline, on the real simulator: the commands, their
outcomes and rejections, the balance's arithmetic (captures pending for the settlement
delay on the tenant's clock, then available; refunds, disputes (their amount and fee as
they open), payouts, their cancels and failures), payouts moving on the clock, exactly-once."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _balance(h: Harness, t: str) -> dict[str, tuple[int, int]]:
    out = await h.send("balance.retrieve", t, {})
    assert kind(out) == "balance.retrieved", data(out)
    return {b["currency"]: (b["available"], b["pending"]) for b in data(out)["balances"]}


async def _charge(h: Harness, t: str, amount: int, currency: str = "EUR", **kw: Any) -> Any:
    out = await h.send(
        "payment.create",
        t,
        {"amount": amount, "currency": currency, "payment_method_token": "pm_card_visa", **kw},
    )
    assert kind(out) in ("payment.succeeded", "payment.authorized"), data(out)
    return out


async def _settled(h: Harness, t: str, amount: int, currency: str = "EUR") -> None:
    """``amount`` captured and its settlement delay passed: available."""
    await _charge(h, t, amount, currency)
    await _gateway(h, t).advance_clock(2 * DAY)


async def _payout_effects(h: Harness, t: str) -> list[Any]:
    return [e for e in await _gateway(h, t).effects() if e.kind.startswith("payout.")]


async def test_the_commands_are_registered() -> None:
    assert {"payout.create", "payout.cancel", "payout.refresh", "balance.retrieve"} <= set(COMMANDS)
    assert {"payout.refresh", "balance.retrieve"} <= PROVIDER_READS


async def test_a_capture_is_pending_until_the_settlement_delay_passes(harness: Harness) -> None:
    t = harness.add_tenant()
    assert await _balance(harness, t) == {}
    await _charge(harness, t, 5000)
    assert await _balance(harness, t) == {"EUR": (0, 5000)}
    await _gateway(harness, t).advance_clock(DAY)
    assert await _balance(harness, t) == {"EUR": (0, 5000)}
    await _gateway(harness, t).advance_clock(DAY)
    assert await _balance(harness, t) == {"EUR": (5000, 0)}


async def test_partial_captures_refunds_and_currencies(harness: Harness) -> None:
    t = harness.add_tenant()
    auth = await _charge(harness, t, 10000, capture="manual")
    assert await _balance(harness, t) == {}  # an authorization moves no money
    pid = data(auth)["object"]["id"]
    captured = await harness.send("payment.capture", t, {"payment_id": pid, "amount": 6000})
    assert kind(captured) == "payment.succeeded", data(captured)
    await _charge(harness, t, 700, "USD")
    assert await _balance(harness, t) == {"EUR": (0, 6000), "USD": (0, 700)}
    await _gateway(harness, t).advance_clock(2 * DAY)
    refunded = await harness.send("refund.create", t, {"payment_id": pid, "amount": 1000})
    assert kind(refunded) == "refund.succeeded", data(refunded)
    assert await _balance(harness, t) == {"EUR": (5000, 0), "USD": (700, 0)}
    # A refund of money still pending takes from available: below zero, as Stripe's.
    fresh = await _charge(harness, t, 300, "USD")
    await harness.send("refund.create", t, {"payment_id": data(fresh)["object"]["id"]})
    await harness.send("refund.create", t, {"payment_id": data(fresh)["object"]["id"]})
    assert await _balance(harness, t) == {"EUR": (5000, 0), "USD": (400, 300)}


async def test_a_dispute_takes_its_amount_and_fee_from_available_as_it_opens(
    harness: Harness,
) -> None:
    # (Stripe's balance: the amount and the dispute fee, EUR 20.00, withdrawn at once;
    # accepting it moves nothing more: tests/agents/test_dispute_balance.py.)
    t = harness.add_tenant()
    await _settled(harness, t, 4000)
    disputed = await _charge(harness, t, 1500, payment_method_token="pm_card_createDispute")
    assert await _balance(harness, t) == {"EUR": (4000 - 1500 - 2000, 1500)}
    dispute_id = data(disputed)["related"][0]["entity_id"]
    accepted = await harness.send("dispute.accept", t, {"dispute_id": dispute_id})
    assert kind(accepted) == "dispute.closed", data(accepted)
    assert await _balance(harness, t) == {"EUR": (4000 - 1500 - 2000, 1500)}


async def test_a_standard_payout_moves_on_the_clock_to_paid(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    made = await harness.send(
        "payout.create",
        t,
        {"payout_id": "po1", "amount": 3000, "currency": "eur", "statement_descriptor": "ACME"},
    )
    assert kind(made) == "payout.created", data(made)
    po = data(made)["object"]
    assert (po["id"], po["status"], po["amount"], po["currency"]) == ("po1", "pending", 3000, "EUR")
    assert po["method"] == "standard" and po["arrival_date"] is not None
    assert po["provider_payout_id"].startswith("po_")
    assert harness.tables.payouts[f"{t}:po1"]["status"] == "pending"
    assert await _balance(harness, t) == {"EUR": (2000, 0)}
    same = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(same) == "payout.updated" and data(same)["object"]["status"] == "pending"
    await _gateway(harness, t).advance_clock(DAY)
    moving = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(moving) == "payout.updated", data(moving)
    assert data(moving)["object"]["status"] == "in_transit"
    assert data(moving)["previous_status"] == "pending"
    await _gateway(harness, t).advance_clock(DAY)
    paid = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(paid) == "payout.paid", data(paid)
    assert data(paid)["previous_status"] == "in_transit"
    assert await _balance(harness, t) == {"EUR": (2000, 0)}
    late = await harness.send("payout.cancel", t, {"payout_id": "po1"})
    assert kind(late) == "command.rejected" and data(late)["reason"] == "invalid_state"
    assert [e.kind for e in await _payout_effects(harness, t)] == ["payout.created"]


async def test_an_instant_payout_is_paid_at_once(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    made = await harness.send(
        "payout.create",
        t,
        {"payout_id": "po1", "amount": 5000, "currency": "EUR", "method": "instant"},
    )
    assert kind(made) == "payout.created" and data(made)["object"]["status"] == "in_transit"
    paid = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(paid) == "payout.paid", data(paid)
    assert await _balance(harness, t) == {"EUR": (0, 0)}


async def test_a_cancel_gives_the_amount_back(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    await harness.send("payout.create", t, {"payout_id": "po1", "amount": 5000, "currency": "EUR"})
    assert await _balance(harness, t) == {"EUR": (0, 0)}
    canceled = await harness.send("payout.cancel", t, {"payout_id": "po1"})
    assert kind(canceled) == "payout.canceled", data(canceled)
    assert data(canceled)["previous_status"] == "pending"
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    again = await harness.send("payout.cancel", t, {"payout_id": "po1"})
    assert data(again)["reason"] == "invalid_state"
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    # In transit: with the bank, no longer canceled (the provider says so too).
    await harness.send("payout.create", t, {"payout_id": "po2", "amount": 100, "currency": "EUR"})
    await _gateway(harness, t).advance_clock(DAY)
    moved = await harness.send("payout.cancel", t, {"payout_id": "po2"})
    assert data(moved)["reason"] == "invalid_state", data(moved)
    assert await _balance(harness, t) == {"EUR": (4900, 0)}


@pytest.mark.parametrize(
    ("account", "code"),
    [("000111111113", "account_closed"), ("000111111116", "no_account"),
     ("000222222227", "insufficient_funds")],
)  # fmt: skip
async def test_a_failing_destination_fails_the_payout_and_returns_it(
    harness: Harness, account: str, code: str
) -> None:
    t = harness.add_tenant(gateway_options={"payout_destination": account})
    await _settled(harness, t, 5000)
    made = await harness.send(
        "payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"}
    )
    assert kind(made) == "payout.created", data(made)
    assert await _balance(harness, t) == {"EUR": (1000, 0)}
    await _gateway(harness, t).advance_clock(2 * DAY)
    failed = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    assert data(failed)["object"]["failure_code"] == code
    assert data(failed)["object"]["failure_message"]
    assert data(failed)["error"]["decline_code"] == code
    assert await _balance(harness, t) == {"EUR": (5000, 0)}
    # Read again: failed is final (answered payout.updated from the record, unread), its
    # amount returned once (review h74g: a second payout.failed read as money back again).
    again = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(again) == "payout.updated", data(again)
    assert await _balance(harness, t) == {"EUR": (5000, 0)}


async def test_a_payout_above_available_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    await _charge(harness, t, 5000)  # pending only
    out = await harness.send(
        "payout.create", t, {"payout_id": "po1", "amount": 1, "currency": "EUR"}
    )
    assert kind(out) == "command.rejected"
    assert data(out)["reason"] == "balance_insufficient", data(out)
    assert f"{t}:po1" not in harness.tables.payouts
    await _gateway(harness, t).advance_clock(2 * DAY)
    over = await harness.send(
        "payout.create", t, {"payout_id": "po2", "amount": 5001, "currency": "EUR"}
    )
    assert data(over)["reason"] == "balance_insufficient", data(over)
    usd = await harness.send(
        "payout.create", t, {"payout_id": "po3", "amount": 1, "currency": "USD"}
    )
    assert data(usd)["reason"] == "balance_insufficient", data(usd)
    fits = await harness.send(
        "payout.create", t, {"payout_id": "po4", "amount": 5000, "currency": "EUR"}
    )
    assert kind(fits) == "payout.created", data(fits)
    assert await _payout_effects(harness, t) != [] and len(await _payout_effects(harness, t)) == 1


async def test_validation(harness: Harness) -> None:
    t = harness.add_tenant()
    for bad in (
        {"amount": 0, "currency": "EUR"},
        {"amount": 10, "currency": "EUR", "method": "overnight"},
        {"amount": 10, "currency": "EUR", "statement_descriptor": "x" * 23},
        {"amount": 10, "currency": "EUR", "statement_descriptor": "<b>"},
        {"amount": 10, "currency": "EUR", "statement_descriptor": 'say "hi"'},
        {"amount": 10, "currency": "EUR", "statement_descriptor": "it's"},
        {"amount": 10, "currency": "EUR", "statement_descriptor": "back\\slash"},
        {"amount": 1.5, "currency": "EUR"},
        {"amount": 10, "currency": "XXX1"},
    ):
        out = await harness.send("payout.create", t, bad)
        assert data(out)["reason"] == "validation_error", (bad, data(out))
    extra = await harness.send("balance.retrieve", t, {"currency": "EUR"})
    assert data(extra)["reason"] == "validation_error"


async def test_not_found_and_another_tenants_payout(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    await _settled(harness, a, 5000)
    await harness.send("payout.create", a, {"payout_id": "po1", "amount": 100, "currency": "EUR"})
    missing = await harness.send("payout.refresh", b, {"payout_id": "nope"})
    theirs = await harness.send("payout.refresh", b, {"payout_id": "po1"})
    cancel = await harness.send("payout.cancel", b, {"payout_id": "po1"})
    assert data(missing)["reason"] == data(theirs)["reason"] == "not_found"
    assert data(cancel)["reason"] == "not_found"
    assert data(theirs)["message"] == data(missing)["message"].replace("nope", "po1")
    assert await _balance(harness, b) == {}
    assert harness.tables.payouts[f"{a}:po1"]["status"] == "pending"


async def test_a_provider_without_payouts_is_unsupported(harness: Harness) -> None:
    t = harness.add_tenant(
        gateway_options={"capabilities": ["customers", "payment_methods", "payments"]}
    )
    out = await harness.send("payout.create", t, {"amount": 1, "currency": "EUR"})
    assert data(out)["reason"] == "unsupported", data(out)
    read = await harness.send("balance.retrieve", t, {})
    assert data(read)["reason"] == "unsupported", data(read)
    assert await _payout_effects(harness, t) == []


async def test_square_lacks_payouts_and_stripe_has_them() -> None:
    from paystream.gateways.base import Capability
    from paystream.gateways.square.gateway import SQUARE_CAPABILITIES
    from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES

    assert Capability.PAYOUTS not in SQUARE_CAPABILITIES
    assert Capability.PAYOUTS in STRIPE_CAPABILITIES


async def test_replay_and_conflict(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    body = {"payout_id": "po1", "amount": 1000, "currency": "EUR"}
    event = build_command("payout.create", t, body, command_id="po-cmd-1")
    await harness.assert_redelivered_alike(event)
    again = await harness.send("payout.create", t, body, command_id="po-cmd-1")
    assert kind(again) == "payout.created"
    other = await harness.send("payout.create", t, {**body, "amount": 999}, command_id="po-cmd-1")
    assert data(other)["reason"] == "idempotency_conflict", data(other)
    # The same payout id under another command: refused (it exists), nothing paid out.
    twice = await harness.send("payout.create", t, body)
    assert data(twice)["reason"] == "invalid_state", data(twice)
    cancel = build_command("payout.cancel", t, {"payout_id": "po1"}, command_id="po-cx")
    await harness.assert_redelivered_alike(cancel)
    assert [e.kind for e in await _payout_effects(harness, t)] == [
        "payout.created",
        "payout.canceled",
    ]
    assert await _balance(harness, t) == {"EUR": (5000, 0)}


async def test_a_create_whose_writes_were_lost_pays_out_once(harness: Harness) -> None:
    """A crash after the provider paid out, before the tables kept anything: the command
    redelivered asks again under the same key, answered from it, paid out once."""
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    event = build_command(
        "payout.create", t, {"payout_id": "po1", "amount": 3000, "currency": "EUR"},
        command_id="po-crash",
    )  # fmt: skip
    _, first = await harness.send_event(event)

    def crash() -> None:
        for table in (harness.tables.payouts, harness.idempotency):
            for key in [k for k in table if k.startswith(f"{t}:")]:
                del table[key]

    crash()
    _, second = await harness.send_event(event)
    assert first is not None and second is not None
    assert kind(second) == "payout.created", data(second)
    assert (
        data(second)["object"]["provider_payout_id"] == data(first)["object"]["provider_payout_id"]
    )
    [created] = await _payout_effects(harness, t)
    assert (created.kind, created.amount) == ("payout.created", 3000)
    assert await _balance(harness, t) == {"EUR": (2000, 0)}
    # Sent again under a new command id (a producer's retry): the id's key, paid once.
    crash()
    resent = await harness.send(
        "payout.create", t, {"payout_id": "po1", "amount": 3000, "currency": "EUR"}
    )
    assert kind(resent) == "payout.created", data(resent)
    assert len(await _payout_effects(harness, t)) == 1
    assert await _balance(harness, t) == {"EUR": (2000, 0)}


async def test_a_derived_payout_id(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    out = await harness.send("payout.create", t, {"amount": 10, "currency": "EUR"})
    assert kind(out) == "payout.created", data(out)
    assert data(out)["object"]["id"].startswith("po_")


async def test_two_payouts_racing_for_one_balance(harness: Harness) -> None:
    """Made at once against the simulator (two workers' calls): one takes the balance,
    the other is refused; the balance never goes below zero by a payout."""
    import asyncio

    from paystream.gateways.base import CreatePayout
    from paystream.gateways.errors import ErrorCode, GatewayError
    from paystream.money import Money

    t = harness.add_tenant()
    await _settled(harness, t, 5000)
    gateway = _gateway(harness, t)
    req = CreatePayout(amount=Money(amount=4000, currency="EUR"))
    got = await asyncio.gather(
        *(gateway.create_payout(req, idempotency_key=f"k{i}") for i in range(4)),
        return_exceptions=True,
    )
    made = [r for r in got if not isinstance(r, BaseException)]
    refused = [r for r in got if isinstance(r, GatewayError)]
    assert len(made) == 1 and len(refused) == 3, got
    assert all(r.code is ErrorCode.BALANCE_INSUFFICIENT for r in refused)
    assert await _balance(harness, t) == {"EUR": (1000, 0)}


async def test_a_payout_can_fail_after_it_was_paid() -> None:
    """Stripe: a payout can fail after being marked paid (the bank returns it)."""
    from paystream.tables.state_machines import InvalidState, check_payout_move

    check_payout_move("paid", "failed")
    check_payout_move("pending", "in_transit")
    check_payout_move("in_transit", "failed")
    for status, to in (("paid", "pending"), ("canceled", "paid"), ("failed", "paid"),
                       ("in_transit", "canceled"), ("in_transit", "pending")):  # fmt: skip
        with pytest.raises(InvalidState):
            check_payout_move(status, to)


async def test_a_settlement_delay_option(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"settlement_delay_days": 0})
    await _charge(harness, t, 250)
    assert await _balance(harness, t) == {"EUR": (250, 0)}
