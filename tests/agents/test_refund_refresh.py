"""`refund.refresh`: a refund read back from its provider. A pending one settles; one that
succeeded can fail there later (the card closed: Stripe's test card 5126, its
`refund.failed` event), and paystream then takes its amount off the payment's refunded
amount, so that the payment is refundable again and the books say what happened."""

from __future__ import annotations

import copy

import pytest

from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.insights.observe import observe
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_let_through import _answer, _command
from tests.agents.test_payment_rules import _effects, _provider_down

_CHARGE = {"amount": 2000, "currency": "USD"}


def _simulator(h: Harness, tenant: str) -> object:
    return h.pool.get(Tenant.model_validate(h.tenants[tenant]))


async def _paid(h: Harness, tenant: str, payment_id: str, token: str) -> None:
    out = await h.send(
        "payment.create",
        tenant,
        {**_CHARGE, "payment_id": payment_id, "payment_method_token": token},
    )
    assert kind(out) == "payment.succeeded", data(out)


async def test_a_refund_that_fails_later_is_refundable_again(harness: Harness) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "pay_f", "pm_card_refundFail")
    made = await harness.send(
        "refund.create", t, {"payment_id": "pay_f", "refund_id": "re_f", "amount": 1500}
    )
    assert kind(made) == "refund.succeeded", data(made)
    assert harness.tables.payments[f"{t}:pay_f"]["amount_refunded"] == 1500

    failed = await harness.send("refund.refresh", t, {"refund_id": "re_f"})
    assert kind(failed) == "refund.failed", data(failed)
    assert data(failed)["previous_status"] == "succeeded"
    assert data(failed)["object"]["failure_code"] == "expired_or_canceled_card"
    [payment] = data(failed)["related"]
    assert payment["object"]["amount_refunded"] == 0
    held = harness.tables.payments[f"{t}:pay_f"]
    assert (held["status"], held["amount_refunded"]) == ("succeeded", 0)
    assert harness.tables.refunds[f"{t}:re_f"]["status"] == "failed"
    # Counted given back when made, counted failed now; the money is the merchant's again.
    counted = [observe(e) for e in (made, failed)]
    assert [(o.refunded, o.refunds_failed) for o in counted if o] == [(1500, 0), (0, 1500)]

    # Failed is final (answered from the record, nothing taken off again); the payment
    # may be refunded again, in full.
    final = await harness.send("refund.refresh", t, {"refund_id": "re_f"})
    assert (kind(final), data(final)["previous_status"]) == ("refund.failed", "failed")
    assert harness.tables.payments[f"{t}:pay_f"]["amount_refunded"] == 0
    again = await harness.send("refund.create", t, {"payment_id": "pay_f", "refund_id": "re_g"})
    assert kind(again) == "refund.succeeded", data(again)
    assert data(again)["object"]["amount"] == 2000
    effects = [(e.kind, e.amount) for e in await _simulator(harness, t).effects()]  # type: ignore[attr-defined]
    assert effects == [("charge", 2000), ("refund", 1500), ("refund", 2000)]


async def test_a_pending_refund_settles_and_moves_no_money_again(harness: Harness) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "pay_p", "pm_card_pendingRefund")
    made = await harness.send("refund.create", t, {"payment_id": "pay_p", "refund_id": "re_p"})
    assert kind(made) == "refund.pending", data(made)
    assert harness.tables.payments[f"{t}:pay_p"]["amount_refunded"] == 2000
    # Nothing is left to refund while it is pending: it counts as refunded.
    refused = await harness.send("refund.create", t, {"payment_id": "pay_p", "amount": 1})
    assert data(refused)["reason"] == "invalid_state", data(refused)

    settled = await harness.send("refund.refresh", t, {"refund_id": "re_p"})
    assert kind(settled) == "refund.succeeded", data(settled)
    assert data(settled)["previous_status"] == "pending"
    assert "related" not in data(settled)
    assert harness.tables.payments[f"{t}:pay_p"]["amount_refunded"] == 2000
    unchanged = await harness.send("refund.refresh", t, {"refund_id": "re_p"})
    assert kind(unchanged) == "refund.succeeded", data(unchanged)
    assert data(unchanged)["previous_status"] == "succeeded"
    counted = [observe(e) for e in (made, settled, unchanged)]
    assert [(o.refunded, o.refunds_failed) for o in counted if o] == [(2000, 0), (0, 0), (0, 0)]


async def test_a_refund_that_stays_succeeded_reads_back_unchanged(harness: Harness) -> None:
    t = harness.add_tenant()
    await _paid(harness, t, "pay_s", "pm_card_visa")
    await harness.send("refund.create", t, {"payment_id": "pay_s", "refund_id": "re_s"})
    version = harness.tables.payments[f"{t}:pay_s"]["version"]
    same = await harness.send("refund.refresh", t, {"refund_id": "re_s"})
    assert kind(same) == "refund.succeeded", data(same)
    assert data(same)["previous_status"] == "succeeded"
    assert harness.tables.payments[f"{t}:pay_s"]["version"] == version


async def test_a_redelivered_refresh_is_answered_as_first_and_applied_once(
    harness: Harness,
) -> None:
    """The failure taken off the payment once: a redelivery after a crash replays the
    answer (the provider, asked again, would find nothing new to fail)."""
    t = harness.add_tenant()
    await _paid(harness, t, "pay_r", "pm_card_refundFail")
    await harness.send("refund.create", t, {"payment_id": "pay_r", "refund_id": "re_r"})
    command = build_command("refund.refresh", t, {"refund_id": "re_r"})
    versions: list[int] = []
    await harness.assert_redelivered_alike(
        command, lambda: versions.append(harness.tables.payments[f"{t}:pay_r"]["version"])
    )
    [version] = versions
    held = harness.tables.payments[f"{t}:pay_r"]
    assert (held["version"], held["amount_refunded"]) == (version, 0)


async def test_a_refund_read_back_after_its_payment_left_the_tables(harness: Harness) -> None:
    """Retention removes a payment unchanged for long; a refund that outlived it (pending
    for weeks) is still read back: failed there, it is failed here, with no payment to
    take it off (before: "no such payment", and the refund stayed succeeded for good)."""
    t = harness.add_tenant()
    await _paid(harness, t, "pay_g", "pm_card_refundFail")
    await harness.send("refund.create", t, {"payment_id": "pay_g", "refund_id": "re_g"})
    del harness.tables.payments[f"{t}:pay_g"]  # as the retention sweep deletes it

    failed = await harness.send("refund.refresh", t, {"refund_id": "re_g"})
    assert kind(failed) == "refund.failed", data(failed)
    assert "related" not in data(failed)
    assert harness.tables.refunds[f"{t}:re_g"]["status"] == "failed"
    assert f"{t}:pay_g" not in harness.tables.payments  # not made again
    [counted] = [o for o in [observe(failed)] if o]
    assert counted.refunds_failed == 2000


async def test_a_refund_read_back_failed_leaves_a_new_payment_under_its_id_alone(
    harness: Harness,
) -> None:
    """A payment id the producer chose names a new payment once the old one left the
    tables: the old payment's refund, failed at the provider, is not taken off it."""
    t = harness.add_tenant()
    await _paid(harness, t, "pay_n", "pm_card_refundFail")
    await harness.send("refund.create", t, {"payment_id": "pay_n", "refund_id": "re_n"})
    del harness.tables.payments[f"{t}:pay_n"]  # as the retention sweep deletes it
    # Past the provider's idempotency window too (retention is at least 30 days).
    async for key in harness.redis.scan_iter(match=f"sim:{{{t}}}:idem:*"):
        await harness.redis.delete(key)
    await _paid(harness, t, "pay_n", "pm_card_visa")  # the id, reused
    part = await harness.send("refund.create", t, {"payment_id": "pay_n", "amount": 500})
    assert kind(part) == "refund.succeeded", data(part)

    failed = await harness.send("refund.refresh", t, {"refund_id": "re_n"})
    assert kind(failed) == "refund.failed", data(failed)
    assert "related" not in data(failed)
    assert harness.tables.payments[f"{t}:pay_n"]["amount_refunded"] == 500


@pytest.mark.parametrize("refund_id", ["re_x", "re_nope"])
async def test_another_tenants_refund_is_not_found(harness: Harness, refund_id: str) -> None:
    owner, other = harness.add_tenant(), harness.add_tenant()
    await _paid(harness, owner, "pay_x", "pm_card_visa")
    await harness.send("refund.create", owner, {"payment_id": "pay_x", "refund_id": "re_x"})
    out = await harness.send("refund.refresh", other, {"refund_id": refund_id})
    assert data(out)["reason"] == "not_found", data(out)
    assert data(out)["message"] == f"no such refund: {refund_id}"


_PAY = {"payment_id": "p1", "amount": 2000, "currency": "USD",
        "payment_method_token": "pm_card_refundFail"}  # fmt: skip


async def _provider_refunded(h: Harness, tenant: str) -> int:
    ppid = h.tables.payments[f"{tenant}:p1"]["provider_payment_id"]
    sim = _simulator(h, tenant)
    read = await sim.retrieve_payment(  # type: ignore[attr-defined]
        gw.RetrievePayment(provider_payment_id=ppid), idempotency_key="probe"
    )
    return int(read.amount_refunded)


async def test_a_parked_refund_of_the_rest_keeps_its_amount_after_another_fails(
    harness: Harness,
) -> None:
    """r2 (no amount: the rest) reaches the provider, its answer lost: parked. r1 is then
    read back failed, which raises the table's refundable amount. Re-driven, r2 is the
    same request (the provider refunds what was left), answered as it was: 500, not a
    request for 2000 refused under the key (review finding)."""
    h, t = harness, new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:refund:r2": 3}})
    await _answer(h, _command(t, "payment.create", _PAY, "c1"))
    r1 = {"payment_id": "p1", "refund_id": "r1", "amount": 1500}
    assert kind(await _answer(h, _command(t, "refund.create", r1, "c2"))) == "refund.succeeded"
    rest = _command(t, "refund.create", {"payment_id": "p1", "refund_id": "r2"}, "c3")
    parked = await h.processor.process(rest)
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    failed = await _answer(h, _command(t, "refund.refresh", {"refund_id": "r1"}, "c4"))
    assert kind(failed) == "refund.failed", data(failed)

    redriven = await _answer(
        h, _command(t, "refund.create", {"payment_id": "p1", "refund_id": "r2"}, "c3")
    )
    assert kind(redriven) == "refund.succeeded", data(redriven)
    assert data(redriven)["object"]["amount"] == 500
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 500
    assert await _provider_refunded(h, t) == 500
    effects = [(e.kind, e.amount) for e in await _simulator(h, t).effects()]  # type: ignore[attr-defined]
    assert effects == [("charge", 2000), ("refund", 1500), ("refund", 500)]


async def test_a_refund_of_the_rest_first_sent_with_its_amount_is_answered_when_redriven(
    harness: Harness,
) -> None:
    """A version before this one named the amount left in a refund without one. Its
    refund, parked and re-driven by this version (which names none), is refused by the
    provider as other parameters under the key; sent once more as it was first sent,
    it is answered as it was, and nothing is refunded twice."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r2"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    await _answer(
        h, _command(t, "payment.create", {**_PAY, "payment_method_token": "pm_card_visa"}, "c1")
    )
    rest = {"payment_id": "p1", "refund_id": "r2"}
    parked = await h.processor.process(_command(t, "refund.create", rest, "c3"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    # What the older version sent (its answer lost): the amount the table had left.
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    sim = _simulator(h, t)
    made = await sim.create_refund(  # type: ignore[attr-defined]
        gw.CreateRefund(provider_payment_id=ppid, amount=2000), idempotency_key=key
    )

    redriven = await _answer(h, _command(t, "refund.create", rest, "c3"))
    assert kind(redriven) == "refund.succeeded", data(redriven)
    assert data(redriven)["object"]["provider_refund_id"] == made.provider_refund_id
    assert data(redriven)["object"]["amount"] == 2000
    effects = [(e.kind, e.amount) for e in await sim.effects()]  # type: ignore[attr-defined]
    assert effects == [("charge", 2000), ("refund", 2000)]


async def test_a_new_refund_of_the_rest_under_a_used_key_is_not_sent_twice(
    harness: Harness,
) -> None:
    """Only one let through is sent again with the amount: a new command's refusal for
    other parameters under the key stands."""
    h, t = harness, new_tenant_id()
    h.add_tenant(t)
    await _answer(
        h, _command(t, "payment.create", {**_PAY, "payment_method_token": "pm_card_visa"}, "c1")
    )
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    sim = _simulator(h, t)
    # Another request under the key, for exactly the refundable amount: what the
    # fallback would send, and be answered by.
    await sim.create_refund(  # type: ignore[attr-defined]
        gw.CreateRefund(provider_payment_id=ppid, amount=2000), idempotency_key=f"pse:{t}:refund:r2"
    )
    out = await _answer(
        h, _command(t, "refund.create", {"payment_id": "p1", "refund_id": "r2"}, "c3")
    )
    assert kind(out) == "command.rejected", data(out)
    effects = [(e.kind, e.amount) for e in await sim.effects()]  # type: ignore[attr-defined]
    assert effects == [("charge", 2000), ("refund", 2000)]
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 0


async def test_a_redriven_refund_of_the_rest_with_nothing_left_here_is_parked_not_refused(
    harness: Harness,
) -> None:
    """r2, first sent by an older version (500, its answer lost), is re-driven when the
    table has nothing left (r1 failed at the provider, not read back yet, and r3 took
    what the provider had left). The provider holds r2's request under the key: it is
    parked again for a person, never answered `invalid_state` (review finding)."""
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r2"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    await _answer(h, _command(t, "payment.create", _PAY, "c1"))
    r1 = {"payment_id": "p1", "refund_id": "r1", "amount": 1500}
    made = await _answer(h, _command(t, "refund.create", r1, "c2"))
    rest = {"payment_id": "p1", "refund_id": "r2"}
    parked = await h.processor.process(_command(t, "refund.create", rest, "c3"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    ppid = h.tables.payments[f"{t}:p1"]["provider_payment_id"]
    sim = _simulator(h, t)
    await sim.create_refund(  # type: ignore[attr-defined]
        gw.CreateRefund(provider_payment_id=ppid, amount=500), idempotency_key=key
    )
    prid = data(made)["object"]["provider_refund_id"]
    await sim.retrieve_refund(  # type: ignore[attr-defined]
        gw.RetrieveRefund(provider_refund_id=prid), idempotency_key="provider-side"
    )
    r3 = await _answer(
        h, _command(t, "refund.create", {"payment_id": "p1", "refund_id": "r3"}, "c5")
    )
    # What the provider had left (r1's 1500 came back; r2 took 500); more than the table
    # had (500), which reads above captured until r1 is read back failed.
    assert (kind(r3), data(r3)["object"]["amount"]) == ("refund.succeeded", 1500), data(r3)
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 3000
    redriven = await h.processor.process(_command(t, "refund.create", rest, "c3"))
    assert [e.topic for e in redriven] == [h.settings.retry_topic]
    assert f"{t}:r2" not in h.tables.refunds
    # r1 read back: the books agree with the provider's (r2 is for a person to settle).
    failed = await _answer(h, _command(t, "refund.refresh", {"refund_id": "r1"}, "c6"))
    assert kind(failed) == "refund.failed", data(failed)
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 1500


@pytest.mark.parametrize("lost", ["idempotency", "refund", "payment", "idempotency+payment"])
@pytest.mark.parametrize("payment_gone", [False, True])
async def test_a_refresh_redelivered_after_a_crash_lost_some_writes(
    harness: Harness, lost: str, payment_gone: bool
) -> None:
    """The same record delivered again (its offset not committed) after a crash persisted
    only some of the refresh's writes: the same event, the failure taken off once, and
    the lost writes repaired (review: the redelivery test above replays from the
    idempotency record alone, never reaching the entities' memory of the command)."""
    t = harness.add_tenant()
    await _paid(harness, t, "pay_c", "pm_card_refundFail")
    await harness.send("refund.create", t, {"payment_id": "pay_c", "refund_id": "re_c"})
    if payment_gone:
        del harness.tables.payments[f"{t}:pay_c"]
    refund_before = copy.deepcopy(harness.tables.refunds[f"{t}:re_c"])
    payment_before = copy.deepcopy(harness.tables.payments.get(f"{t}:pay_c"))
    command = build_command("refund.refresh", t, {"refund_id": "re_c"}, command_id="rf-1")
    first, out = await harness.send_event(command, offset=77)
    assert out is not None and kind(out) == "refund.failed", data(out)
    if lost != "payment":  # (that one: its idempotency record kept, the payment lost)
        del harness.idempotency[f"{t}:rf-1"]
    if lost == "refund":
        harness.tables.refunds[f"{t}:re_c"] = refund_before
    if "payment" in lost and payment_before is not None:
        harness.tables.payments[f"{t}:pay_c"] = payment_before
    again, out_again = await harness.send_event(command, offset=77)
    assert out_again is not None, again
    [sent] = [e.record for e in first if e.topic == harness.settings.events_topic]
    [resent] = [e.record for e in again if e.topic == harness.settings.events_topic]
    assert (resent.value, sorted(resent.headers)) == (sent.value, sorted(sent.headers))
    assert harness.tables.refunds[f"{t}:re_c"]["status"] == "failed"
    if payment_gone:
        assert f"{t}:pay_c" not in harness.tables.payments
    else:
        assert harness.tables.payments[f"{t}:pay_c"]["amount_refunded"] == 0


# A capture of a succeeded payment was let through to the provider (parked with it down)
# after a pending refund of it was read back failed: that outcome's `previous_status`
# is the refund's, read as the payment's (review h68a).
@pytest.mark.parametrize("read_back", [True, False])
async def test_capture_of_a_succeeded_payment_is_refused_after_a_refund_read_back_failed(
    harness: Harness, read_back: bool
) -> None:
    """(``read_back`` False, the control: refused by paystream without the refresh.)"""
    h = harness
    t = h.add_tenant()
    paid = await h.send(
        "payment.create",
        t,
        {"payment_id": "pay_f", "amount": 2000, "currency": "USD",
         "payment_method_token": "pm_card_refundFail"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    if read_back:
        made = await h.send("refund.create", t, {"payment_id": "pay_f", "refund_id": "re_f"})
        assert kind(made) == "refund.succeeded", data(made)
        # As Stripe reports many refunds first (pending; then failed once the bank says so).
        h.tables.refunds[f"{t}:re_f"] = {**h.tables.refunds[f"{t}:re_f"], "status": "pending"}
        failed = await h.send("refund.refresh", t, {"refund_id": "re_f"})
        assert kind(failed) == "refund.failed", data(failed)
        assert data(failed)["previous_status"] == "pending"  # the refund's previous status

    before = await _effects(h, t)
    _provider_down(h, t)  # paystream's own rule must answer
    emits, out = await h.send_event(build_command("payment.capture", t, {"payment_id": "pay_f"}))
    assert h.settings.retry_topic not in [e.topic for e in emits], "parked, not refused"
    assert out is not None and (kind(out), data(out)["reason"]) == (
        "command.rejected",
        "invalid_state",
    ), data(out) if out is not None else None
    assert await _effects(h, t) == before
