"""Simulator specifics: the effect ledger, concurrency, failure injection, durability."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio as aredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    AcceptDispute,
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    DeleteCustomer,
    DisputeStatus,
    GatewayContext,
    PaymentStatus,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.gateways.simulator.cards import card_for_token
from paystream.gateways.simulator.operations import DISPUTE_EVIDENCE_FILE_FIELDS
from paystream.gateways.simulator.store import Refusal, Tx
from paystream.gateways.stripe_rules import three_decimal_problem
from paystream.money import Money
from paystream.settings import load_settings

SETTINGS = load_settings()


def sim(redis: aredis.Redis, tenant: str, **options: Any) -> SimulatorGateway:
    ctx = GatewayContext(tenant_id=tenant, provider="simulator", options=options)
    return SimulatorGateway.from_context(ctx, GatewayDeps(settings=SETTINGS, redis=redis))


def charge(amount: int = 1000, token: str = "pm_card_visa", **kw: Any) -> CreatePayment:
    return CreatePayment(
        amount=Money(amount=amount, currency="EUR"), provider_payment_method_id=token, **kw
    )


async def refused(coro: Awaitable[object]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


async def disputed(gw: SimulatorGateway) -> str:
    """The id of the dispute a charge with the dispute-creating test card opens."""
    res = await gw.create_payment(charge(token="pm_card_createDispute"), idempotency_key="k")
    assert res.dispute is not None
    return res.dispute.provider_dispute_id


def sim_key(tenant: str, kind: str, name: str) -> str:
    """A Redis key of the simulator's (store.py's layout), to look at it from outside."""
    return f"sim:{{{tenant}}}:{kind}:{name}"


def test_from_context_without_redis_fails_clearly() -> None:
    ctx = GatewayContext(tenant_id="t1", provider="simulator")
    with pytest.raises(ConfigurationError, match="Redis"):
        SimulatorGateway.from_context(ctx, GatewayDeps(settings=SETTINGS))


def test_bad_option_is_a_configuration_error(redis_client: aredis.Redis) -> None:
    with pytest.raises(ConfigurationError, match="fail_code"):
        sim(redis_client, "t1", fail_code="card_declined")
    with pytest.raises(ConfigurationError, match="bogus"):
        sim(redis_client, "t1", bogus=1)


async def test_effects_are_recorded_once_per_key(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    paid = await gw.create_payment(charge(1000), idempotency_key="k-pay")
    await gw.create_payment(charge(1000), idempotency_key="k-pay")
    await gw.create_refund(
        CreateRefund(provider_payment_id=paid.provider_payment_id, amount=400),
        idempotency_key="k-re",
    )
    await gw.create_refund(
        CreateRefund(provider_payment_id=paid.provider_payment_id, amount=400),
        idempotency_key="k-re",
    )
    effects = await gw.effects()
    assert [(e.kind, e.idempotency_key, e.amount) for e in effects] == [
        ("charge", "k-pay", 1000),
        ("refund", "k-re", 400),
    ]


async def test_concurrent_same_key_applies_once(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    outcomes = await asyncio.gather(
        *(gw.create_payment(charge(), idempotency_key="same") for _ in range(20)),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    # One commit wins; every loser of the race gets the winner's response replayed.
    assert len({o.provider_payment_id for o in outcomes if not isinstance(o, BaseException)}) == 1
    assert [e.kind for e in await gw.effects()] == ["charge"]


async def test_replay_wins_over_a_state_that_now_refuses_the_call(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A retried capture finds the payment captured: it must get its original answer."""
    gw = sim(redis_client, tenant_id)
    auth = await gw.create_payment(
        charge(900, capture_method=CaptureMethod.MANUAL), idempotency_key="auth"
    )
    req = CapturePayment(provider_payment_id=auth.provider_payment_id)
    first = await gw.capture_payment(req, idempotency_key="cap")
    again = await gw.capture_payment(req, idempotency_key="cap")
    assert again == first and first.status is PaymentStatus.SUCCEEDED
    with pytest.raises(GatewayError) as info:
        await gw.capture_payment(req, idempotency_key="cap-2")
    assert info.value.code is ErrorCode.INVALID_STATE
    assert [e.kind for e in await gw.effects()] == ["authorization", "capture"]


async def test_concurrent_refunds_never_exceed_captured(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    paid = await gw.create_payment(charge(1000), idempotency_key="pay")
    req = CreateRefund(provider_payment_id=paid.provider_payment_id, amount=300)
    outcomes = await asyncio.gather(
        *(gw.create_refund(req, idempotency_key=f"re-{i}") for i in range(8)),
        return_exceptions=True,
    )
    refunded = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refunded) == 3  # 3 x 300 fits in 1000, a 4th would not
    refunds = [e for e in await gw.effects() if e.kind == "refund"]
    assert sum(e.amount or 0 for e in refunds) == 900


async def test_fail_first_attempts_then_succeed_without_double_effect(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id, fail_first={"k1": 2})
    for _ in range(2):
        with pytest.raises(GatewayError) as info:
            await gw.create_payment(charge(), idempotency_key="k1")
        assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert await gw.effects() == []
    res = await gw.create_payment(charge(), idempotency_key="k1")
    assert res.status is PaymentStatus.SUCCEEDED
    assert len(await gw.effects()) == 1


async def test_lost_response_is_recovered_by_replay(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id, lose_response_first={"*": 1})
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(charge(), idempotency_key="k")
    assert info.value.code is ErrorCode.TIMEOUT and info.value.retryable
    res = await gw.create_payment(charge(), idempotency_key="k")
    effects = await gw.effects()
    assert [(e.kind, e.object_id) for e in effects] == [("charge", res.provider_payment_id)]


async def test_fail_rate_is_reproducible_with_a_seed(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    async def pattern() -> list[bool]:
        gw = sim(redis_client, f"{tenant_id}-{uuid.uuid4().hex[:6]}", fail_rate=0.5, seed=7)
        out = []
        for i in range(12):
            try:
                await gw.create_payment(charge(), idempotency_key=f"k{i}")
                out.append(True)
            except GatewayError as exc:
                assert exc.code is ErrorCode.PROVIDER_UNAVAILABLE
                out.append(False)
        return out

    first = await pattern()
    assert first == await pattern()
    assert {True, False} <= set(first)  # the seeded pattern has both outcomes


async def test_state_survives_a_new_worker(redis_client: aredis.Redis, tenant_id: str) -> None:
    auth = await sim(redis_client, tenant_id).create_payment(
        charge(capture_method=CaptureMethod.MANUAL), idempotency_key="k"
    )
    # A fresh gateway object (a restarted worker) replays the key and sees the object.
    again = await sim(redis_client, tenant_id).create_payment(
        charge(capture_method=CaptureMethod.MANUAL), idempotency_key="k"
    )
    assert again == auth


async def test_tenants_are_isolated(redis_client: aredis.Redis, tenant_id: str) -> None:
    a = await sim(redis_client, f"{tenant_id}-a").create_payment(charge(), idempotency_key="k")
    b = await sim(redis_client, f"{tenant_id}-b").create_payment(charge(), idempotency_key="k")
    assert a.provider_payment_id != b.provider_payment_id
    other = sim(redis_client, f"{tenant_id}-b")
    with pytest.raises(GatewayError) as info:
        await other.create_refund(
            CreateRefund(provider_payment_id=a.provider_payment_id), idempotency_key="r"
        )
    assert info.value.code is ErrorCode.NOT_FOUND


async def test_three_d_secure_completion(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(
        charge(token="pm_card_authenticationRequired"), idempotency_key="k"
    )
    assert res.status is PaymentStatus.REQUIRES_ACTION
    assert res.next_action and res.next_action["type"] == "redirect_to_url"
    done = await gw.complete_authentication(res.provider_payment_id)
    assert done.status is PaymentStatus.SUCCEEDED
    assert await gw.complete_authentication(res.provider_payment_id) == done  # once only
    assert [e.kind for e in await gw.effects()] == ["charge"]


async def test_dispute_resolution(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(charge(token="pm_card_createDispute"), idempotency_key="k")
    assert res.dispute is not None
    won = await gw.resolve_dispute(res.dispute.provider_dispute_id, won=True)
    assert won.status.value == "won"


async def test_latency_is_applied(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id, latency_ms=30)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await gw.create_payment(charge(), idempotency_key="k")
    assert loop.time() - start >= 0.03


@pytest.mark.parametrize(
    "options",
    [
        {},
        # Failure injection counts attempts in Redis too: that was outside the mapping,
        # and a raw redis ConnectionError escaped (dead-lettering the command).
        {"fail_first": {"k-down": 1}},
        {"fail_first": {"other": 1}},
        {"latency_ms": 1, "lose_response_first": {"*": 1}},
    ],
)
async def test_unreachable_state_store_is_a_retryable_provider_outage(
    options: dict[str, Any],
) -> None:
    """Redis down looks like the provider down: retried, then parked; never dead-lettered."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = aredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        gw = sim(down, "t-down", **options)
        with pytest.raises(GatewayError) as caught:
            await gw.create_payment(charge(), idempotency_key="k-down")
        assert caught.value.code is ErrorCode.PROVIDER_UNAVAILABLE and caught.value.retryable
    finally:
        await down.aclose()


async def test_a_store_refusing_writes_is_a_retryable_provider_failure(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Redis answering OOM (or READONLY after a failover) is the simulated provider being
    down: retried and parked like any outage, not a bug that dead-letters the command."""
    gw = sim(redis_client, tenant_id)
    before = await redis_client.config_get("maxmemory*")
    await redis_client.config_set("maxmemory-policy", "noeviction")
    await redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(GatewayError) as info:
            await gw.create_payment(charge(), idempotency_key="oom")
    finally:
        await redis_client.config_set("maxmemory", before["maxmemory"])
        await redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert (await gw.create_payment(charge(), idempotency_key="oom")).status is (
        PaymentStatus.SUCCEEDED
    )


async def test_an_amount_over_stripes_eight_digits_is_refused(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    assert (await gw.create_payment(charge(99_999_999), idempotency_key="max")).status is (
        PaymentStatus.SUCCEEDED
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(charge(100_000_000), idempotency_key="over")
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.retryable


async def test_idr_takes_twelve_digits_as_stripe_does(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Stripe's currencies page: "up to twelve digits for IDR (for example, a value of
    999999999999 for a charge of 9,999,999,999.99 IDR), and up to eight digits for all
    other currencies" (review h64a: the simulator refused Rp 1,000,000.00 and more)."""
    gw = sim(redis_client, tenant_id)

    def idr(amount: int) -> CreatePayment:
        return CreatePayment(
            amount=Money(amount=amount, currency="IDR"), provider_payment_method_id="pm_card_visa"
        )

    for amount in (100_000_000, 150_000_000, 999_999_999_999):
        res = await gw.create_payment(idr(amount), idempotency_key=f"idr-{amount}")
        assert res.status is PaymentStatus.SUCCEEDED, amount
        assert res.amount == Money(amount=amount, currency="IDR")
    with pytest.raises(ValidationError):  # thirteen digits: not an amount paystream holds
        idr(1_000_000_000_000)
    for currency in ("USD", "JPY", "KWD"):  # eight digits everywhere else
        over = CreatePayment(
            amount=Money(amount=100_000_000, currency=currency),
            provider_payment_method_id="pm_card_visa",
        )
        error = await refused(gw.create_payment(over, idempotency_key=f"over-{currency}"))
        assert error.code is ErrorCode.INVALID_REQUEST, currency
        assert "99999999 minor units" in error.message, error.message


# ---- refusals: the key's answer once the provider ran the call (Stripe keeps them) ---


async def test_a_state_refusal_is_the_keys_answer(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A refund refused while the payment was only authorised, retried under its key after
    the capture: Stripe answers with the stored refusal; the simulator used to refund."""
    gw = sim(redis_client, tenant_id)
    auth = await gw.create_payment(
        charge(5000, capture_method=CaptureMethod.MANUAL), idempotency_key="auth"
    )
    refund = CreateRefund(provider_payment_id=auth.provider_payment_id, amount=5000)
    first = await refused(gw.create_refund(refund, idempotency_key="re"))
    assert first.code is ErrorCode.INVALID_STATE and first.http_status == 400
    await gw.capture_payment(
        CapturePayment(provider_payment_id=auth.provider_payment_id), idempotency_key="cap"
    )
    again = await refused(gw.create_refund(refund, idempotency_key="re"))
    assert (again.code, again.message) == (first.code, first.message)
    other = refund.model_copy(update={"amount": 4000})
    assert (await refused(gw.create_refund(other, idempotency_key="re"))).code is (
        ErrorCode.IDEMPOTENCY_ERROR
    )
    assert [e.kind for e in await gw.effects()] == ["authorization", "capture"]
    await gw.create_refund(refund, idempotency_key="re-2")  # a new request goes through
    assert [e.kind for e in await gw.effects()][-1] == "refund"


async def test_a_not_found_refusal_is_the_keys_answer(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """The README's case: a create refused for a missing payment method keeps its key
    bound to the refusal; the corrected create under the key is an idempotency error."""
    gw = sim(redis_client, tenant_id)
    missing = charge(token="pm_missing")
    for _ in range(2):
        err = await refused(gw.create_payment(missing, idempotency_key="pse:t:payment:p1"))
        assert err.code is ErrorCode.NOT_FOUND and err.http_status == 404
    corrected = await refused(gw.create_payment(charge(), idempotency_key="pse:t:payment:p1"))
    assert corrected.code is ErrorCode.IDEMPOTENCY_ERROR and not corrected.retryable
    assert await gw.effects() == []
    # The refusal wrote nothing but the key's record.
    assert await redis_client.exists(sim_key(tenant_id, "idem", "pse:t:payment:p1")) == 1


async def test_a_refusal_decided_on_state_that_changed_is_recomputed(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A refusal is committed with its read checks: decided on a payment that changed
    before the commit, it is not stored but recomputed from the fresh state."""
    gw = sim(redis_client, tenant_id)
    paid = await gw.create_payment(charge(), idempotency_key="pay")
    runs = 0

    async def refuse_once(tx: Tx) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        pi = await tx.get(paid.provider_payment_id)
        assert pi is not None
        if runs == 1:  # another call commits meanwhile
            key = gw._store.object_key(paid.provider_payment_id)
            await redis_client.set(key, json.dumps({**pi, "amount_refunded": 1}))
            raise Refusal(ErrorCode.INVALID_STATE, "stale", http_status=400)
        return {"ok": {"seen": pi["amount_refunded"]}}

    assert await gw._store.execute("k", "fp", refuse_once) == {"ok": {"seen": 1}}
    assert runs == 2


async def test_parameter_refusals_are_not_stored(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Stripe saves no result for parameters that fail validation: the corrected request
    under the same key goes through."""
    gw = sim(redis_client, tenant_id)
    small = await refused(gw.create_payment(charge(49), idempotency_key="k"))
    assert small.code is ErrorCode.INVALID_REQUEST and "amount_too_small" in small.message
    paid = await gw.create_payment(charge(5000), idempotency_key="k")
    assert paid.status is PaymentStatus.SUCCEEDED
    zero = CreateRefund(provider_payment_id=paid.provider_payment_id, amount=0)
    assert (await refused(gw.create_refund(zero, idempotency_key="r"))).code is (
        ErrorCode.INVALID_REQUEST
    )
    await gw.create_refund(zero.model_copy(update={"amount": 10}), idempotency_key="r")
    assert [(e.kind, e.idempotency_key) for e in await gw.effects()] == [
        ("charge", "k"),
        ("refund", "r"),
    ]


async def test_a_refused_provider_action_raises_its_refusal(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    dispute_id = await disputed(gw)
    await gw.accept_dispute(AcceptDispute(provider_dispute_id=dispute_id), idempotency_key="a")
    err = await refused(gw.resolve_dispute(dispute_id, won=True))
    assert err.code is ErrorCode.INVALID_STATE


# ---- delete: Stripe's DELETE takes no idempotency key ----------------------------------


async def test_a_delete_retried_after_a_lost_answer_is_not_found(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """As on Stripe, where the handler then reports provider_deletion "not_found"."""
    gw = sim(redis_client, tenant_id, lose_response_first={"del": 1})
    cus = await gw.create_customer(CreateCustomer(email="a@example.com"), idempotency_key="c")
    req = DeleteCustomer(provider_customer_id=cus.provider_customer_id)
    assert (await refused(gw.delete_customer(req, idempotency_key="del"))).code is (
        ErrorCode.TIMEOUT
    )
    err = await refused(gw.delete_customer(req, idempotency_key="del"))
    assert err.code is ErrorCode.NOT_FOUND and err.http_status == 404
    assert [e.kind for e in await gw.effects()] == ["customer.created", "customer.deleted"]
    assert await redis_client.exists(sim_key(tenant_id, "idem", "del")) == 0


async def test_concurrent_deletes_delete_once(redis_client: aredis.Redis, tenant_id: str) -> None:
    gw = sim(redis_client, tenant_id)
    cus = await gw.create_customer(CreateCustomer(), idempotency_key="c")
    req = DeleteCustomer(provider_customer_id=cus.provider_customer_id)
    outcomes = await asyncio.gather(
        *(gw.delete_customer(req, idempotency_key=f"del-{i % 3}") for i in range(12)),
        return_exceptions=True,
    )
    deleted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(deleted) == 1
    assert all(
        isinstance(o, GatewayError) and o.code is ErrorCode.NOT_FOUND
        for o in outcomes
        if isinstance(o, BaseException)
    )
    assert [e.kind for e in await gw.effects()].count("customer.deleted") == 1


# ---- dispute evidence ----------------------------------------------------------------


async def test_evidence_file_fields_take_file_upload_ids(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    dispute_id = await disputed(gw)
    assert len(DISPUTE_EVIDENCE_FILE_FIELDS) == 9
    for field in sorted(DISPUTE_EVIDENCE_FILE_FIELDS):
        text = SubmitDisputeEvidence(
            provider_dispute_id=dispute_id, evidence={field: "Ada Lovelace"}, submit=False
        )
        err = await refused(gw.submit_dispute_evidence(text, idempotency_key=f"ev-{field}"))
        assert err.code is ErrorCode.INVALID_REQUEST and not err.retryable
        assert "No such file upload" in err.message and "Ada" not in err.message
        # Not stored (a parameter refusal): the corrected request under the key is fine.
        upload = text.model_copy(update={"evidence": {field: "file_1Nb3Qz2eZvKYlo2C"}})
        done = await gw.submit_dispute_evidence(upload, idempotency_key=f"ev-{field}")
        assert done.status is DisputeStatus.NEEDS_RESPONSE
    text_fields = SubmitDisputeEvidence(
        provider_dispute_id=dispute_id,
        evidence={"uncategorized_text": "delivered", "customer_name": "Ada"},
    )
    done = await gw.submit_dispute_evidence(text_fields, idempotency_key="ev")
    assert done.status is DisputeStatus.UNDER_REVIEW


# ---- amounts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "minimum"),
    [
        ("USD", 50),
        ("EUR", 50),
        ("GBP", 30),
        ("JPY", 50),
        ("CAD", 50),
        ("AUD", 50),
        ("CHF", 50),
        ("HKD", 400),
        ("MXN", 1000),
    ],
)
async def test_stripes_minimum_charge_amounts(
    redis_client: aredis.Redis, tenant_id: str, currency: str, minimum: int
) -> None:
    gw = sim(redis_client, tenant_id)

    def pay(amount: int) -> CreatePayment:
        money = Money(amount=amount, currency=currency)
        return CreatePayment(amount=money, provider_payment_method_id="pm_card_visa")

    err = await refused(gw.create_payment(pay(minimum - 1), idempotency_key="low"))
    assert err.code is ErrorCode.INVALID_REQUEST and not err.retryable
    assert "amount_too_small" in err.message
    assert (await gw.create_payment(pay(minimum), idempotency_key="min")).status is (
        PaymentStatus.SUCCEEDED
    )


async def test_a_currency_outside_stripes_table_has_no_minimum(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Stripe converts it to the settlement currency first; the simulator cannot."""
    req = CreatePayment(
        amount=Money(amount=1, currency="KRW"), provider_payment_method_id="pm_card_visa"
    )
    res = await sim(redis_client, tenant_id).create_payment(req, idempotency_key="k")
    assert res.status is PaymentStatus.SUCCEEDED


async def test_three_decimal_amounts_follow_the_stripe_gateways_rule(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    odd = Money(amount=5124, currency="KWD")
    err = await refused(
        gw.create_payment(
            CreatePayment(amount=odd, provider_payment_method_id="pm_card_visa"),
            idempotency_key="odd",
        )
    )
    assert err.code is ErrorCode.INVALID_REQUEST and err.message == three_decimal_problem(odd)
    even = CreatePayment(
        amount=Money(amount=5120, currency="KWD"), provider_payment_method_id="pm_card_visa"
    )
    assert (await gw.create_payment(even, idempotency_key="odd")).status is (
        PaymentStatus.SUCCEEDED
    )


async def _kwd_authorised(gw: Any) -> str:
    """A KWD payment of 5.120 authorised for manual capture: its provider id."""
    manual = CreatePayment(
        amount=Money(amount=5120, currency="KWD"),
        provider_payment_method_id="pm_card_visa",
        capture_method=CaptureMethod.MANUAL,
    )
    return (await gw.create_payment(manual, idempotency_key="auth")).provider_payment_id


async def test_three_decimal_captures_and_refunds_follow_it_too(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Stripe applies the rule to captures and refunds as to charges."""
    gw = sim(redis_client, tenant_id)
    pid = await _kwd_authorised(gw)
    capture = CapturePayment(provider_payment_id=pid, amount=5005)
    err = await refused(gw.capture_payment(capture, idempotency_key="cap-odd"))
    assert err.code is ErrorCode.INVALID_REQUEST and "multiples of 10" in err.message
    captured = CapturePayment(provider_payment_id=pid, amount=5000)
    assert (await gw.capture_payment(captured, idempotency_key="cap")).amount_captured == 5000
    refund = CreateRefund(provider_payment_id=pid, amount=1005)
    err = await refused(gw.create_refund(refund, idempotency_key="ref-odd"))
    assert err.code is ErrorCode.INVALID_REQUEST and "multiples of 10" in err.message
    assert (await gw.effects())[-1].kind == "capture"  # neither moved money


async def test_a_three_decimal_refusal_leaves_the_key_free(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A refusal of the parameters alone is not kept (as for a charge): the corrected
    capture or refund may be sent again under the same key (review finding: it was
    answered idempotency_error)."""
    gw = sim(redis_client, tenant_id)
    pid = await _kwd_authorised(gw)
    await refused(
        gw.capture_payment(
            CapturePayment(provider_payment_id=pid, amount=5005), idempotency_key="cap"
        )
    )
    fixed = CapturePayment(provider_payment_id=pid, amount=5000)
    assert (await gw.capture_payment(fixed, idempotency_key="cap")).amount_captured == 5000
    await refused(
        gw.create_refund(CreateRefund(provider_payment_id=pid, amount=1005), idempotency_key="r")
    )
    refund = await gw.create_refund(
        CreateRefund(provider_payment_id=pid, amount=1000), idempotency_key="r"
    )
    assert refund.amount.amount == 1000


# ---- failure injection -----------------------------------------------------------------


async def test_attempts_are_counted_only_for_keys_a_knob_names(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id, fail_first={"k1": 1}, lose_response_first={"k2": 1})
    for _ in range(2):
        await gw.create_payment(charge(), idempotency_key="other")
    for counter in ("attempts", "answered"):
        assert await redis_client.exists(sim_key(tenant_id, counter, "other")) == 0
    await refused(gw.create_payment(charge(), idempotency_key="k1"))
    assert await redis_client.exists(sim_key(tenant_id, "attempts", "k1")) == 1


async def test_fail_first_and_lose_response_first_together(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Failed attempts never reached the provider: they used up the lost answers too, so
    with both knobs set no answer was ever lost."""
    gw = sim(redis_client, tenant_id, fail_first={"*": 2}, lose_response_first={"*": 1})
    codes = [
        (await refused(gw.create_payment(charge(), idempotency_key="k"))).code for _ in range(3)
    ]
    assert codes == [
        ErrorCode.PROVIDER_UNAVAILABLE,
        ErrorCode.PROVIDER_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    ]
    res = await gw.create_payment(charge(), idempotency_key="k")
    assert [(e.kind, e.object_id) for e in await gw.effects()] == [
        ("charge", res.provider_payment_id)
    ]


# ---- failure codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedStolenCard", "stolen_card"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc"),
        ("pm_card_chargeCustomerFail", "generic_decline"),
    ],
)
async def test_a_declined_payment_records_the_cards_decline_code(
    redis_client: aredis.Redis, tenant_id: str, token: str, decline_code: str
) -> None:
    """Stripe's failed PaymentIntent says `decline_code` (what our Stripe mapping reads),
    not our vocabulary's `lost_or_stolen_card`."""
    gw = sim(redis_client, tenant_id)
    err = await refused(gw.create_payment(charge(token=token), idempotency_key="k"))
    assert err.decline_code == decline_code and err.provider_payment_id
    canceled = await gw.cancel_payment(
        CancelPayment(provider_payment_id=err.provider_payment_id), idempotency_key="x"
    )
    assert canceled.failure_code == decline_code


async def test_a_failed_challenge_records_stripes_code(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(
        charge(token="pm_card_threeDSecure2Required"), idempotency_key="k"
    )
    failed = await gw.complete_authentication(res.provider_payment_id, succeed=False)
    assert failed.status is PaymentStatus.FAILED
    assert failed.failure_code == "payment_intent_authentication_failure"


async def test_an_opposite_provider_verdict_is_an_idempotency_error(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """It was replayed as the first verdict, silently: a test asking for a lost dispute
    got a won one."""
    gw = sim(redis_client, tenant_id)
    dispute_id = await disputed(gw)
    won = await gw.resolve_dispute(dispute_id, won=True)
    assert await gw.resolve_dispute(dispute_id, won=True) == won
    err = await refused(gw.resolve_dispute(dispute_id, won=False))
    assert err.code is ErrorCode.IDEMPOTENCY_ERROR
    pending = await gw.create_payment(
        charge(token="pm_card_authenticationRequired"), idempotency_key="p"
    )
    await gw.complete_authentication(pending.provider_payment_id, succeed=True)
    err = await refused(gw.complete_authentication(pending.provider_payment_id, succeed=False))
    assert err.code is ErrorCode.IDEMPOTENCY_ERROR


# ---- housekeeping: nothing grows without bound ------------------------------------------


async def test_objects_records_and_the_ledger_expire(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = SimulatorGateway(redis_client, tenant_id, record_ttl_seconds=100, state_ttl_seconds=1000)
    cus = await gw.create_customer(CreateCustomer(), idempotency_key="c")
    paid = await gw.create_payment(
        charge(provider_customer_id=cus.provider_customer_id), idempotency_key="p"
    )
    assert 0 < await redis_client.ttl(sim_key(tenant_id, "idem", "p")) <= 100
    assert 900 < await redis_client.ttl(sim_key(tenant_id, "obj", paid.provider_payment_id)) <= 1000
    assert 900 < await redis_client.ttl(f"sim:{{{tenant_id}}}:effects") <= 1000
    # An object in use lives on: a payment that only reads the customer extends it.
    customer_key = sim_key(tenant_id, "obj", cus.provider_customer_id)
    await redis_client.expire(customer_key, 5)
    await gw.create_payment(
        charge(provider_customer_id=cus.provider_customer_id), idempotency_key="p2"
    )
    assert await redis_client.ttl(customer_key) > 900
    # Never shorter than the idempotency window: a replayed create names a live object.
    longer = SimulatorGateway(
        redis_client, f"{tenant_id}-w", record_ttl_seconds=5000, state_ttl_seconds=1000
    )
    again = await longer.create_payment(charge(), idempotency_key="p")
    assert (
        await redis_client.ttl(sim_key(f"{tenant_id}-w", "obj", again.provider_payment_id)) > 4000
    )


async def test_the_effect_ledger_keeps_its_newest_entries(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = SimulatorGateway(redis_client, tenant_id, effects_cap=3)
    for i in range(5):
        await gw.create_payment(charge(), idempotency_key=f"k{i}")
    assert [e.idempotency_key for e in await gw.effects()] == ["k2", "k3", "k4"]


async def test_no_refund_of_a_charged_back_payment(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A lost dispute took the money back: a refund would pay it out twice. The simulator
    refuses it as Stripe does, whatever paystream checked first (mutation testing)."""
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(charge(token="pm_card_createDispute"), idempotency_key="k")
    assert res.dispute is not None
    accept = AcceptDispute(provider_dispute_id=res.dispute.provider_dispute_id)
    await gw.accept_dispute(accept, idempotency_key="a")
    refund = CreateRefund(provider_payment_id=res.provider_payment_id)
    err = await refused(gw.create_refund(refund, idempotency_key="r"))
    assert err.code is ErrorCode.INVALID_STATE and "charged back" in err.message
    assert "refund" not in [e.kind for e in await gw.effects()]


async def test_a_cancelled_authorisation_is_a_void_in_the_effect_ledger(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """The ledger that proves each effect happened once must show the release too."""
    gw = sim(redis_client, tenant_id)
    res = await gw.create_payment(charge(capture_method=CaptureMethod.MANUAL), idempotency_key="k")
    cancel = CancelPayment(provider_payment_id=res.provider_payment_id)
    await gw.cancel_payment(cancel, idempotency_key="c")
    assert [(e.kind, e.amount) for e in await gw.effects()] == [
        ("authorization", 1000),
        ("void", 1000),
    ]


@pytest.mark.parametrize(
    ("token", "brand", "last4"),
    [
        ("pm_card_visa_debit", "visa", "5556"),
        ("pm_card_mastercard_prepaid", "mastercard", "5100"),
        ("tok_discover", "discover", "1117"),
        ("pm_card_us", "visa", "4242"),
    ],
)
async def test_stripes_other_succeeding_test_tokens_charge(
    redis_client: aredis.Redis, token: str, brand: str, last4: str
) -> None:
    """Review finding: Stripe takes them, the simulator answered 404."""
    gw = sim(redis_client, f"t-{uuid.uuid4().hex[:8]}")
    res = await gw.create_payment(charge(token=token), idempotency_key=f"k-{token}")
    assert res.status is PaymentStatus.SUCCEEDED
    card = card_for_token(token)
    assert card is not None and (card.brand, card.last4) == (brand, last4)


async def test_a_partial_capture_under_the_minimum_charge_is_refused(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """Stripe refuses a capture under the currency's minimum charge (`amount_too_small`),
    as it refuses such a charge (review h64a: EUR 0.10 of 10.00 was captured). The key
    keeps no answer, so the corrected amount may be sent under it."""
    gw = sim(redis_client, tenant_id)
    auth = await gw.create_payment(
        charge(1000, capture_method=CaptureMethod.MANUAL), idempotency_key="auth"
    )
    under = CapturePayment(provider_payment_id=auth.provider_payment_id, amount=10)
    error = await refused(gw.capture_payment(under, idempotency_key="cap"))
    assert error.code is ErrorCode.INVALID_REQUEST and "amount_too_small" in error.message
    at_minimum = CapturePayment(provider_payment_id=auth.provider_payment_id, amount=50)
    done = await gw.capture_payment(at_minimum, idempotency_key="cap")
    assert done.status is PaymentStatus.SUCCEEDED and done.amount_captured == 50
    assert [(e.kind, e.amount) for e in await gw.effects() if e.kind == "capture"] == [
        ("capture", 50)
    ]
