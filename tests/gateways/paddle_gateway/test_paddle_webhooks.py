"""Paddle's webhook events: the signature (``Paddle-Signature: ts=...;h1=...``, an
HMAC-SHA256 of ``ts:raw body`` under the notification destination's secret key, checked
within the tolerance), and what an event says of paystream's payment or refund. The
events are built as the FAKE Paddle sends them (tests/fixtures/paddle_fake.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from paystream.gateways.base import PAYMENT_REF_KEY, SUBSCRIPTION_REF_KEY
from paystream.gateways.paddle import webhooks as pw
from paystream.gateways.paddle.references import refund_reason
from paystream.gateways.webhook_notices import BadWebhook
from tests.fixtures.paddle_fake import paddle_event, paddle_signature

SECRET = "pdl_ntfset_01h-paystream-tests-secret"


def _txn(status: str = "completed", **more: Any) -> dict[str, Any]:
    return {
        "id": "txn_01h",
        "status": status,
        "custom_data": {PAYMENT_REF_KEY: "acme:pay_1"},
        "payments": [],
        **more,
    }


def test_a_signature_is_checked_over_the_timestamp_and_the_raw_body() -> None:
    body = paddle_event("transaction.completed", _txn())
    event = pw.verified_event(body, paddle_signature(body, SECRET), SECRET)
    assert event["event_type"] == "transaction.completed"
    # (paystream's own signer agrees with the fake's, which writes Paddle's algorithm out)
    ts = int(time.time())
    assert pw.signature(body, SECRET, ts) == paddle_signature(body, SECRET, ts)
    for header in (
        None,
        "",
        paddle_signature(body, "another-secret"),
        paddle_signature(body + b" ", SECRET),
        paddle_signature(body, SECRET, ts - pw.TOLERANCE_SECONDS - 5),  # (a replay)
        paddle_signature(body, SECRET, ts + pw.TOLERANCE_SECONDS + 5),
        "ts=abc;h1=00",
        "h1=00",
        "ts=1;v9=00",
        "garbage",
        "ts=" + "9" * 400 + ";h1=" + "0" * 64,  # (no float: raised OverflowError, h75r1 F6)
    ):
        with pytest.raises(BadWebhook) as refused:
            pw.verified_event(body, header, SECRET)
        assert SECRET not in str(refused.value)
    with pytest.raises(BadWebhook):
        pw.verified_event(body, paddle_signature(body, SECRET), "")


def test_a_rotated_key_is_one_of_several_h1() -> None:
    body = paddle_event("transaction.completed", _txn())
    good = paddle_signature(body, SECRET)
    old = paddle_signature(body, "the-old-secret").split(";")[1]
    assert pw.verified_event(body, f"{good};{old}", SECRET)["data"]["id"] == "txn_01h"


def test_a_transaction_event_names_paystreams_payment() -> None:
    event = json.loads(paddle_event("transaction.completed", _txn(), event_id="evt_1"))
    notice = pw.payment_notice(event)
    assert notice is not None
    assert (notice.event_id, notice.tenant_id, notice.payment_id) == ("evt_1", "acme", "pay_1")
    assert (notice.provider_payment_id, notice.status, notice.account) == (
        "txn_01h",
        "succeeded",
        None,
    )
    assert notice.created and abs(notice.created - time.time()) < 60
    # Not followed, or not paystream's: nothing.
    assert pw.payment_notice({**event, "event_type": "transaction.created"}) is None
    unnamed = json.loads(paddle_event("transaction.completed", _txn(custom_data=None)))
    assert pw.payment_notice(unnamed) is None
    declined = _txn("ready", payments=[{"status": "error", "error_code": "declined"}])
    failed = pw.payment_notice(json.loads(paddle_event("transaction.payment_failed", declined)))
    assert failed is not None and failed.status == "failed"


def test_an_adjustment_event_names_paystreams_refund() -> None:
    reason = refund_reason("duplicate", "a" * 32, "b" * 12, ("acme", "re_1"))
    adj = {"id": "adj_01h", "action": "refund", "status": "approved", "reason": reason,
           "transaction_id": "txn_01h"}  # fmt: skip
    notice = pw.refund_notice(json.loads(paddle_event("adjustment.updated", adj)), "acme")
    assert notice is not None
    assert (notice.tenant_id, notice.refund_id, notice.provider_refund_id, notice.status) == (
        "acme",
        "re_1",
        "adj_01h",
        "succeeded",
    )
    other = pw.refund_notice(json.loads(paddle_event("adjustment.updated", adj)), "globex")
    assert other is not None and other.tenant_id != "globex"  # (another tenant's tag)
    chargeback = {**adj, "action": "chargeback"}
    assert (
        pw.refund_notice(json.loads(paddle_event("adjustment.created", chargeback)), "acme") is None
    )
    plain = {**adj, "reason": refund_reason("duplicate", "a" * 32, "b" * 12, None)}
    assert pw.refund_notice(json.loads(paddle_event("adjustment.updated", plain)), "acme") is None


def test_a_subscriptions_events_name_paystreams_subscription() -> None:
    named = {SUBSCRIPTION_REF_KEY: "acme:sub_1", "paystream_request": "tag"}
    checkout = _txn(custom_data=named, origin="api", subscription_id="sub_01p")

    def notice(event_type: str, obj: dict[str, Any]) -> Any:
        event = json.loads(paddle_event(event_type, obj, event_id="evt_2"))
        return pw.payment_notice(event) or pw.subscription_notice(event)

    paid = notice("transaction.completed", checkout)
    assert paid is not None and (paid.tenant_id, paid.subscription_id) == ("acme", "sub_1")
    assert paid.provider_subscription_id == "txn_01h"  # (the checkout: paystream's name)
    # A renewal's transaction (custom_data copied from the subscription): not told.
    renewal = {**checkout, "id": "txn_02r", "origin": "subscription_recurring"}
    assert notice("transaction.past_due", renewal).provider_subscription_id == ""
    sub = {"id": "sub_01p", "status": "active", "custom_data": named}
    assert notice("subscription.updated", sub).provider_subscription_id == ""
    created = notice("subscription.created", {**sub, "transaction_id": "txn_01h"})
    assert created.provider_subscription_id == "txn_01h"
    # Not followed, not paystream's, or a payment's: no subscription notice.
    assert notice("subscription.imported", sub) is None
    assert notice("subscription.updated", {**sub, "custom_data": None}) is None
    assert pw.subscription_notice(json.loads(paddle_event("transaction.completed", _txn()))) is None
