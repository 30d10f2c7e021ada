"""Paddle subscriptions through the gateway: a checkout transaction of a recurring price
(``requires_action`` until paid), the subscription Paddle makes when it is paid, read
back with its transactions as invoices, renewed and declined, updated without proration,
canceled at period end (and resumed) or now. Against the FAKE Paddle
(tests/fixtures/paddle_fake.py)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    CancelSubscription,
    CreateSubscription,
    InvoiceStatus,
    RetrieveSubscription,
    SubscriptionResult,
    SubscriptionStatus,
    UpdateSubscription,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.paddle import PaddleGateway
from paystream.gateways.paddle.references import request_tag
from paystream.gateways.retry import CircuitState, RetryPolicy
from paystream.money import Money
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, usd


def _plan(amount: int = 1200, **fields: Any) -> CreateSubscription:
    return CreateSubscription(
        provider_customer_id=str(fields.pop("customer", "")) or "ctm_none",
        provider_payment_method_id=str(fields.pop("token", "checkout")),
        amount=usd(amount),
        interval=str(fields.pop("interval", "month")),
        interval_count=int(fields.pop("interval_count", 1)),
        description="Pro plan",
        **fields,
    )


async def _customer(gw: PaddleGateway) -> str:
    from paystream.gateways.base import CreateCustomer

    made = await gw.create_customer(
        CreateCustomer(email=f"{key()[:12]}@example.com"), idempotency_key=key()
    )
    return made.provider_customer_id


async def _read(gw: PaddleGateway, sid: str) -> SubscriptionResult:
    return await gw.retrieve_subscription(
        RetrieveSubscription(provider_subscription_id=sid), idempotency_key=key()
    )


async def _renew(url: str, sub_id: str, outcome: str = "captured") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/_fake/subscriptions/{sub_id}/renew", json={"outcome": outcome}) as r,
    ):
        r.raise_for_status()
        return dict((await r.json())["data"])


async def _paddle_sub_id(url: str, checkout_id: str) -> str:
    made = [e for e in await effects(url) if e["kind"] == "subscription"]
    return next(str(e["id"]) for e in made if e["transaction"] == checkout_id)


async def test_a_subscription_starts_at_checkout_and_renews(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    assert made.status is SubscriptionStatus.REQUIRES_ACTION
    assert made.provider_subscription_id.startswith("txn_")
    assert made.amount == usd(1200) and (made.interval, made.interval_count) == ("month", 1)
    action = made.next_action or {}
    assert action["paddle_transaction_id"] == made.provider_subscription_id
    assert action["redirect_to_url"]["url"].endswith(f"?_ptxn={made.provider_subscription_id}")
    made_txn = [e for e in await effects(paddle_url) if e["id"] == made.provider_subscription_id]
    assert made_txn and made_txn[0]["custom_data"]["paystream_request"]
    # Not paid yet: read back as it is, nothing billed.
    assert (await _read(gw, made.provider_subscription_id)).status is (
        SubscriptionStatus.REQUIRES_ACTION
    )
    # A declined card at checkout makes no subscription (the transaction stays payable).
    await paddle_checkout(paddle_url, made.provider_subscription_id, "declined")
    assert (await _read(gw, made.provider_subscription_id)).status is (
        SubscriptionStatus.REQUIRES_ACTION
    )
    await paddle_checkout(paddle_url, made.provider_subscription_id)
    live = await _read(gw, made.provider_subscription_id)
    assert live.status is SubscriptionStatus.ACTIVE and live.next_action is None
    assert live.provider_subscription_id == made.provider_subscription_id  # (named for good)
    assert [i.status for i in live.invoices] == [InvoiceStatus.PAID]
    assert live.invoices[0].provider_invoice_id == made.provider_subscription_id
    first_end = live.current_period_end
    sub_id = await _paddle_sub_id(paddle_url, made.provider_subscription_id)
    await _renew(paddle_url, sub_id)
    renewed = await _read(gw, made.provider_subscription_id)
    assert renewed.status is SubscriptionStatus.ACTIVE
    assert renewed.current_period_start == first_end and len(renewed.invoices) == 2
    await _renew(paddle_url, sub_id, "not_enough_balance")
    due = await _read(gw, made.provider_subscription_id)
    assert due.status is SubscriptionStatus.PAST_DUE
    assert due.invoices[0].status is InvoiceStatus.OPEN
    assert due.invoices[0].failure_code == "not_enough_balance"
    await gw.aclose()


async def test_update_and_cancels(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    sid = made.provider_subscription_id
    with pytest.raises(GatewayError) as unpaid:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, amount=usd(900)),
            idempotency_key=key(),
        )
    assert unpaid.value.code is ErrorCode.INVALID_STATE
    await paddle_checkout(paddle_url, sid)
    changed = await gw.update_subscription(
        UpdateSubscription(provider_subscription_id=sid, amount=usd(900)), idempotency_key=key()
    )
    assert changed.amount == usd(900) and changed.status is SubscriptionStatus.ACTIVE
    assert len(changed.invoices) == 1  # (do_not_bill: nothing billed for the change)
    with pytest.raises(UnsupportedOperation):
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, provider_payment_method_id="pm"),
            idempotency_key=key(),
        )
    ending = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid, at_period_end=True), idempotency_key=key()
    )
    assert ending.cancel_at_period_end and ending.status is SubscriptionStatus.ACTIVE
    again = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid, at_period_end=True), idempotency_key=key()
    )
    assert again.cancel_at_period_end
    resumed = await gw.update_subscription(
        UpdateSubscription(provider_subscription_id=sid, cancel_at_period_end=False),
        idempotency_key=key(),
    )
    assert not resumed.cancel_at_period_end
    gone = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid), idempotency_key=key()
    )
    assert gone.status is SubscriptionStatus.CANCELED and gone.canceled_at is not None
    retried = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid), idempotency_key=key()
    )
    assert retried.status is SubscriptionStatus.CANCELED
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    cancels = [
        e
        for e in await effects(paddle_url)
        if e["kind"] == "subscription_cancel" and e["id"] == paddle_sub
    ]
    assert [e["effective_from"] for e in cancels] == ["next_billing_period", "immediately"]
    await gw.aclose()


async def test_a_scheduled_cancel_ends_it_at_the_billing_date(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), interval="week", interval_count=2),
        idempotency_key=key(),
    )
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid, at_period_end=True), idempotency_key=key()
    )
    await _renew(paddle_url, await _paddle_sub_id(paddle_url, sid))
    ended = await _read(gw, sid)
    assert ended.status is SubscriptionStatus.CANCELED and not ended.cancel_at_period_end
    assert len(ended.invoices) == 1  # (no renewal billed)
    await gw.aclose()


async def test_an_unpaid_one_is_canceled_with_its_checkout(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    made = await gw.create_subscription(_plan(customer=await _customer(gw)), idempotency_key=key())
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid, "declined")  # (ready: Paddle cancels it)
    with pytest.raises(GatewayError) as no_period:
        await gw.cancel_subscription(
            CancelSubscription(provider_subscription_id=sid, at_period_end=True),
            idempotency_key=key(),
        )
    assert no_period.value.code is ErrorCode.INVALID_STATE
    gone = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid), idempotency_key=key()
    )
    assert gone.status is SubscriptionStatus.CANCELED
    await gw.aclose()


async def test_a_create_sent_again_makes_one_checkout(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    req = _plan(customer=await _customer(gw))
    client = losing(gw, "POST", "transactions")
    idem = key()
    REQUEST_SENT_SINCE.set(time.time())  # (as the pipeline sets it: the command's time)
    with pytest.raises(GatewayError) as lost:
        await gw.create_subscription(req, idempotency_key=idem)
    assert lost.value.code is ErrorCode.TIMEOUT
    again = await gw.create_subscription(req, idempotency_key=idem)
    assert again.status is SubscriptionStatus.REQUIRES_ACTION
    made = [e for e in await effects(paddle_url) if e["kind"] == "transaction"]
    tag = request_tag(idem)
    mine = [e for e in made if (e["custom_data"] or {}).get("paystream_request") == tag]
    assert [e["id"] for e in mine] == [again.provider_subscription_id]
    assert client.sent.count(("POST", "transactions")) == 1  # (found, not sent again)
    assert await gw.knows_request("create_subscription", req, idempotency_key=idem)
    with pytest.raises(GatewayError) as other:
        await gw.create_subscription(
            _plan(1300, customer=req.provider_customer_id), idempotency_key=idem
        )
    assert other.value.code is ErrorCode.IDEMPOTENCY_ERROR
    await gw.aclose()


async def test_what_it_refuses_before_any_call(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    before = len(await effects(paddle_url))
    with pytest.raises(GatewayError) as token:
        await gw.create_subscription(_plan(token="paymtd_x"), idempotency_key=key())
    assert token.value.code is ErrorCode.INVALID_REQUEST and '"checkout"' in token.value.message
    with pytest.raises(GatewayError) as currency:
        await gw.create_subscription(
            _plan().model_copy(update={"amount": Money(amount=5, currency="IDR")}),
            idempotency_key=key(),
        )
    assert currency.value.code is ErrorCode.INVALID_REQUEST
    assert len(await effects(paddle_url)) == before
    await gw.aclose()


async def _paid_not_processed(url: str, transaction_id: str) -> None:
    """The customer paid; Paddle has not yet made the subscription (the fake's checkout
    stopped at ``paid``, as Paddle's is when it sends ``transaction.paid``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/_fake/transactions/{transaction_id}/checkout", json={"until": "paid"}
        ) as r,
    ):
        r.raise_for_status()


async def test_a_checkout_paid_before_paddle_names_its_subscription(paddle_url: str) -> None:
    """Paddle's order (its "Subscription created scenario"): ``transaction.paid``, then
    ``subscription.created`` and ``.activated``, and only then is the transaction updated
    with its ``subscription_id`` and ``completed``. Each of those events is a refresh of the
    checkout read in between: it is still requires_action (nothing more to pay: no next
    action), never a provider failure, which was retried against the tenant's circuit (4
    tries each: two such refreshes opened it, parking every command of the tenant's) and
    then parked on the retry topic (review h79r_b H1)."""
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    sid = made.provider_subscription_id
    await _paid_not_processed(paddle_url, sid)
    policy = RetryPolicy(
        max_attempts=4,
        backoff_base_seconds=0.001,
        failure_threshold=5,
        reset_seconds=60,
        sleep=_no_wait,
    )
    for _ in range(2):  # (transaction.paid's refresh, subscription.created's)
        read = await policy.call("t", "paddle", lambda: _read(gw, sid))
        assert read.status is SubscriptionStatus.REQUIRES_ACTION
        assert read.next_action is None and read.invoices == ()
    assert policy.breaker("t", "paddle").state is CircuitState.CLOSED
    await _paid_not_processed(paddle_url, sid)  # (processed: the subscription made)
    live = await _read(gw, sid)
    assert live.status is SubscriptionStatus.ACTIVE
    assert [i.status for i in live.invoices] == [InvoiceStatus.PAID]
    await gw.aclose()


async def _no_wait(seconds: float) -> None:
    return None


async def test_an_unopened_checkout_cannot_be_canceled_and_stays_payable(paddle_url: str) -> None:
    """docs/paddle.md, "A checkout never paid": the transaction paystream makes (a customer,
    no address) is a draft, which Paddle does not cancel; it stays payable, and paid later
    starts the subscription."""
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    sid = made.provider_subscription_id
    with pytest.raises(GatewayError) as refused:
        await gw.cancel_subscription(
            CancelSubscription(provider_subscription_id=sid, at_period_end=False),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.INVALID_STATE and "draft" in refused.value.message
    assert (await _read(gw, sid)).status is SubscriptionStatus.REQUIRES_ACTION
    await paddle_checkout(paddle_url, sid)
    assert (await _read(gw, sid)).status is SubscriptionStatus.ACTIVE
    await gw.aclose()


async def test_a_change_paddle_refuses_for_the_subscriptions_state_is_invalid_state(
    paddle_url: str,
) -> None:
    """Paddle's refusals of a change for the subscription's state (its error reference:
    ``subscription_update_when_canceled``, 400; ``subscription_locked_pending_changes``...)
    are the subscription's state, not the command's: `invalid_state`, not `invalid_request`
    (answered `validation_error`, as if the command were malformed; review h79r_b L3)."""
    gw = gateway(paddle_url)
    made = await gw.create_subscription(_plan(customer=await _customer(gw)), idempotency_key=key())
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    async with (  # (canceled at Paddle, its dashboard: not read here yet)
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {FAKE_PADDLE_API_KEY}"}) as s,
        s.post(
            f"{paddle_url}/subscriptions/{paddle_sub}/cancel",
            json={"effective_from": "immediately"},
        ) as r,
    ):
        r.raise_for_status()
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, amount=usd(900)),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.INVALID_STATE, refused.value
    await gw.aclose()


async def _subscription_at_paddle(url: str, sub_id: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {FAKE_PADDLE_API_KEY}"}
    async with (
        aiohttp.ClientSession(headers=auth) as session,
        session.get(f"{url}/subscriptions/{sub_id}") as r,
    ):
        return dict((await r.json())["data"])


async def test_a_free_trial_charges_nothing_at_checkout_then_bills(paddle_url: str) -> None:
    """trial_days as the non-catalog price's trial_period: its checkout charges nothing,
    the subscription trialing until its trial_end, then billed and active."""
    gw = gateway(paddle_url)
    client = losing(gw, "POST", "nothing", lose=0)  # (records what is sent)
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=7), idempotency_key=key()
    )
    sid = made.provider_subscription_id
    assert made.status is SubscriptionStatus.REQUIRES_ACTION and made.next_action
    assert made.amount == usd(1200)  # (what each period bills, after the trial)
    assert made.trial_end == made.current_period_end  # (the trial it starts, paid now)
    assert made.trial_end - made.current_period_start == timedelta(days=7)
    (txn,) = [e for e in await effects(paddle_url) if e["id"] == sid]
    assert txn["amount"] == 0  # (nothing to pay at its checkout)
    (sent,) = [b for b in client.bodies if "items" in b]
    assert sent["items"][0]["price"]["trial_period"] == {
        "interval": "day",
        "frequency": 7,
    }
    await paddle_checkout(paddle_url, sid)
    trialing = await _read(gw, sid)
    assert trialing.status is SubscriptionStatus.TRIALING
    assert trialing.amount == usd(1200) and trialing.next_action is None
    assert trialing.trial_end == trialing.current_period_end
    assert trialing.trial_end - trialing.current_period_start == timedelta(days=7)
    assert [(i.status, i.amount) for i in trialing.invoices] == [(InvoiceStatus.PAID, usd(0))]
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    assert (await _subscription_at_paddle(paddle_url, paddle_sub))["next_billed_at"].startswith(
        trialing.trial_end.strftime("%Y-%m-%dT%H:%M:%S")
    )
    # Its first charge, at the trial's end: active, billed a month from the trial's end.
    await _renew(paddle_url, paddle_sub)
    active = await _read(gw, sid)
    assert active.status is SubscriptionStatus.ACTIVE and active.trial_end is None
    assert active.current_period_start == trialing.trial_end
    assert [(i.status, i.amount) for i in active.invoices] == [
        (InvoiceStatus.PAID, usd(1200)),
        (InvoiceStatus.PAID, usd(0)),
    ]
    await gw.aclose()


async def test_a_trial_whose_first_charge_is_declined_is_past_due(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=3), idempotency_key=key()
    )
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    trial_end = (await _read(gw, sid)).trial_end
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    await _renew(paddle_url, paddle_sub, "declined")
    due = await _read(gw, sid)
    assert due.status is SubscriptionStatus.PAST_DUE and due.trial_end is None
    assert due.invoices[0].status is InvoiceStatus.OPEN
    assert (due.invoices[0].failure_code, due.invoices[0].amount) == ("declined", usd(1200))
    assert due.invoices[0].period_start == trial_end
    await _renew(paddle_url, paddle_sub)  # (Paddle's retry, paid: the same period)
    paid = await _read(gw, sid)
    assert paid.status is SubscriptionStatus.ACTIVE and paid.current_period_start == trial_end
    await gw.aclose()


async def test_a_trial_canceled_at_its_end_or_now_bills_nothing(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    ending = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=5), idempotency_key=key()
    )
    sid = ending.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    scheduled = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=sid, at_period_end=True), idempotency_key=key()
    )
    assert scheduled.status is SubscriptionStatus.TRIALING and scheduled.cancel_at_period_end
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    at_paddle = await _subscription_at_paddle(paddle_url, paddle_sub)
    assert at_paddle["scheduled_change"]["effective_at"] == at_paddle["next_billed_at"]
    await _renew(paddle_url, paddle_sub)  # (the trial's end: the cancel, no charge)
    ended = await _read(gw, sid)
    assert ended.status is SubscriptionStatus.CANCELED
    assert [i.amount for i in ended.invoices] == [usd(0)]  # (nothing billed)

    now = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=5), idempotency_key=key()
    )
    await paddle_checkout(paddle_url, now.provider_subscription_id)
    gone = await gw.cancel_subscription(
        CancelSubscription(provider_subscription_id=now.provider_subscription_id),
        idempotency_key=key(),
    )
    assert gone.status is SubscriptionStatus.CANCELED and gone.canceled_at is not None
    assert [i.amount for i in gone.invoices] == [usd(0)]
    await gw.aclose()


async def test_a_trial_create_sent_again_makes_one_checkout(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    req = _plan(customer=await _customer(gw), trial_days=14)
    client = losing(gw, "POST", "transactions")
    idem = key()
    REQUEST_SENT_SINCE.set(time.time())
    with pytest.raises(GatewayError) as lost:
        await gw.create_subscription(req, idempotency_key=idem)
    assert lost.value.code is ErrorCode.TIMEOUT
    assert await gw.knows_request("create_subscription", req, idempotency_key=idem)
    again = await gw.create_subscription(req, idempotency_key=idem)
    assert again.status is SubscriptionStatus.REQUIRES_ACTION and again.trial_end is not None
    tag = request_tag(idem)
    made = [e for e in await effects(paddle_url) if e["kind"] == "transaction"]
    mine = [e for e in made if (e["custom_data"] or {}).get("paystream_request") == tag]
    assert [e["id"] for e in mine] == [again.provider_subscription_id]
    assert client.sent.count(("POST", "transactions")) == 1
    # The same key for the plan without its trial is another request: refused.
    with pytest.raises(GatewayError) as other:
        await gw.create_subscription(req.model_copy(update={"trial_days": 0}), idempotency_key=idem)
    assert other.value.code is ErrorCode.IDEMPOTENCY_ERROR
    await gw.aclose()


async def test_a_plan_without_a_trial_sends_no_trial_period(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    client = losing(gw, "POST", "nothing", lose=0)
    await gw.create_subscription(_plan(customer=await _customer(gw)), idempotency_key=key())
    (sent,) = [b for b in client.bodies if "items" in b]
    assert "trial_period" not in sent["items"][0]["price"]
    await gw.aclose()


async def test_pause_now_and_resume_with_a_new_period_charged(paddle_url: str) -> None:
    """subscription.pause: POST /pause ``effective_from: immediately`` (paused now, with
    its resume_at a scheduled resume); a renewal does not come while paused; resume:
    POST /resume ``immediately``, ``start_new_billing_period``: a new period from now,
    charged at once (an invoice paid). Each answered as it is when asked again (Paddle
    takes no key)."""
    from paystream.gateways.base import PauseSubscription, ResumeSubscription

    gw = gateway(paddle_url)
    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    sid = made.provider_subscription_id
    with pytest.raises(GatewayError) as unpaid:
        await gw.pause_subscription(
            PauseSubscription(provider_subscription_id=sid), idempotency_key=key()
        )
    assert unpaid.value.code is ErrorCode.INVALID_STATE
    await paddle_checkout(paddle_url, sid)
    sub_id = await _paddle_sub_id(paddle_url, sid)
    resumes = int(time.time()) + 40 * 86400
    pause = PauseSubscription(provider_subscription_id=sid, resumes_at=resumes)
    paused = await gw.pause_subscription(pause, idempotency_key=key())
    assert paused.status is SubscriptionStatus.PAUSED
    assert paused.pause_resumes_at is not None
    assert int(paused.pause_resumes_at.timestamp()) == resumes
    again = await gw.pause_subscription(pause, idempotency_key=key())
    assert again.status is SubscriptionStatus.PAUSED
    sent = [e for e in await effects(paddle_url) if e["kind"] == "subscription_pause"]
    sent = [e for e in sent if e["id"] == sub_id]
    assert [e["effective_from"] for e in sent] == ["immediately"]
    read = await _read(gw, sid)
    assert read.status is SubscriptionStatus.PAUSED and len(read.invoices) == 1
    with pytest.raises(aiohttp.ClientResponseError):  # (the fake renews no paused one)
        await _renew(paddle_url, sub_id)
    resume = ResumeSubscription(provider_subscription_id=sid)
    resumed = await gw.resume_subscription(resume, idempotency_key=key())
    assert resumed.status is SubscriptionStatus.ACTIVE and resumed.pause_resumes_at is None
    assert [i.status for i in resumed.invoices] == [InvoiceStatus.PAID, InvoiceStatus.PAID]
    assert resumed.invoices[0].amount == usd(1200)
    assert resumed.current_period_start > paused.current_period_start
    assert resumed.current_period_end - resumed.current_period_start >= timedelta(days=28)
    twice = await gw.resume_subscription(resume, idempotency_key=key())
    assert twice.status is SubscriptionStatus.ACTIVE and len(twice.invoices) == 2
    kept = [e for e in await effects(paddle_url) if e["kind"] == "subscription_resume"]
    kept = [e for e in kept if e["id"] == sub_id]
    assert [e["on_resume"] for e in kept] == ["start_new_billing_period"]
    await gw.aclose()


async def _paused(paddle_url: str, gw: PaddleGateway) -> tuple[str, str]:
    """A subscription paid at checkout, then paused now: (its checkout id, Paddle's id)."""
    from paystream.gateways.base import PauseSubscription

    customer = await _customer(gw)
    made = await gw.create_subscription(_plan(customer=customer), idempotency_key=key())
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    pause = PauseSubscription(provider_subscription_id=sid)
    assert (await gw.pause_subscription(pause, idempotency_key=key())).status.value == "paused"
    return sid, await _paddle_sub_id(paddle_url, sid)


async def _resumes(paddle_url: str, sub_id: str) -> int:
    sent = [e for e in await effects(paddle_url) if e["kind"] == "subscription_resume"]
    return len([e for e in sent if e["id"] == sub_id])


@pytest.mark.parametrize("between", ["nothing", "paused-again"])
async def test_a_resume_whose_answer_was_lost_is_not_sent_again(
    paddle_url: str, between: str
) -> None:
    """Paddle takes no key: a resume's POST ran, its answer lost (parked); re-driven (a
    try that may have reached Paddle before, REQUEST_TRIED_BEFORE) it is not sent again,
    whether the subscription is active (a plain redelivery) or paused again since in
    Paddle's dashboard (review h82re M4 (b): a second POST charged a second period).
    Answered as read, its one resume charge among the invoices."""
    from paystream.gateways.base import (
        REQUEST_TRIED_BEFORE,
        PauseSubscription,
        ResumeSubscription,
    )

    gw = gateway(paddle_url)
    sid, sub_id = await _paused(paddle_url, gw)
    since = time.time()
    resume = ResumeSubscription(provider_subscription_id=sid)
    lossy = losing(gw, "POST", f"subscriptions/{sub_id}/resume")
    sent_since = REQUEST_SENT_SINCE.set(since)
    try:
        with pytest.raises(GatewayError):
            await gw.resume_subscription(resume, idempotency_key=key())
        assert await _resumes(paddle_url, sub_id) == 1
        if between == "paused-again":  # (the dashboard: another pause, not this command's)
            again = PauseSubscription(provider_subscription_id=sid)
            await gw.pause_subscription(again, idempotency_key=key())
        tried = REQUEST_TRIED_BEFORE.set(True)
        try:
            read = await gw.resume_subscription(resume, idempotency_key=key())
        finally:
            REQUEST_TRIED_BEFORE.reset(tried)
    finally:
        REQUEST_SENT_SINCE.reset(sent_since)
    assert await _resumes(paddle_url, sub_id) == 1
    assert lossy.sent.count(("POST", f"subscriptions/{sub_id}/resume")) == 1
    wanted = SubscriptionStatus.ACTIVE if between == "nothing" else SubscriptionStatus.PAUSED
    assert read.status is wanted
    assert [i.status for i in read.invoices] == [InvoiceStatus.PAID, InvoiceStatus.PAID]
    await gw.aclose()


async def test_a_resume_let_through_that_never_reached_paddle_is_sent(paddle_url: str) -> None:
    """Let through, but no resume charge made since it can first have been sent (its
    first try never reached Paddle; an older resume, before that, does not count): the
    subscription, still in the pause it meant to end, is resumed, once."""
    from paystream.gateways.base import REQUEST_TRIED_BEFORE, ResumeSubscription

    gw = gateway(paddle_url)
    sid, sub_id = await _paused(paddle_url, gw)
    resume = ResumeSubscription(provider_subscription_id=sid)
    sent_since = REQUEST_SENT_SINCE.set(time.time())
    tried = REQUEST_TRIED_BEFORE.set(True)
    try:
        read = await gw.resume_subscription(resume, idempotency_key=key())
    finally:
        REQUEST_TRIED_BEFORE.reset(tried)
        REQUEST_SENT_SINCE.reset(sent_since)
    assert read.status is SubscriptionStatus.ACTIVE
    assert await _resumes(paddle_url, sub_id) == 1
    await gw.aclose()
