"""StripeGateway over a fake transport that answers with Stripe's documented bodies.

Covers what localstripe cannot (disputes, idempotency, Connect, decline codes, 5xx,
timeouts) by injecting ``StripeClient(http_client=...)``, as stripe-python's tests do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import stripe
from pydantic import SecretStr

from paystream.gateways.base import (
    AcceptDispute,
    CancelPayment,
    CapturePayment,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    DeleteCustomer,
    DisputeStatus,
    GatewayContext,
    PaymentStatus,
    RefundStatus,
    RetrieveRefund,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.stripe import StripeGateway
from paystream.money import Money
from paystream.settings import load_settings

API_BASE = "https://stripe.test.invalid"
API_KEY = "sk_test_transport_secret"

Response = tuple[int, dict[str, Any] | bytes] | tuple[int, dict[str, Any] | bytes, dict[str, str]]


class FakeStripe(stripe.HTTPClient):
    """Records requests; answers from a handler (or raises what a real client raises)."""

    name = "fake"

    def __init__(self, handler: Callable[[dict[str, Any]], Response]) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.closed = False

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        body = post_data.decode() if isinstance(post_data, bytes) else post_data or ""
        req = {"method": method, "url": url, "headers": dict(headers), "form": parse_qs(body)}
        self.requests.append(req)
        status, payload, *extra = self.handler(req)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return body, status, {"request-id": f"req_{len(self.requests)}", **(extra or [{}])[0]}

    async def close_async(self) -> None:
        self.closed = True


def gateway(
    handler: Callable[[dict[str, Any]], Response], **ctx: Any
) -> tuple[StripeGateway, FakeStripe]:
    fake = FakeStripe(handler)
    context = GatewayContext(
        tenant_id="t1",
        provider="stripe",
        credentials={"api_key": SecretStr(API_KEY)},
        **ctx,
    )
    deps = GatewayDeps(settings=load_settings(stripe_api_base=API_BASE))
    return StripeGateway.from_context(context, deps, http_client=fake), fake


def answer(status: int, payload: dict[str, Any]) -> Callable[[dict[str, Any]], Response]:
    return lambda _req: (status, payload)


PI = {
    "id": "pi_123",
    "object": "payment_intent",
    "amount": 2000,
    "currency": "usd",
    "status": "succeeded",
    "amount_received": 2000,
    "latest_charge": {"id": "ch_1", "object": "charge", "amount_refunded": 0},
    "next_action": None,
    "last_payment_error": None,
}
DISPUTE = {"id": "dp_1", "object": "dispute", "amount": 2000, "currency": "usd"}
PAY = CreatePayment(amount=Money(amount=2000, currency="USD"), provider_payment_method_id="pm_1")


def error(status: int, **err: Any) -> Callable[[dict[str, Any]], Response]:
    return answer(status, {"error": err})


async def test_missing_api_key_is_authentication_failed() -> None:
    ctx = GatewayContext(tenant_id="t9", provider="stripe")
    with pytest.raises(GatewayError) as info:
        StripeGateway.from_context(ctx, GatewayDeps(settings=load_settings()))
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED
    assert "t9" in info.value.message and not info.value.retryable


async def test_request_carries_key_account_and_base_address() -> None:
    gw, fake = gateway(answer(200, PI), connected_account="acct_42")
    res = await gw.create_payment(PAY, idempotency_key="tenant-cmd-1")
    assert res.status is PaymentStatus.SUCCEEDED and res.amount_captured == 2000
    [req] = fake.requests
    assert req["url"] == f"{API_BASE}/v1/payment_intents"
    assert req["headers"]["Idempotency-Key"] == "tenant-cmd-1"
    assert req["headers"]["Stripe-Account"] == "acct_42"
    assert req["form"]["confirm"] == ["true"] and req["form"]["capture_method"] == ["automatic"]
    assert "description" not in req["form"]  # unset fields are not sent
    await gw.aclose()
    assert fake.closed


async def test_no_sdk_retries_the_pipeline_owns_them() -> None:
    gw, fake = gateway(error(503, type="api_error", message="unavailable"))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert info.value.provider_request_id == "req_1"
    assert len(fake.requests) == 1


async def test_replayed_key_is_sent_unchanged() -> None:
    gw, fake = gateway(answer(200, PI))
    await gw.create_payment(PAY, idempotency_key="k")
    await gw.create_payment(PAY, idempotency_key="k")
    assert [r["headers"]["Idempotency-Key"] for r in fake.requests] == ["k", "k"]


@pytest.mark.parametrize(
    ("status", "err", "code", "retryable"),
    [
        (402, {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline"},
         ErrorCode.CARD_DECLINED, False),
        (402, {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"},
         ErrorCode.INSUFFICIENT_FUNDS, False),
        (402, {"type": "card_error", "code": "card_declined", "decline_code": "stolen_card"},
         ErrorCode.LOST_OR_STOLEN, False),
        (402, {"type": "card_error", "code": "card_declined", "decline_code": "fraudulent"},
         ErrorCode.FRAUDULENT, False),
        (402, {"type": "card_error", "code": "expired_card", "decline_code": "expired_card"},
         ErrorCode.EXPIRED_CARD, False),
        (402, {"type": "card_error", "code": "incorrect_cvc", "decline_code": "incorrect_cvc"},
         ErrorCode.INCORRECT_CVC, False),
        # Stripe stores a key's first answer, errors included, and replays it: a retry
        # under the same key cannot succeed (only a new request can).
        (402, {"type": "card_error", "code": "processing_error",
               "decline_code": "processing_error"},
         ErrorCode.PROCESSING_ERROR, False),
        (402, {"type": "card_error", "code": "authentication_required",
               "decline_code": "authentication_required"},
         ErrorCode.AUTHENTICATION_REQUIRED, False),
        (429, {"type": "invalid_request_error", "code": "rate_limit"},
         ErrorCode.RATE_LIMITED, True),
        (400, {"type": "idempotency_error"}, ErrorCode.IDEMPOTENCY_ERROR, False),
        (409, {"type": "invalid_request_error", "code": "idempotency_key_in_use"},
         ErrorCode.IDEMPOTENCY_ERROR, True),
        # Any 409 is a request in progress under the key (review finding: without the
        # code it was final, answered while a timed-out charge completed).
        (409, {"type": "idempotency_error"}, ErrorCode.IDEMPOTENCY_ERROR, True),
        (409, {"type": "invalid_request_error"}, ErrorCode.IDEMPOTENCY_ERROR, True),
        (401, {"type": "invalid_request_error"}, ErrorCode.AUTHENTICATION_FAILED, False),
        (403, {"type": "invalid_request_error"}, ErrorCode.PERMISSION_DENIED, False),
        (404, {"type": "invalid_request_error", "code": "resource_missing"}, ErrorCode.NOT_FOUND,
         False),
        (400, {"type": "invalid_request_error", "code": "payment_intent_unexpected_state"},
         ErrorCode.INVALID_STATE, False),
        (400, {"type": "invalid_request_error", "code": "charge_already_refunded"},
         ErrorCode.INVALID_STATE, False),
        (400, {"type": "invalid_request_error", "code": "parameter_invalid_integer"},
         ErrorCode.INVALID_REQUEST, False),
        (500, {"type": "api_error"}, ErrorCode.PROVIDER_UNAVAILABLE, True),
    ],
)  # fmt: skip
async def test_error_mapping(
    status: int, err: dict[str, Any], code: ErrorCode, retryable: bool
) -> None:
    err = {"message": "documented message", "payment_intent": {"id": "pi_9"}, **err}
    gw, _ = gateway(error(status, **err))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    e = info.value
    assert (e.code, e.retryable, e.http_status) == (code, retryable, status)
    assert e.provider_request_id == "req_1" and e.provider_payment_id == "pi_9"
    assert API_KEY not in str(e) and API_KEY not in json.dumps(e.as_outcome())
    if status == 402:
        assert e.decline_code == err["decline_code"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"id": "pi_1", "client_secret": "pi_1_secret_x", "amount'),  # cut JSON
        (200, b"<html>ok</html>"),
        (408, b"<html>request timeout (proxy)</html>"),
    ],
)
async def test_an_answer_that_is_not_a_stripe_error_is_retried_not_rejected(
    status: int, body: bytes
) -> None:
    """An unreadable 200 means Stripe ran the request; a proxy's page says nothing about
    it. Either may have charged: retry under the same key, never answer "rejected", and
    never copy the body (a client secret, a customer's email) into the outcome."""
    gw, _ = gateway(lambda _req: (status, body))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    e = info.value
    assert (e.code, e.retryable) == (ErrorCode.PROVIDER_UNAVAILABLE, True)
    assert "secret" not in json.dumps(e.as_outcome()) and "html" not in e.message


@pytest.mark.parametrize("status", [401, 404, 413])
async def test_a_proxys_page_that_a_retry_cannot_change_is_not_retried(status: int) -> None:
    """An egress proxy's 401, 404 or 413 page will answer the same to every retry: not
    retried (each failure would count toward the tenant's circuit breaker), and answered as
    the deployment's fault (gateway_not_configured, not remembered) by the handlers. A 404
    without Stripe's error object is not "not found": a delete would count as done."""
    gw, fake = gateway(lambda _req: (status, b"<html>proxy says no</html>"))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert (info.value.code, info.value.retryable) == (ErrorCode.PROVIDER_UNAVAILABLE, False)
    assert not info.value.reached_provider  # a half-open circuit is not closed by it
    assert len(fake.requests) == 1


async def test_a_held_idempotency_key_is_retried_after_a_second() -> None:
    gw, _ = gateway(error(409, type="idempotency_error", code="idempotency_key_in_use"))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert info.value.retryable and info.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("cause", "code"),
    [(TimeoutError(), ErrorCode.TIMEOUT), (ConnectionResetError(), ErrorCode.PROVIDER_UNAVAILABLE)],
)
async def test_transport_failures_are_retryable(cause: Exception, code: ErrorCode) -> None:
    def fail(_req: dict[str, Any]) -> Response:
        # What stripe.AIOHTTPClient raises for a failed request.
        raise stripe.APIConnectionError("network", should_retry=True) from cause

    gw, _ = gateway(fail)
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert info.value.code is code and info.value.retryable


async def test_a_response_cut_off_mid_body_is_retryable() -> None:
    """stripe.AIOHTTPClient reads the body outside its own error handling: the raw aiohttp
    error must still become a retryable provider failure (Stripe may have acted)."""

    def cut(_req: dict[str, Any]) -> Response:
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    gw, _ = gateway(cut)
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable


async def test_three_decimal_amounts_stripe_would_refuse_are_refused_before_the_call() -> None:
    gw, fake = gateway(answer(200, PI))
    odd = CreatePayment(amount=Money(amount=5124, currency="KWD"), provider_payment_method_id="pm")
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(odd, idempotency_key="k")
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.retryable
    assert fake.requests == []
    even = CreatePayment(amount=Money(amount=5120, currency="KWD"), provider_payment_method_id="pm")
    await gw.create_payment(even, idempotency_key="k2")
    assert fake.requests[0]["form"]["amount"] == ["5120"]


async def test_a_ugx_charge_is_refused_before_the_call() -> None:
    """Stripe takes UGX in hundredths ("to charge 5 UGX, provide an amount value of 500"),
    paystream counts whole shillings: sent as it was, 5,000 UGX charged 50 (review h67c)."""
    gw, fake = gateway(answer(200, PI))
    ugx = CreatePayment(amount=Money(amount=5_000, currency="UGX"), provider_payment_method_id="pm")
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(ugx, idempotency_key="k")
    assert info.value.code is ErrorCode.UNSUPPORTED and not info.value.retryable
    assert not info.value.reached_provider and "hundredths" in info.value.message
    assert fake.requests == []


async def test_deleting_a_customer_already_gone_is_not_found() -> None:
    """DELETE takes no idempotency key: the retry after a lost answer meets a 404. It is
    NOT_FOUND (the handler counts the customer deleted and the outcome says the provider
    no longer had it), not a made-up success."""
    missing = {"type": "invalid_request_error", "code": "resource_missing", "message": "No such"}
    gw, _ = gateway(error(404, **missing))
    with pytest.raises(GatewayError) as info:
        await gw.delete_customer(DeleteCustomer(provider_customer_id="cus_1"), idempotency_key="k")
    assert info.value.code is ErrorCode.NOT_FOUND and not info.value.retryable


async def test_requires_action_surfaces_next_action() -> None:
    body = {
        **PI,
        "status": "requires_action",
        "amount_received": 0,
        "latest_charge": None,
        "next_action": {"type": "redirect_to_url", "redirect_to_url": {"url": "https://hooks"}},
    }
    gw, _ = gateway(answer(200, body))
    res = await gw.create_payment(PAY, idempotency_key="k")
    assert res.status is PaymentStatus.REQUIRES_ACTION
    assert res.next_action == body["next_action"]


async def test_partial_capture_sends_amount_to_capture() -> None:
    gw, fake = gateway(answer(200, {**PI, "amount_received": 500}))
    res = await gw.capture_payment(
        CapturePayment(provider_payment_id="pi_123", amount=500), idempotency_key="k"
    )
    assert res.amount_captured == 500
    assert fake.requests[0]["url"].endswith("/v1/payment_intents/pi_123/capture")
    assert fake.requests[0]["form"]["amount_to_capture"] == ["500"]


async def test_refund() -> None:
    body = {"id": "re_1", "object": "refund", "amount": 700, "currency": "usd",
            "status": "succeeded", "payment_intent": "pi_123"}  # fmt: skip
    gw, fake = gateway(answer(200, body))
    res = await gw.create_refund(
        CreateRefund(provider_payment_id="pi_123", amount=700), idempotency_key="k"
    )
    assert (res.provider_refund_id, res.provider_payment_id, res.amount.amount) == (
        "re_1", "pi_123", 700,
    )  # fmt: skip
    assert fake.requests[0]["form"]["payment_intent"] == ["pi_123"]


async def test_a_refund_read_back_failed_names_stripes_reason() -> None:
    """Stripe's refund.failed: the refund read back (a GET, no key) with its
    failure_reason, e.g. the card closed since."""
    body = {"id": "re_1", "object": "refund", "amount": 700, "currency": "usd",
            "status": "failed", "failure_reason": "expired_or_canceled_card",
            "payment_intent": "pi_123"}  # fmt: skip
    gw, fake = gateway(answer(200, body))
    res = await gw.retrieve_refund(RetrieveRefund(provider_refund_id="re_1"), idempotency_key="k")
    assert (res.status, res.failure_code) == (RefundStatus.FAILED, "expired_or_canceled_card")
    [req] = fake.requests
    assert (req["method"].upper(), req["url"]) == ("GET", f"{API_BASE}/v1/refunds/re_1")
    assert "Idempotency-Key" not in req["headers"]


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [
        ("warning_needs_response", DisputeStatus.NEEDS_RESPONSE),
        ("needs_response", DisputeStatus.NEEDS_RESPONSE),
        ("under_review", DisputeStatus.UNDER_REVIEW),
        ("warning_under_review", DisputeStatus.UNDER_REVIEW),
        ("won", DisputeStatus.WON),
        ("warning_closed", DisputeStatus.INQUIRY_CLOSED),
        ("lost", DisputeStatus.LOST),
        ("charge_refunded", DisputeStatus.LOST),
        ("appeal_needs_response", DisputeStatus.NEEDS_RESPONSE),
        ("appeal_under_review", DisputeStatus.UNDER_REVIEW),
        ("prevented", DisputeStatus.LOST),  # RDR: the cardholder was refunded
    ],
)
async def test_submit_dispute_evidence(stripe_status: str, ours: DisputeStatus) -> None:
    gw, fake = gateway(answer(200, {**DISPUTE, "status": stripe_status}))
    req = SubmitDisputeEvidence(provider_dispute_id="dp_1", evidence={"uncategorized_text": "ok"})
    res = await gw.submit_dispute_evidence(req, idempotency_key="k")
    assert res.status is ours and res.amount == Money(amount=2000, currency="USD")
    [sent] = fake.requests
    assert sent["url"] == f"{API_BASE}/v1/disputes/dp_1"
    assert sent["form"]["evidence[uncategorized_text]"] == ["ok"]
    assert sent["form"]["submit"] == ["true"]


async def test_a_status_this_version_does_not_know_is_retried_not_a_crash() -> None:
    """Stripe ran the request: the answer must not be read as a refusal, nor escape as a
    ValueError (an internal error whose command stays in flight, counted against the
    breaker): a retryable provider error, so the command is retried, then parked."""
    gw, _ = gateway(answer(200, {**DISPUTE, "status": "some_new_status"}))
    req = AcceptDispute(provider_dispute_id="dp_1")
    with pytest.raises(GatewayError) as info:
        await gw.accept_dispute(req, idempotency_key="k")
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and info.value.retryable
    assert "some_new_status" in info.value.message
    gw, _ = gateway(answer(200, {**PI, "status": "requires_reauthorization"}))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert info.value.retryable and "requires_reauthorization" in info.value.message


async def test_accept_dispute_closes_it() -> None:
    gw, fake = gateway(answer(200, {**DISPUTE, "status": "lost"}))
    res = await gw.accept_dispute(AcceptDispute(provider_dispute_id="dp_1"), idempotency_key="k")
    assert res.status is DisputeStatus.LOST
    assert fake.requests[0]["url"] == f"{API_BASE}/v1/disputes/dp_1/close"
    assert fake.requests[0]["headers"]["Idempotency-Key"] == "k"


async def test_dispute_already_closed_is_invalid_state() -> None:
    gw, _ = gateway(
        error(400, type="invalid_request_error", code="charge_disputed", message="closed")
    )
    with pytest.raises(GatewayError) as info:
        await gw.accept_dispute(AcceptDispute(provider_dispute_id="dp_1"), idempotency_key="k")
    assert info.value.code is ErrorCode.INVALID_STATE


async def test_an_answer_stripe_keeps_for_the_key_is_not_retried_under_it() -> None:
    """Stripe keeps a key's first answer, a 500 included, and says so with
    Stripe-Should-Retry: false: retried under the same key it only came back (each time
    counting against the breaker), and the command parked with its state unknown all the
    same. Parked at once instead."""
    from paystream.gateways.retry import RetriesExhausted, RetryPolicy

    saved = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
    gw, fake = gateway(lambda _req: (500, saved, {"Stripe-Should-Retry": "false"}))
    policy = RetryPolicy(
        max_attempts=4, backoff_base_seconds=0.0, failure_threshold=5, reset_seconds=30.0
    )
    with pytest.raises(RetriesExhausted) as info:
        await policy.call("t1", "stripe", lambda: gw.create_payment(PAY, idempotency_key="k"))
    assert info.value.attempts == 1 and len(fake.requests) == 1
    assert info.value.last.retryable  # parked, not answered: the charge may exist
    gw, fake = gateway(lambda _req: (500, saved, {"Stripe-Should-Retry": "true"}))
    with pytest.raises(RetriesExhausted):
        await policy.call("t2", "stripe", lambda: gw.create_payment(PAY, idempotency_key="k"))
    assert len(fake.requests) == 4
    # A rate limit passes, whatever the header says: retried after its hint.
    limited = {"error": {"type": "invalid_request_error", "code": "rate_limit"}}
    gw, fake = gateway(lambda _req: (429, limited, {"Stripe-Should-Retry": "false"}))
    quick = RetryPolicy(
        max_attempts=3, backoff_base_seconds=0.0, failure_threshold=5, reset_seconds=30.0,
        sleep=lambda _s: asyncio.sleep(0),
    )  # fmt: skip
    with pytest.raises(RetriesExhausted):
        await quick.call("t3", "stripe", lambda: gw.create_payment(PAY, idempotency_key="k"))
    assert len(fake.requests) == 3


async def test_the_worker_keeps_stripe_sdk_logs_of_customer_data_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the worker's default level the SDK's per-call INFO lines, and its error line
    echoing what was sent (an e-mail address), are not written; paystream's own
    rejection says what went wrong, by code."""
    from paystream.worker import quiet_libraries

    def reply(req: dict[str, Any]) -> Response:
        email = req["form"].get("email", [""])[0]
        if email == "jane.doe@example":
            error = {
                "type": "invalid_request_error",
                "code": "email_invalid",
                "param": "email",
                "message": f"Invalid email address: {email}",
            }
            return 400, {"error": error}
        return 200, {"id": "cus_1", "object": "customer", "email": email}

    stripe_logger = logging.getLogger("stripe")
    before = stripe_logger.level
    quiet_libraries("info")
    gw, _ = gateway(reply)
    try:
        with caplog.at_level(logging.INFO):
            await gw.create_customer(CreateCustomer(email="c1@example.com"), idempotency_key="k1")
            with pytest.raises(GatewayError) as refused:
                await gw.create_customer(
                    CreateCustomer(email="jane.doe@example"), idempotency_key="k2"
                )
    finally:
        await gw.aclose()
        stripe_logger.setLevel(before)
    assert refused.value.code.value == "invalid_request"
    assert not [r for r in caplog.records if r.name.startswith("stripe")], caplog.text
    assert "jane.doe" not in caplog.text
    assert logging.getLogger("aiokafka").level == logging.INFO


async def test_stripe_log_cannot_print_request_bodies_past_the_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """STRIPE_LOG=debug makes the SDK print each request's and response's body to
    stderr, logging levels or not: the worker turns it off (and says so)."""
    import stripe
    import stripe._util as stripe_util

    from paystream.worker import quiet_libraries

    monkeypatch.setattr(stripe_util, "STRIPE_LOG", "debug")  # as read from the environment
    monkeypatch.setattr(stripe, "log", None)
    stripe_logger = logging.getLogger("stripe")
    before = stripe_logger.level
    try:
        quiet_libraries("info")
        gw, _ = gateway(lambda req: (200, {"id": "cus_1", "object": "customer"}))
        try:
            await gw.create_customer(
                CreateCustomer(email="jane.doe@example.com", name="Jane Doe"),
                idempotency_key="k1",
            )
        finally:
            await gw.aclose()
    finally:
        stripe_logger.setLevel(before)
    err = capsys.readouterr().err
    assert "jane.doe" not in err and "Jane" not in err, err


# A PaymentIntent for 30.00 authorised, then captured for 10.00: Stripe releases the
# other 20.00, and the charge counts it in amount_refunded (as localstripe does).
PARTIALLY_CAPTURED = {
    **PI,
    "amount": 3000,
    "amount_received": 1000,
    "latest_charge": {"id": "ch_1", "object": "charge", "amount": 3000, "captured": True,
                      "amount_captured": 1000, "amount_refunded": 2000, "refunded": False},
}  # fmt: skip
# Canceled while it awaited capture: "the remaining amount_capturable will automatically
# be refunded" (Stripe API reference, cancel a PaymentIntent).
CANCELED_HOLD = {
    **PI,
    "status": "canceled",
    "amount": 3000,
    "amount_received": 0,
    "latest_charge": {"id": "ch_1", "object": "charge", "amount": 3000, "captured": False,
                      "amount_captured": 0, "amount_refunded": 3000, "refunded": True},
}  # fmt: skip


async def test_the_rest_of_a_partial_capture_is_no_refund() -> None:
    """Counted as refunded, it left the captured 10.00 nothing to refund (review finding)."""
    gw, _ = gateway(answer(200, PARTIALLY_CAPTURED))
    res = await gw.capture_payment(
        CapturePayment(provider_payment_id="pi_123", amount=1000), idempotency_key="k"
    )
    assert (res.amount_captured, res.amount_refunded) == (1000, 0)
    # A real refund of 5.00 later: the charge reports 25.00 refunded, 5.00 of it money back.
    later = {**PARTIALLY_CAPTURED["latest_charge"], "amount_refunded": 2500}  # type: ignore[dict-item]
    gw, _ = gateway(answer(200, {**PARTIALLY_CAPTURED, "latest_charge": later}))
    res = await gw.capture_payment(
        CapturePayment(provider_payment_id="pi_123", amount=1000), idempotency_key="k"
    )
    assert (res.amount_captured, res.amount_refunded) == (1000, 500)


async def test_a_canceled_hold_refunded_nothing() -> None:
    gw, _ = gateway(answer(200, CANCELED_HOLD))
    res = await gw.cancel_payment(CancelPayment(provider_payment_id="pi_123"), idempotency_key="k")
    assert res.status is PaymentStatus.CANCELED
    assert (res.amount_captured, res.amount_refunded) == (0, 0)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Invalid API Key provided: sk_live_********************1234"),
        (403, "The provided key 'rk_live_********1234' does not have access to account 'x'."),
    ],
)
async def test_a_refused_key_is_not_quoted(status: int, message: str) -> None:
    """Stripe's message quotes the key's mode and last characters, which the rejection
    (an outcome, kept by the ledger) repeated (Stripe review finding)."""
    gw, _ = gateway(error(status, type="invalid_request_error", message=message))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert "1234" not in info.value.message and "_live_" not in info.value.message
    assert "API key" in info.value.message
