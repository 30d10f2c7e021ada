"""`payment.refresh`: a payment left waiting on its customer's 3-D Secure step moves on
once read back from the provider (no webhook reaches paystream), and only then may it be
captured or refunded. Its answers are kept like any command's."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.handlers import HandlerContext, _read_back_failure
from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.gateways.simulator import SimulatorGateway, results
from paystream.gateways.simulator import operations as ops
from paystream.gateways.simulator.store import Effect
from paystream.insights.observe import observe
from paystream.money import Money
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, new_tenant_id

_3DS = {"amount": 1500, "currency": "EUR", "payment_method_token": "pm_card_authenticationRequired"}


def _simulator(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _waiting(h: Harness, tenant: str, payment_id: str, **extra: object) -> str:
    out = await h.send("payment.create", tenant, {**_3DS, "payment_id": payment_id, **extra})
    assert kind(out) == "payment.requires_action", data(out)
    return str(h.tables.payments[f"{tenant}:{payment_id}"]["provider_payment_id"])


async def test_a_payment_read_back_after_3ds_succeeds_and_can_be_refunded(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_a")
    # Still waiting at the provider: said so, and nothing moves.
    still = await harness.send("payment.refresh", t, {"payment_id": "pay_a"})
    assert kind(still) == "payment.requires_action", data(still)
    assert data(still)["previous_status"] == "requires_action"
    assert data(still)["object"]["next_action"]["type"] == "redirect_to_url"
    refused = await harness.send("refund.create", t, {"payment_id": "pay_a"})
    assert data(refused)["reason"] == "invalid_state"

    await _simulator(harness, t).complete_authentication(provider_id)
    done = await harness.send("payment.refresh", t, {"payment_id": "pay_a"})
    assert kind(done) == "payment.succeeded", data(done)
    assert data(done)["previous_status"] == "requires_action"
    assert data(done)["object"]["amount_captured"] == 1500
    assert data(done)["object"]["next_action"] is None
    held = harness.tables.payments[f"{t}:pay_a"]
    assert (held["status"], held["amount_captured"], held["next_action"]) == (
        "succeeded",
        1500,
        None,
    )

    refund = await harness.send("refund.create", t, {"payment_id": "pay_a", "amount": 500})
    assert kind(refund) == "refund.succeeded", data(refund)
    effects = [(e.kind, e.amount) for e in await _simulator(harness, t).effects()]
    assert effects == [("charge", 1500), ("refund", 500)]
    # Still a read (a dispute may follow days later): answered as it stands, its
    # refund kept as paystream counts it.
    again = await harness.send("payment.refresh", t, {"payment_id": "pay_a"})
    assert kind(again) == "payment.succeeded", data(again)
    assert data(again)["previous_status"] == "succeeded"
    assert data(again)["object"]["amount_refunded"] == 500


async def test_a_manual_payment_read_back_is_authorised_then_captured(harness: Harness) -> None:
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_m", capture="manual")
    await _simulator(harness, t).complete_authentication(provider_id)
    authorised = await harness.send("payment.refresh", t, {"payment_id": "pay_m"})
    assert kind(authorised) == "payment.authorized", data(authorised)
    captured = await harness.send("payment.capture", t, {"payment_id": "pay_m", "amount": 1000})
    assert kind(captured) == "payment.succeeded", data(captured)
    assert data(captured)["object"]["amount_captured"] == 1000
    effects = [e.kind for e in await _simulator(harness, t).effects()]
    assert effects == ["authorization", "capture"]


async def test_a_failed_3ds_step_reads_back_failed_and_may_still_be_closed(
    harness: Harness,
) -> None:
    """The provider keeps it open (Stripe: requires_payment_method; the customer, who
    holds the client secret, may pay it with another card): it may be read back again,
    or canceled to close it there; nothing else."""
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_f")
    await _simulator(harness, t).complete_authentication(provider_id, succeed=False)
    failed = await harness.send("payment.refresh", t, {"payment_id": "pay_f"})
    assert kind(failed) == "payment.failed", data(failed)
    assert data(failed)["object"]["failure_code"] == "payment_intent_authentication_failure"
    # Its failure as `error`, as a create's decline carries it: not an issuer's decline.
    error = data(failed)["error"]
    assert (error["code"], error.get("decline_code")) == ("authentication_required", None)
    seen = observe(failed)
    assert seen is not None
    assert (seen.decline_code, seen.card_declined, seen.attempt) == (
        "authentication_required",
        False,
        False,
    )
    again = await harness.send("payment.refresh", t, {"payment_id": "pay_f"})
    assert (kind(again), data(again)["previous_status"]) == ("payment.failed", "failed")
    refund = await harness.send("refund.create", t, {"payment_id": "pay_f"})
    assert data(refund)["reason"] == "invalid_state"
    capture = await harness.send("payment.capture", t, {"payment_id": "pay_f"})
    assert data(capture)["reason"] == "invalid_state"
    cancel = await harness.send("payment.cancel", t, {"payment_id": "pay_f"})
    assert kind(cancel) == "payment.canceled", data(cancel)
    # Canceled is final: read again, answered from the record, nothing counted again.
    closed = await harness.send("payment.refresh", t, {"payment_id": "pay_f"})
    assert (kind(closed), data(closed)["previous_status"]) == ("payment.canceled", "canceled")
    seen = observe(closed)
    assert seen is None or (seen.attempt, seen.declined, seen.captured) == (False, 0, 0), seen
    assert await _simulator(harness, t).effects() == []


async def test_a_decline_after_a_passed_3ds_step_reads_back_as_the_issuers(
    harness: Harness,
) -> None:
    """Stripe's 3178 card: the customer passes the step and the issuer then declines for
    insufficient funds. Read back, a decline (counted as one), the payment still open
    for another card: canceled to close it. Nothing moved."""
    t = harness.add_tenant()
    provider_id = await _waiting(
        harness, t, "pay_i",
        payment_method_token="pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
    )  # fmt: skip
    await _simulator(harness, t).complete_authentication(provider_id)
    failed = await harness.send("payment.refresh", t, {"payment_id": "pay_i"})
    assert kind(failed) == "payment.failed", data(failed)
    assert data(failed)["previous_status"] == "requires_action"
    error = data(failed)["error"]
    assert (error["code"], error["decline_code"]) == ("insufficient_funds", "insufficient_funds")
    seen = observe(failed)
    # (the issuer's answer, read back: an attempt of its window too; review h59g)
    assert seen is not None and (seen.card_declined, seen.attempt) == (True, True)
    cancel = await harness.send("payment.cancel", t, {"payment_id": "pay_i"})
    assert kind(cancel) == "payment.canceled", data(cancel)
    assert await _simulator(harness, t).effects() == []


async def test_a_declined_payment_stays_final(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"payment_id": "pay_d", "amount": 900, "currency": "USD",
         "payment_method_token": "pm_card_chargeDeclined"},
    )  # fmt: skip
    assert kind(out) == "payment.failed", data(out)
    refused = await harness.send("payment.cancel", t, {"payment_id": "pay_d"})
    assert data(refused)["reason"] == "invalid_state", data(refused)
    # Read again, answered from its record: the same failure, counted no second time.
    again = await harness.send("payment.refresh", t, {"payment_id": "pay_d"})
    assert (kind(again), data(again)["previous_status"]) == ("payment.failed", "failed")
    assert data(again)["previous_failure_code"] == data(again)["object"]["failure_code"]
    assert "error" not in data(again)
    seen = observe(again)
    assert seen is None or (seen.attempt, seen.declined, seen.decline_code) == (
        False,
        0,
        None,
    ), seen


async def test_a_parked_capture_redriven_after_a_refresh_gets_its_own_answer(
    redis_url: str,
) -> None:
    """The capture reached the provider and its answer was lost (parked); a refresh read
    the payment back captured. Re-driven, the capture is answered by the provider under
    its key, not refused for the state it made itself."""
    async with running_harness(redis_url) as h:
        t = new_tenant_id()
        h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:cap1": 3}})
        charge = {"payment_id": "p1", "amount": 5000, "currency": "USD",
                  "payment_method_token": "pm_card_visa", "capture": "manual"}  # fmt: skip
        assert kind(await h.send("payment.create", t, charge)) == "payment.authorized"
        capture = build_command(
            "payment.capture", t, {"payment_id": "p1", "amount": 4000}, command_id="cap1"
        )
        emits, outcome = await h.send_event(capture)
        assert outcome is None and [e.topic for e in emits] == [h.settings.retry_topic]
        refreshed = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert kind(refreshed) == "payment.succeeded", data(refreshed)
        _, again = await h.send_event(capture)  # `dlq replay` sends it again
        assert again is not None and kind(again) == "payment.succeeded", again and data(again)
        assert data(again)["object"]["amount_captured"] == 4000
        # The refresh counted the capture; its own answer says it found it made.
        assert data(again)["previous_status"] == "succeeded"
        counted = [observe(e) for e in (refreshed, again)]
        assert [o.captured for o in counted if o is not None] == [4000, 0]
        effects = [(e.kind, e.amount) for e in await _simulator(h, t).effects()]
        assert effects == [("authorization", 5000), ("capture", 4000)]


async def test_a_redelivered_refresh_is_answered_as_first_and_applied_once(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_r")
    await _simulator(harness, t).complete_authentication(provider_id)
    command = build_command("payment.refresh", t, {"payment_id": "pay_r"})
    versions: list[int] = []
    await harness.assert_redelivered_alike(
        command, lambda: versions.append(harness.tables.payments[f"{t}:pay_r"]["version"])
    )
    assert harness.tables.payments[f"{t}:pay_r"]["version"] == versions[0]


async def test_another_tenants_payment_is_not_found(harness: Harness) -> None:
    owner, other = harness.add_tenant(), harness.add_tenant()
    await _waiting(harness, owner, "pay_x")
    out = await harness.send("payment.refresh", other, {"payment_id": "pay_x"})
    assert data(out)["reason"] == "not_found", data(out)
    missing = await harness.send("payment.refresh", owner, {"payment_id": "pay_nope"})
    assert data(missing)["reason"] == "not_found", data(missing)


@pytest.mark.parametrize(
    ("failure", "code", "decline"),
    [
        ("insufficient_funds", "insufficient_funds", "insufficient_funds"),
        ("generic_decline", "card_declined", "generic_decline"),
        ("payment_intent_authentication_failure", "authentication_required", None),
        (None, "card_declined", None),
    ],
)
def test_a_failure_read_back_is_named_as_a_decline_at_creation_is(
    failure: str | None, code: str, decline: str | None
) -> None:
    """A card declined after its 3-D Secure step (Stripe: the decline code in
    last_payment_error) reads back as the same decline a create would have answered."""

    class _Provider:
        provider = "stripe"

    res = gw.PaymentResult(
        provider_payment_id="pi_1",
        status=gw.PaymentStatus.FAILED,
        amount=Money(amount=100, currency="USD"),
        failure_code=failure,
    )
    ctx = HandlerContext(cmd=None, gateway=_Provider(), tables=None)  # type: ignore[arg-type]
    error = _read_back_failure(ctx, res)
    assert error is not None
    assert (error.code.value, error.decline_code, error.provider) == (code, decline, "stripe")


async def _browser_sets(sim: SimulatorGateway, provider_id: str, tag: str, **fields: Any) -> None:
    """What the customer's browser does at the provider with the client secret
    (Stripe.js: another card on the same PaymentIntent), as a provider-side change."""

    async def change(tx: Any) -> dict[str, Any]:
        pi = {**await ops._must(tx, provider_id, "payment_intent"), **fields}
        if fields.get("status") == "succeeded":
            tx.effect(Effect.of("charge", f"browser:{tag}", provider_id, pi["amount"], "EUR"))
        tx.put(pi)
        return {"ok": results.payment(pi, None)}

    await sim._provider_action(f"{tag}:{provider_id}", {}, change, gw.PaymentResult)


async def test_a_payment_open_at_the_provider_stays_open_through_another_cards_decline(
    harness: Harness,
) -> None:
    """After a failed 3-D Secure step the customer declines with a second card, then
    pays with a third: each is read back (the second card's decline counted as one),
    and the payment is refundable once paid (review finding: the second decline made
    it final here while the provider still had it open)."""
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_o")
    sim = _simulator(harness, t)
    await sim.complete_authentication(provider_id, succeed=False)
    await harness.send("payment.refresh", t, {"payment_id": "pay_o"})
    await _browser_sets(
        sim, provider_id, "card2", failure_code="insufficient_funds",
        failure_message="Your card has insufficient funds.",
    )  # fmt: skip
    declined = await harness.send("payment.refresh", t, {"payment_id": "pay_o"})
    assert kind(declined) == "payment.failed", data(declined)
    assert data(declined)["previous_failure_code"] == "payment_intent_authentication_failure"
    seen = observe(declined)
    assert seen is not None and (seen.card_declined, seen.declined) == (True, 1500), seen
    same = observe(await harness.send("payment.refresh", t, {"payment_id": "pay_o"}))
    assert same is not None and same.declined == 0, same  # the same decline, read again
    await _browser_sets(
        sim, provider_id, "card3", status="succeeded", amount_captured=1500,
        failure_code=None, failure_message=None,
    )  # fmt: skip
    paid = await harness.send("payment.refresh", t, {"payment_id": "pay_o"})
    assert kind(paid) == "payment.succeeded", data(paid)
    refund = await harness.send("refund.create", t, {"payment_id": "pay_o"})
    assert kind(refund) == "refund.succeeded", data(refund)


async def test_a_payment_recorded_before_the_flag_is_known_open_by_its_next_action(
    harness: Harness,
) -> None:
    """A payment waiting on its customer, written by a version without
    customer_action_delivered: its failure read back still leaves it open."""
    t = harness.add_tenant()
    provider_id = await _waiting(harness, t, "pay_u")
    harness.tables.payments[f"{t}:pay_u"].pop("customer_action_delivered")
    await _simulator(harness, t).complete_authentication(provider_id, succeed=False)
    assert kind(await harness.send("payment.refresh", t, {"payment_id": "pay_u"})) == (
        "payment.failed"
    )
    cancel = await harness.send("payment.cancel", t, {"payment_id": "pay_u"})
    assert kind(cancel) == "payment.canceled", data(cancel)
