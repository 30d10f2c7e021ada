"""Reading Stripe webhook events, and the metadata reference that finds paystream's payment."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe

from paystream.gateways.base import (
    PAYMENT_REF_KEY,
    REFUND_REF_KEY,
    payment_ref,
    read_payment_ref,
    read_refund_ref,
    refund_ref,
)
from paystream.gateways.stripe.webhooks import (
    BadWebhook,
    DisputeNotice,
    PaymentNotice,
    RefundNotice,
    dispute_notice,
    disputed_payment_notice,
    payment_notice,
    refund_notice,
    verified_event,
)

SECRET = "whsec_test_reading"


def _signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    signature = stripe.WebhookSignature._compute_signature(f"{at}.{payload.decode()}", secret)
    return f"t={at},v1={signature}"


def _event(**fields: Any) -> dict[str, Any]:
    obj = {"id": "pi_1", "object": "payment_intent", "metadata": {PAYMENT_REF_KEY: "acme:pay_a"}}
    event = {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": obj}}
    event.update(fields)
    return event


def test_a_reference_is_added_to_the_producers_metadata() -> None:
    assert payment_ref({"order": "o-1"}, "acme", "pay_a") == {
        "order": "o-1",
        PAYMENT_REF_KEY: "acme:pay_a",
    }
    # A producer's own value under the key is replaced: it would route webhooks elsewhere.
    assert payment_ref({PAYMENT_REF_KEY: "other:pay_x"}, "acme", "pay_a") == {
        PAYMENT_REF_KEY: "acme:pay_a"
    }
    full = {f"k{i}": "v" for i in range(50)}
    # Stripe takes 50 keys: a payment already carrying them is sent as it is.
    assert payment_ref(full, "acme", "pay_a") == full
    assert (
        payment_ref({**dict(list(full.items())[:49]), PAYMENT_REF_KEY: "x:y"}, "acme", "p")[
            PAYMENT_REF_KEY
        ]
        == "acme:p"
    )


@pytest.mark.parametrize(
    ("metadata", "read"),
    [
        ({PAYMENT_REF_KEY: "acme:pay_a"}, ("acme", "pay_a")),
        ({PAYMENT_REF_KEY: "acme:pay:a"}, ("acme", "pay:a")),  # (a tenant id has no colon)
        ({PAYMENT_REF_KEY: "acme"}, None),
        ({PAYMENT_REF_KEY: ":pay_a"}, None),
        ({PAYMENT_REF_KEY: "acme:"}, None),
        ({PAYMENT_REF_KEY: 7}, None),
        ({}, None),
        (None, None),
        ("acme:pay_a", None),
    ],
)
def test_a_reference_is_read_only_when_whole(metadata: Any, read: Any) -> None:
    assert read_payment_ref(metadata) == read


def test_a_followed_payment_event_is_a_notice() -> None:
    # (Without a status this version knows: the status is None, and the payment is read.)
    assert payment_notice(_event()) == PaymentNotice(
        "evt_1", "payment_intent.succeeded", "acme", "pay_a", "pi_1", None, None
    )
    # A Connect endpoint's event names the connected account it happened on.
    notice = payment_notice(_event(account="acct_1Abc"))
    assert notice is not None and notice.account == "acct_1Abc"
    for not_an_account in ("", None, 7):
        notice = payment_notice(_event(account=not_an_account))
        assert notice is not None and notice.account is None


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [
        ("requires_capture", "authorized"),
        ("requires_action", "requires_action"),
        ("requires_payment_method", "failed"),
        ("succeeded", "succeeded"),
        ("some_new_status", None),
        (7, None),
    ],
)
def test_a_notice_names_the_status_in_paystreams_words(stripe_status: Any, ours: Any) -> None:
    event = _event()
    event["data"]["object"]["status"] = stripe_status
    notice = payment_notice(event)
    assert notice is not None and notice.status == ours


@pytest.mark.parametrize(
    "event",
    [
        _event(type="customer.created"),
        _event(type="charge.succeeded"),
        _event(id=""),
        _event(id=None),
        _event(data={"object": {"id": "ch_1", "object": "charge", "metadata": {}}}),
        _event(data={"object": {"id": "pi_1", "object": "payment_intent", "metadata": {}}}),
        _event(data={"object": {"object": "payment_intent", "metadata": {PAYMENT_REF_KEY: "a:b"}}}),
        _event(data=[]),
        _event(data={"object": "pi_1"}),
        _event(type=["payment_intent.succeeded"]),  # (unhashable: a TypeError, a 500)
        _event(type={"a": 1}),
        {},
    ],
)
def test_anything_else_is_no_notice(event: dict[str, Any]) -> None:
    assert payment_notice(event) is None


def test_an_event_is_read_only_under_a_good_signature() -> None:
    body = json.dumps(_event()).encode()
    assert verified_event(body, _signed(body), SECRET)["id"] == "evt_1"
    # (A non-ASCII header made stripe's hmac.compare_digest raise TypeError: a 500.)
    non_ascii = _signed(body).replace("v1=", "v1=\u00e9")
    for header in (None, "", "t=1", _signed(body, "whsec_other"), _signed(body, at=1), non_ascii):
        with pytest.raises(BadWebhook, match="signature not verified"):
            verified_event(body, header, SECRET)
    # One byte changed after signing.
    with pytest.raises(BadWebhook):
        verified_event(body.replace(b"evt_1", b"evt_2"), _signed(body), SECRET)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"[" * 100_000, "not JSON"),  # hostile nesting
    ],
)
def test_a_signed_body_that_is_no_event_is_refused(body: bytes, why: str) -> None:
    header = _signed(body.decode(errors="replace").encode())
    if why != "not UTF-8":
        header = _signed(body)
    with pytest.raises(BadWebhook, match=why):
        verified_event(body, header, SECRET)


def test_a_refusal_never_quotes_the_secret() -> None:
    body = b"{}"
    with pytest.raises(BadWebhook) as refused:
        verified_event(body, _signed(body, "whsec_other"), SECRET)
    assert SECRET not in str(refused.value)


def test_a_signature_dated_ahead_is_refused() -> None:
    """Stripe's check bounds a signature's age only: one dated ten years ahead was good
    for ten years of replays (Stripe review finding)."""
    body = json.dumps(_event()).encode()
    assert verified_event(body, _signed(body, at=int(time.time()) + 60), SECRET)
    with pytest.raises(BadWebhook, match="in the future"):
        verified_event(body, _signed(body, at=int(time.time()) + 10 * 365 * 86_400), SECRET)


@pytest.mark.parametrize(
    "edit",
    [
        lambda h, at: h.replace(f"t={at}", f"t=+{at}"),
        lambda h, at: h.replace(f"t={at}", f"t={at:_}"),
        lambda h, at: "x=1, t=1," + h,
    ],
)
def test_a_signature_dated_ahead_is_refused_however_its_header_is_written(edit: Any) -> None:
    """Review finding: the time was read otherwise than Stripe's SDK reads the header it
    verifies, so an edited header ("t=+...", "t=2_080_...", a " t=1" item first) passed
    the check with the signature still good."""
    body = json.dumps(_event()).encode()
    at = int(time.time()) + 10 * 365 * 86_400
    with pytest.raises(BadWebhook):
        verified_event(body, edit(_signed(body, at=at), at), SECRET)


def _refund_event(**fields: Any) -> dict[str, Any]:
    obj = {
        "id": "re_1",
        "object": "refund",
        "status": "failed",
        "metadata": {REFUND_REF_KEY: "acme:re_a"},
    }
    obj.update(fields.pop("obj", {}))
    return {"id": "evt_2", "type": "refund.failed", "data": {"object": obj}, **fields}


def test_a_refund_reference_is_written_and_read_as_a_payments() -> None:
    assert refund_ref({"order": "o-1"}, "acme", "re_a") == {
        "order": "o-1",
        REFUND_REF_KEY: "acme:re_a",
    }
    assert read_refund_ref({REFUND_REF_KEY: "acme:re_a"}) == ("acme", "re_a")
    assert read_refund_ref({PAYMENT_REF_KEY: "acme:re_a"}) is None  # (not a refund's)
    assert read_payment_ref({REFUND_REF_KEY: "acme:re_a"}) is None


@pytest.mark.parametrize("event_type", ["refund.failed", "refund.updated", "charge.refund.updated"])
def test_a_followed_refund_event_is_a_notice(event_type: str) -> None:
    notice = refund_notice(_refund_event(type=event_type, account="acct_9"))
    assert notice == RefundNotice("evt_2", event_type, "acme", "re_a", "re_1", "failed", "acct_9")


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [("succeeded", "succeeded"), ("canceled", "failed"), ("requires_action", "pending"),
     ("new_status", "pending"), (None, "pending")],
)  # fmt: skip
def test_a_refund_notice_names_the_status_in_paystreams_words(
    stripe_status: Any, ours: str
) -> None:
    notice = refund_notice(_refund_event(obj={"status": stripe_status}))
    assert notice is not None and notice.status == ours


@pytest.mark.parametrize(
    "event",
    [
        _refund_event(type="refund.created"),  # (paystream read it when it made it)
        _refund_event(obj={"metadata": {}}),  # made elsewhere, or before the reference
        _refund_event(obj={"object": "payment_intent"}),
        _refund_event(obj={"id": ""}),
        _refund_event(id=""),
        {"id": "evt_3", "type": "refund.failed", "data": []},
    ],
)
def test_anything_else_is_no_refund_notice(event: dict[str, Any]) -> None:
    assert refund_notice(event) is None
    assert payment_notice(event) is None


def _dispute_event(**fields: Any) -> dict[str, Any]:
    """A Dispute's event: no metadata of paystream's, its PaymentIntent named."""
    obj = {
        "id": "du_1",
        "object": "dispute",
        "payment_intent": "pi_1",
        "charge": "ch_1",
        "status": "needs_response",
        "evidence_details": {"due_by": 1_900_000_000},
    }
    obj.update(fields.pop("obj", {}))
    return {"id": "evt_4", "type": "charge.dispute.created", "data": {"object": obj}, **fields}


@pytest.mark.parametrize(
    "event_type",
    [
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    ],
)
def test_a_followed_dispute_event_is_a_notice_with_its_deadline(event_type: str) -> None:
    """Its status in paystream's words and its evidence deadline: a later deadline than
    the one recorded is a new response window (review h72c)."""
    notice = dispute_notice(_dispute_event(type=event_type, account="acct_9", created=7))
    assert notice == DisputeNotice(
        "evt_4", event_type, "du_1", "pi_1", "needs_response", "acct_9", 7, 1_900_000_000
    )


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [("warning_needs_response", "needs_response"), ("warning_under_review", "under_review"),
     ("appeal_needs_response", "needs_response"), ("warning_closed", "inquiry_closed"),
     ("prevented", "lost"), ("new_status", None), (None, None)],
)  # fmt: skip
def test_a_dispute_notice_names_the_status_in_paystreams_words(
    stripe_status: Any, ours: str | None
) -> None:
    notice = dispute_notice(_dispute_event(obj={"status": stripe_status}))
    assert notice is not None and notice.status == ours


@pytest.mark.parametrize(
    "details",
    [
        {"due_by": 0},  # (the cardholder's bank allows no response)
        {"due_by": None},
        {"due_by": "1900000000"},
        {"due_by": True},
        {"due_by": -1},
        {"due_by": 10**20},  # (no date: past a datetime's range)
        {"due_by": 1.9e9},
        {},
        None,
        "soon",
    ],
)
def test_a_dispute_events_deadline_is_read_defensively(details: Any) -> None:
    """Read as sent, signed but before any answer of Stripe's: anything but a plain
    date in seconds is no deadline (and the event still a notice)."""
    notice = dispute_notice(_dispute_event(obj={"evidence_details": details}))
    assert notice is not None and notice.evidence_due_by is None


@pytest.mark.parametrize(
    "event",
    [
        _dispute_event(obj={"payment_intent": None}),  # a charge made without one
        _dispute_event(obj={"payment_intent": {"id": "pi_1"}}),  # (expanded: not read)
        _dispute_event(obj={"id": "du_\ud800"}),  # (no id a command may carry)
        _dispute_event(obj={"id": ""}),
        _dispute_event(obj={"object": "charge"}),
        _dispute_event(type="charge.dispute.something_new"),
        _dispute_event(account="acct_" + "9" * 300),
    ],
)
def test_anything_else_is_no_dispute_notice(event: dict[str, Any]) -> None:
    assert dispute_notice(event) is None


def test_a_dispute_notice_names_the_payment_its_payment_intent_does() -> None:
    notice = dispute_notice(_dispute_event(obj={"status": "lost"}))
    assert notice is not None
    pi = {"id": "pi_1", "status": "succeeded", "metadata": {PAYMENT_REF_KEY: "acme:pay_a"}}
    assert disputed_payment_notice(notice, pi) == PaymentNotice(
        "evt_4", "charge.dispute.created", "acme", "pay_a", "pi_1", "succeeded", None,
        None, "du_1", "lost", 1_900_000_000,
    )  # fmt: skip
    assert disputed_payment_notice(notice, {**pi, "metadata": {}}) is None  # not paystream's
    assert disputed_payment_notice(notice, {**pi, "id": "pi_2"}) is None  # another's
