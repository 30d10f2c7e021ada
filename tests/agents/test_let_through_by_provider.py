"""K1: a command whose whole batch a crash lost after the provider call is known by the
provider, not refused because its tenant was suspended meanwhile.

Nothing of a batch is durable before it is delivered, so after such a crash the only
record of the command is the provider's, under the idempotency key of its first call.
Before refusing a suspended tenant's command it has no record of, the worker asks the
provider, read-only, whether it knows that key: if so the command finishes (the
provider answers from the key: no second effect, the same event); if not, or if the
provider cannot tell (Stripe), it is refused as before, and the provider is asked
nothing else: suspension still stops every new charge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import SimulatorGateway
from paystream.money import Money
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_applied_by_entity import SCENARIOS, _crash_back_to, _durable, _effects
from tests.agents.test_let_through import _answer
from tests.agents.test_let_through import _command as _old_command

pytestmark = pytest.mark.asyncio

CHARGE = {"amount": 800, "currency": "USD", "payment_method_token": "pm_card_visa"}


async def _charged_then_limit_lowered(
    h: Harness, command_id: str
) -> tuple[str, Any, Any, dict[str, Any]]:
    """A payment charged whose batch a crash lost before delivery, then its tenant's daily
    volume lowered below it: (tenant, command record, first outcome, tenant record as it
    was)."""
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 100_000}})
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, command_id)
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    _crash_back_to(h, durable)
    h.tenants[t] = {**h.tenants[t], "limits": {"daily_payment_volume": {"USD": 100}}}
    return t, rec, first, record


def _command(tenant: str, command_type: str, body: dict[str, Any], command_id: str) -> Any:
    """A command record appended now: one a crash just lost (the provider keeps its
    keys for the idempotency window, and is asked only within it)."""
    rec = _old_command(tenant, command_type, body, command_id)
    return dataclasses.replace(rec, timestamp_ms=int(time.time() * 1000))


def _suspend(h: Harness, t: str) -> None:
    h.tenants[t] = {**h.tenants[t], "status": "suspended"}


# A customer delete (customer.delete, customer.erase) takes no provider key, as on
# Stripe: nothing to ask the provider by (its retry meets "not found", answered as such).
# Nor does a read (payment.refresh, refund.refresh, subscription.refresh, payout.refresh,
# connected_account.refresh, invoice.refresh, transfer.refresh):
# lost whole, nothing of it happened here, and a suspended tenant's refresh is refused as
# any new command is (what the provider reports is read again once it is active). Nor
# does tax.calculate, which asks no provider: paystream computes it from its own rates.
KEYED = sorted(
    name
    for name in SCENARIOS
    if not name.startswith(
        (
            "customer.delete",
            "customer.erase",
            "payment.refresh",
            "refund.refresh",
            "subscription.refresh",
            "payout.refresh",
            "connected_account.refresh",
            "invoice.refresh",
            "transfer.refresh",
            "tax.calculate",
        )
    )
)


@pytest.mark.parametrize("scenario", KEYED)
async def test_a_command_lost_whole_at_a_crash_finishes_once_suspended(
    harness: Harness, scenario: str
) -> None:
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    command_type, body = await SCENARIOS[scenario](h, t)
    durable = _durable(h)
    rec = _command(t, command_type, body, "cmd-k1")
    first = await _answer(h, rec)
    assert not kind(first).endswith("rejected"), data(first)
    effects = await _effects(h, record)
    _crash_back_to(h, durable)
    _suspend(h, t)
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert await _effects(h, record) == effects  # the provider acted once
    third = await _answer(h, rec)  # and so it stays
    assert (third.get_id(), data(third)) == (again.get_id(), data(again))


async def test_a_charge_lost_whole_at_a_crash_passes_a_limit_lowered_since(
    harness: Harness,
) -> None:
    """A limit lowered (or the day's volume spent) since is no reason to refuse a
    charge the provider already made: admitted as let through, answered as it was,
    and its money counted once."""
    h = harness
    t, rec, first, record = await _charged_then_limit_lowered(h, "cmd-limited")
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]
    volume = h.processor.limits.table[f"{t}:limits"].get("volume") or {}
    assert volume.get("USD") == 800, volume  # counted once
    new = await _answer(h, _command(t, "payment.create", dict(CHARGE), "cmd-new"))
    assert data(new)["reason"] == "quota_exceeded"  # a new charge is still refused


async def test_a_declined_charge_lost_at_a_crash_keeps_its_decline(harness: Harness) -> None:
    """The provider's record under the key is a refusal: the command was let through,
    and its answer is the decline, not `tenant_suspended`."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    body = {**CHARGE, "payment_method_token": "pm_card_chargeDeclined", "payment_id": "p1"}
    rec = _command(t, "payment.create", body, "cmd-declined")
    first = await _answer(h, rec)
    assert kind(first) == "payment.failed"
    _crash_back_to(h, durable)
    _suspend(h, t)
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == ("payment.failed", first.get_id())


async def test_a_suspended_tenants_new_command_is_refused_and_charges_nothing(
    harness: Harness,
) -> None:
    """The kill switch: a command the provider never saw is refused, whenever appended."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    _suspend(h, t)
    for command_id in ("new-1", "new-2"):
        out = await _answer(h, _command(t, "payment.create", dict(CHARGE), command_id))
        assert data(out)["reason"] == "tenant_suspended"
    assert await _effects(h, record) == []


async def test_a_provider_that_cannot_tell_leaves_it_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe has no read-only lookup (StripeGateway.knows_request answers None): the
    command is refused as before (README: the K1 gap left for such providers)."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-stripe-like")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)

    async def cannot_tell(self: Any, operation: str, req: Any, *, idempotency_key: str) -> None:
        return None

    monkeypatch.setattr(SimulatorGateway, "knows_request", cannot_tell)
    out = await _answer(h, rec)
    assert data(out)["reason"] == "tenant_suspended"


@pytest.mark.parametrize("failure", ["hangs", "raises"])
async def test_a_provider_that_cannot_be_asked_now_gets_the_command_parked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """No final answer while the provider may have acted: parked, to be asked again when
    re-driven. After one failed lookup the provider is not asked for a while (each would
    wait as long, one command after another, holding the batch)."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-unasked")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)
    asked = []

    async def broken(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        asked.append(idempotency_key)
        if failure == "hangs":
            await asyncio.Event().wait()
        raise ConnectionError("store down")

    monkeypatch.setattr(SimulatorGateway, "knows_request", broken)
    monkeypatch.setattr(pipeline, "PROVIDER_LOOKUP_SECONDS", 0.05)
    emits = await asyncio.wait_for(h.processor.process(rec), 10)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    new = await asyncio.wait_for(
        h.processor.process(_command(t, "payment.create", dict(CHARGE), "cmd-new")), 10
    )
    assert [e.topic for e in new] == [h.settings.retry_topic]  # paused: not asked
    assert len(asked) == 1
    # ...for this tenant only: another's provider account (or store shard) may be fine.
    other = h.add_tenant()
    _suspend(h, other)
    await asyncio.wait_for(
        h.processor.process(_command(other, "payment.create", dict(CHARGE), "cmd-other")), 10
    )
    assert len(asked) == 2
    # Commands that make no provider call are refused as ever, paused or not.
    for command_type, body in [
        ("customer.export", {"customer_id": "cus_none"}),
        ("payment.capture", {"payment_id": "pay_none"}),
    ]:
        out = outcome_of(
            h.settings, await h.processor.process(_command(t, command_type, body, command_type))
        )
        assert out is not None and data(out)["reason"] == "tenant_suspended", command_type
    assert len(asked) == 2


async def test_a_request_still_in_progress_is_parked_without_pausing_the_lookups(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that cannot tell now because a try of the request may still be made
    (Paddle's in-flight key held: review h77g F3) answers a retryable idempotency_error:
    parked unanswered, asked again when re-driven; not a failure of the provider's, so
    the tenant's other commands are still asked about, not parked for the pause."""
    h = harness
    t = h.add_tenant()
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-in-flight")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)
    asked: list[str] = []
    first: list[str] = []

    async def in_progress(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        asked.append(idempotency_key)
        if not first or first == [idempotency_key]:
            first[:] = [idempotency_key]
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR,
                "a try of this request may still be made",
                provider="simulator",
                retryable=True,
                reached_provider=False,
            )
        return False

    monkeypatch.setattr(SimulatorGateway, "knows_request", in_progress)
    emits = await asyncio.wait_for(h.processor.process(rec), 10)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"provider_unanswered"
    new = await asyncio.wait_for(
        h.processor.process(_command(t, "payment.create", dict(CHARGE), "cmd-new")), 10
    )
    out = outcome_of(h.settings, new)
    assert out is not None and data(out)["reason"] == "tenant_suspended"  # asked: not paused
    assert set(asked) - set(first), asked


async def test_a_parked_unanswered_record_redelivered_is_parked_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review repro: parked unanswered, the worker crashed before committing; decided
    afresh, the redelivery could get a final refusal while the parked copy is later
    re-driven and runs: two answers. The record keeps its decision."""
    h = harness
    t = h.add_tenant()
    _suspend(h, t)
    rec = _command(t, "payment.create", dict(CHARGE), "cmd-twice")

    async def down(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        raise ConnectionError("store down")

    monkeypatch.setattr(SimulatorGateway, "knows_request", down)
    first = await h.processor.process(rec)
    assert [e.topic for e in first] == [h.settings.retry_topic]
    monkeypatch.undo()  # the provider answers again (it never took this request)
    monkeypatch.setattr(h.processor, "_lookups_paused", {})
    again = await h.processor.process(rec)  # the same record, redelivered
    assert [e.topic for e in again] == [h.settings.retry_topic]
    fresh = await h.processor.process(dataclasses.replace(rec, offset=rec.offset + 1))
    out = outcome_of(h.settings, fresh)  # another record of it (a re-drive): asked
    assert out is not None and data(out)["reason"] == "tenant_suspended"


async def test_a_provider_failing_several_tenants_is_not_asked_for_any(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage must not cost each tenant its own wait, one after another."""
    h = harness
    tenants = [h.add_tenant() for _ in range(pipeline.LOOKUP_TENANTS_FAILING + 1)]
    asked = []

    async def down(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        asked.append(idempotency_key)
        raise ConnectionError("store down")

    monkeypatch.setattr(SimulatorGateway, "knows_request", down)
    for t in tenants:
        _suspend(h, t)
        emits = await h.processor.process(_command(t, "payment.create", dict(CHARGE), "c"))
        assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert len(asked) == pipeline.LOOKUP_TENANTS_FAILING  # the last tenant: not asked


async def test_a_quota_refusal_the_provider_cannot_be_asked_about_is_parked(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review repro: refused `quota_exceeded` while the provider could not be asked, the
    limits kept that refusal for the record, and every redelivery got it, though the
    provider had charged. Now parked; re-driven with the provider back, it finishes."""
    h = harness
    t, rec, first, _ = await _charged_then_limit_lowered(h, "cmd-quota")
    real = SimulatorGateway.knows_request

    async def down(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        raise ConnectionError("store down")

    monkeypatch.setattr(SimulatorGateway, "knows_request", down)
    emits = await h.processor.process(rec)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    monkeypatch.setattr(SimulatorGateway, "knows_request", real)
    monkeypatch.setattr(h.processor, "_lookups_paused", {})  # the pause is over
    parked = emits[0].record  # `dlq replay` re-sends it as parked, with its headers
    redrive = dataclasses.replace(rec, headers=dict(parked.headers), offset=rec.offset + 10_000)
    again = await _answer(h, redrive)
    # (A new event id: ids are salted with the record's offset, and the first outcome,
    # lost with its batch, was never published.)
    assert kind(again) == kind(first) and data(again)["object"] == data(first)["object"]
    assert [k for k, _ in await _effects(h, dict(h.tenants[t]))] == ["charge"]


async def test_a_slow_provider_is_not_asked_again_for_a_while(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups wait one after another: each answering just inside the timeout would
    hold a batch for minutes. A slow answer is used, then the tenant's lookups pause."""
    h = harness
    t = h.add_tenant()
    _suspend(h, t)
    asked = []

    async def slow(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        asked.append(idempotency_key)
        await asyncio.sleep(0.05)
        return False

    monkeypatch.setattr(SimulatorGateway, "knows_request", slow)
    monkeypatch.setattr(pipeline, "LOOKUP_SLOW_SECONDS", 0.01)
    outs = [
        await h.processor.process(_command(t, "payment.create", dict(CHARGE), f"slow-{i}"))
        for i in range(5)
    ]
    first = outcome_of(h.settings, outs[0])
    assert first is not None and data(first)["reason"] == "tenant_suspended"
    assert all([e.topic for e in out] == [h.settings.retry_topic] for out in outs[1:])
    # The first command only (about each form it may have been sent in: one lookup).
    assert {key.rpartition(":")[2] for key in asked} == {"slow-0"}


@pytest.mark.parametrize("kept", ["for hours", "for minutes"])
async def test_a_day_old_record_is_let_through_only_while_the_provider_keeps_its_answer(
    harness: Harness, kept: str
) -> None:
    """A worker a day behind charged a day-old record and crashed: the record's age says
    nothing of the provider's record (made at the charge); the provider's own margin
    does. An answer it is about to forget may be gone by the time the command runs."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    day_ago = int(time.time() * 1000) - 23 * 3_600_000 - 1_800_000
    rec = dataclasses.replace(
        _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-old"),
        timestamp_ms=day_ago,
    )
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)
    if kept == "for minutes":
        for key in await h.redis.keys(f"*idem:pse:{t}:payment:p1"):
            await h.redis.pexpire(key, 600_000)
    again = await _answer(h, rec)
    if kept == "for hours":
        assert (kind(again), again.get_id()) == (kind(first), first.get_id())
    else:
        assert data(again)["reason"] == "tenant_suspended"
    assert [k for k, _ in await _effects(h, record)] == ["charge"]


async def test_another_request_under_the_same_provider_key_is_not_let_through(
    harness: Harness,
) -> None:
    """A create naming its payment id uses the entity's provider key: a different
    request under it (another amount) is not the one the provider took."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    first = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-a")
    assert kind(await _answer(h, first)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)
    other = _command(t, "payment.create", {**CHARGE, "amount": 900, "payment_id": "p1"}, "cmd-b")
    out = await _answer(h, other)
    assert data(out)["reason"] == "tenant_suspended"
    assert [k for k, _ in await _effects(h, record)] == ["charge"]


async def test_a_rate_limited_flood_asks_the_provider_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate limit's refusal says "later", and later the command runs: no lookup."""
    h = harness
    t = h.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    asked = []

    async def counting(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        asked.append(idempotency_key)
        return False

    monkeypatch.setattr(SimulatorGateway, "knows_request", counting)
    reasons = [
        data(await _answer(h, _command(t, "payment.create", dict(CHARGE), f"f{i}"))).get("reason")
        for i in range(20)
    ]
    assert reasons.count("rate_limited") >= 18
    assert asked == []


async def test_the_simulator_knows_the_requests_it_finished(harness: Harness) -> None:
    h = harness
    t = h.add_tenant()
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    key = f"ps:{t}:cmd-known"
    req = gw.CreatePayment(
        amount=Money(amount=800, currency="USD"), provider_payment_method_id="pm_card_visa"
    )
    assert await gateway.knows_request("create_payment", req, idempotency_key=key) is False
    await gateway.create_payment(req, idempotency_key=key)
    assert await gateway.knows_request("create_payment", req, idempotency_key=key) is True
    other = req.model_copy(update={"amount": Money(amount=900, currency="USD")})
    assert await gateway.knows_request("create_payment", other, idempotency_key=key) is False
    elsewhere = h.pool.get(Tenant.model_validate(h.tenants[h.add_tenant()]))
    assert await elsewhere.knows_request("create_payment", req, idempotency_key=key) is False
    # A record about to expire may be gone by the time the command runs: not counted on.
    await h.redis.pexpire(gateway._store._idem_key(key), 600_000)
    assert await gateway.knows_request("create_payment", req, idempotency_key=key) is False


async def test_a_stale_redrive_leaves_nothing_that_lets_it_through_later(
    harness: Harness,
) -> None:
    """Review repro: a re-drive past the key window is parked stale, unasked; once the
    provider has forgotten the key, re-driven as reconciled, it is refused (no record
    of ours lets it through to charge afresh)."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "c1")
    assert kind(await _answer(h, rec)) == "payment.succeeded"
    _crash_back_to(h, durable)
    _suspend(h, t)
    day_ago = str(int(time.time() * 1000) - 23 * 3_600_000 - 1_800_000).encode()
    stale = dataclasses.replace(
        rec, offset=10_001, headers={**rec.headers, "paystream-first-attempt-ms": day_ago}
    )
    emits = await h.processor.process(stale)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert f"{t}:c1" not in h.idempotency
    await h.redis.flushdb()  # the provider forgets (its window ends): effects too
    reconciled = dataclasses.replace(
        stale, offset=10_002, headers={**stale.headers, "paystream-reconciled": b"1"}
    )
    out = outcome_of(h.settings, await h.processor.process(reconciled))
    assert out is not None and data(out)["reason"] == "tenant_suspended", out and data(out)
    assert await _effects(h, record) == []  # nothing charged after the flush


async def _park_while_down(h: Harness, monkeypatch: pytest.MonkeyPatch, rec: Any) -> Any:
    """Process ``rec`` while the provider cannot be asked; the parked copy as `dlq
    replay` re-sends it (its headers kept, at a new offset)."""

    async def down(self: Any, operation: str, req: Any, *, idempotency_key: str) -> bool:
        raise ConnectionError("store down")

    with monkeypatch.context() as patch:
        patch.setattr(SimulatorGateway, "knows_request", down)
        emits = await h.processor.process(rec)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    monkeypatch.setattr(h.processor, "_lookups_paused", {})  # the pause is over
    return dataclasses.replace(rec, headers=dict(emits[0].record.headers), offset=rec.offset + 7)


@pytest.mark.parametrize("took", [False, True])
async def test_a_parked_unanswered_command_keeps_its_refusal_after_the_tenant_resumes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, took: bool
) -> None:
    """Review repro: parked because the provider could not be asked, re-driven once the
    tenant was active again, a command that never reached the provider charged, where
    before it would have been refused. It gets that refusal unless the provider took it."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-stamped")
    if took:  # lost at a crash, as in the tests above
        durable = _durable(h)
        first = await _answer(h, rec)
        _crash_back_to(h, durable)
    _suspend(h, t)
    redrive = await _park_while_down(h, monkeypatch, rec)
    assert redrive.headers["paystream-unanswered-refusal"] == b"tenant_suspended"
    h.tenants[t] = {**h.tenants[t], "status": "active"}
    out = await _answer(h, redrive)
    if took:
        assert kind(out) == kind(first) and data(out)["object"] == data(first)["object"]
        assert [k for k, _ in await _effects(h, record)] == ["charge"]
    else:
        assert data(out)["reason"] == "tenant_suspended", data(out)
        assert await _effects(h, record) == []


@pytest.mark.parametrize("limit", [100, 100_000])
async def test_an_over_quota_command_parked_unanswered_is_decided_afresh_when_re_driven(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """A quota refusal is not remembered (the same command sent again later is decided
    afresh), so neither is one the provider could not be asked about: the re-drive is
    decided under the limits then, with the refusal's usual data."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 100}})
    record = dict(h.tenants[t])
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "cmd-over")
    redrive = await _park_while_down(h, monkeypatch, rec)
    assert "paystream-unanswered-refusal" not in redrive.headers
    h.tenants[t] = {**h.tenants[t], "limits": {"daily_payment_volume": {"USD": limit}}}
    out = await _answer(h, redrive)
    if limit == 100:
        assert (data(out)["reason"], data(out)["limit"], data(out)["allowed"]) == (
            "quota_exceeded",
            "daily_payment_volume",
            100,
        ), data(out)
        assert await _effects(h, record) == []
    else:
        assert kind(out) == "payment.succeeded", data(out)


async def test_a_stamped_command_whose_effect_an_entity_records_is_answered_from_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review repro: the same request resent under a new command id charged (one
    provider key: the payment id); the stamped copy is answered from that command
    (`answered_by`), not refused as never taken."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    body = {**CHARGE, "payment_id": "p1"}
    _suspend(h, t)
    redrive = await _park_while_down(h, monkeypatch, _command(t, "payment.create", body, "c1"))
    h.tenants[t] = {**h.tenants[t], "status": "active"}
    resent = await _answer(h, _command(t, "payment.create", body, "c2"))
    assert kind(resent) == "payment.succeeded"
    out = await _answer(h, redrive)
    assert kind(out) == "payment.succeeded" and data(out).get("answered_by") == "c2", data(out)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]


async def test_a_stamped_command_whose_gateway_broke_meanwhile_is_parked_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    _suspend(h, t)
    redrive = await _park_while_down(h, monkeypatch, _command(t, "payment.create", CHARGE, "c1"))
    h.tenants[t] = {
        **h.tenants[t],
        "status": "active",
        "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"},  # cannot be opened
    }
    emits = await h.processor.process(redrive)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"provider_unanswered"


@pytest.mark.parametrize("path", ["quota", "suspended"])
async def test_what_changed_since_does_not_refuse_a_charge_the_provider_made(
    harness: Harness, path: str
) -> None:
    """Review repro: on the quota path the run did not go as one let through (the
    lookup assumed it would): a customer deleted since made it `not_found`, stored as
    final, although the provider had charged."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 100_000}})
    record = dict(h.tenants[t])
    made = _command(t, "customer.create", {"customer_id": "c1", "email": "a@b.c"}, "cc")
    assert kind(await _answer(h, made)) == "customer.created"
    durable = _durable(h)
    body = {**CHARGE, "customer_id": "c1", "payment_id": "p1"}
    rec = _command(t, "payment.create", body, "pay")
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    _crash_back_to(h, durable)
    gone = _command(t, "customer.delete", {"customer_id": "c1"}, "del")
    assert kind(await _answer(h, gone)) == "customer.deleted"
    if path == "quota":
        h.tenants[t] = {**h.tenants[t], "limits": {"daily_payment_volume": {"USD": 100}}}
    else:
        _suspend(h, t)
    out = await _answer(h, rec)
    assert (kind(out), out.get_id()) == (kind(first), first.get_id()), data(out)
    assert [k for k, _ in await _effects(h, record)].count("charge") == 1


async def test_a_forged_stamp_gets_its_own_command_refused_and_nothing_more(
    harness: Harness,
) -> None:
    """The stamp's presence counts, never its value: nothing of it reaches an outcome
    (no card number, no made-up reason or entity), and it restricts only its own
    command."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    forged = {
        "paystream-unanswered-refusal": b'{"reason": "card_declined", "message": '
        b'"4242424242424242", "extra": {"entity_id": "pay_victim", "object": 1}}'
    }
    rec = _command(t, "payment.create", dict(CHARGE), "cmd-forged")
    rec = dataclasses.replace(rec, headers={**rec.headers, **forged})
    out = await _answer(h, rec)
    assert data(out)["reason"] == "tenant_suspended", data(out)
    text = repr(data(out))
    assert "4242424242424242" not in text and "pay_victim" not in text
    assert await _effects(h, record) == []


async def test_a_stamped_copy_whose_effect_an_entity_records_is_answered_past_the_window(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review repro: one copy of a stamped command ran (the provider had taken it); a
    second copy, re-driven past the window as reconciled once its idempotency record
    had expired, was refused. The entity's record of its effect wins, whenever."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "c1")
    first = await _answer(h, rec)
    _crash_back_to(h, durable)
    _suspend(h, t)
    redrive = await _park_while_down(h, monkeypatch, rec)
    a = await _answer(h, redrive)  # the provider took it: it finishes
    assert kind(a) == kind(first)
    del h.idempotency[f"{t}:c1"]  # the window passed
    day_ago = str(int(time.time() * 1000) - 23 * 3_600_000 - 1_800_000).encode()
    b = dataclasses.replace(
        redrive,
        offset=redrive.offset + 1,
        headers={
            **redrive.headers,
            "paystream-first-attempt-ms": day_ago,
            "paystream-reconciled": b"1",
        },
    )
    out = await _answer(h, b)
    assert kind(out) == kind(first) and data(out)["object"]["id"] == "p1", data(out)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]


@pytest.mark.parametrize("had_webhooks", [True, False])
async def test_a_create_lost_whole_is_known_in_the_form_it_was_sent(
    harness: Harness, had_webhooks: bool
) -> None:
    """Sent with the webhook reference while the tenant had `webhooks`, then lost whole
    at a crash; the tenant suspended and its `webhooks` taken away meanwhile (or given):
    the provider is asked about the request as it was sent, and the command finishes
    (review finding: asked only as this version builds it, unknown, so refused
    `tenant_suspended`, though charged)."""
    h = harness
    t = h.add_tenant()
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    record = dict(h.tenants[t])
    base = gateway.capabilities - {gw.Capability.WEBHOOKS}
    gateway.capabilities = base | {gw.Capability.WEBHOOKS} if had_webhooks else base  # type: ignore[misc]
    durable = _durable(h)
    body = {**CHARGE, "payment_id": "p1", "metadata": {"order": "o-1"}}
    rec = _command(t, "payment.create", body, "cmd-ref")
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded", data(first)
    _crash_back_to(h, durable)
    gateway.capabilities = base if had_webhooks else base | {gw.Capability.WEBHOOKS}  # type: ignore[misc]
    _suspend(h, t)
    assert h.pool.get(Tenant.model_validate(h.tenants[t])) is gateway
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]
