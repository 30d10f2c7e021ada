"""A Paddle notification at the webhook view (``POST /webhooks/paddle/{tenant}``): its
signature under the tenant's notification destination's secret key, its tenant, and the
refresh it brings. In process, as test_square_webhook_view.py (the view alone: its
registry, owner lookup and produce faked). tests/e2e/test_paddle_e2e.py has them end to
end."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import paystream.web.webhooks as wh
from paystream import metrics
from paystream.gateways.base import PAYMENT_REF_KEY, SUBSCRIPTION_REF_KEY
from paystream.gateways.paddle import webhooks as pw
from paystream.gateways.paddle.references import refund_reason
from paystream.log_limits import ThrottledLog
from paystream.tenancy.models import Tenant
from tests.fixtures.paddle_fake import paddle_event, paddle_signature

pytestmark = pytest.mark.asyncio

TENANT = "acme"
KEY = "pdl_ntfset_view-secret"


class _Request:
    def __init__(self, body: bytes, header: str | None) -> None:
        self.body = body
        self.content_length = len(body)
        self.headers = {} if header is None else {pw.SIGNATURE_HEADER: header}


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    state = SimpleNamespace(sent=[], row={"provider_payment_id": "txn_1",
                                          "status": "requires_action"})  # fmt: skip
    ready = asyncio.Event()
    ready.set()
    tenant = Tenant(tenant_id=TENANT, gateway="paddle",
                    secrets={"api_key": "x", "webhook_secret_key": "x"})  # fmt: skip
    monkeypatch.setattr(wh, "registry", SimpleNamespace(ready=ready, tenants={TENANT: tenant}))
    monkeypatch.setattr(
        wh, "_endpoint_secret", lambda t, p: (lambda: KEY) if t and p == t.gateway else None
    )
    monkeypatch.setattr(
        wh, "settings", SimpleNamespace(webhook_refreshes_per_second=10, webhook_base_url=None)
    )

    async def read_body(request: Any, limit: int, seconds: float) -> bytes:
        return bytes(request.body)

    async def entity_row(tenant: str, notice: Any) -> Any:
        return state.row

    async def send(tenant: str, command: Any) -> str:
        state.sent.append(command)
        return str(command[0])

    monkeypatch.setattr(wh, "read_body", read_body)
    monkeypatch.setattr(wh, "_entity_row", entity_row)
    monkeypatch.setattr(wh, "_send", send)
    monkeypatch.setattr(wh, "_refresh", lambda p, t, n: (f"whk_{n.event_id}", n))
    monkeypatch.setattr(wh, "_budget", wh._Budget())
    monkeypatch.setattr(wh, "_lookups", wh._Budget())
    monkeypatch.setattr(wh, "_throttled", ThrottledLog(wh.log))
    return state


async def _post(body: bytes, header: str | None = "sign") -> tuple[int, dict[str, Any]]:
    view = wh.WebhookView.__new__(wh.WebhookView)
    view.json = lambda body, status=200, headers=None: (status, body)  # type: ignore[method-assign]
    if header == "sign":
        header = paddle_signature(body, KEY)
    return await view.post(_Request(body, header), "paddle", TENANT)  # type: ignore[arg-type,return-value]


def _txn(status: str = "completed", ref: str = f"{TENANT}:pay_1") -> dict[str, Any]:
    return {"id": "txn_1", "status": status, "custom_data": {PAYMENT_REF_KEY: ref},
            "payments": []}  # fmt: skip


def _count(result: str) -> float:
    return metrics.WEBHOOKS.labels("paddle", TENANT, result)._value.get()


async def test_a_completed_transaction_brings_its_payments_refresh(seen: SimpleNamespace) -> None:
    status, body = await _post(paddle_event("transaction.completed", _txn(), event_id="evt_1"))
    assert (status, body["action"]) == (200, "refresh")
    (command,) = seen.sent
    assert command[0] == "whk_evt_1" and command[1].payment_id == "pay_1"
    # The same status paystream holds (requires_action): no news, nothing sent.
    status, body = await _post(paddle_event("transaction.updated", _txn("draft")))
    assert (status, body["action"]) == (200, "ignored") and len(seen.sent) == 1


async def test_an_unsigned_or_replayed_notification_is_refused(seen: SimpleNamespace) -> None:
    event = paddle_event("transaction.completed", _txn())
    before = _count("bad_signature")
    for header in (None, paddle_signature(event, "another-key"),
                   paddle_signature(event, KEY, ts=1_600_000_000)):  # fmt: skip
        status, body = await _post(event, header)
        assert (status, body["error"]) == (400, "bad_signature")
    assert _count("bad_signature") == before + 3 and not seen.sent


async def test_another_tenants_or_an_unnamed_object_is_ignored(seen: SimpleNamespace) -> None:
    for event in (
        paddle_event("transaction.completed", _txn(ref="globex:pay_9")),
        paddle_event("transaction.completed", {**_txn(), "custom_data": None}),
        paddle_event("transaction.created", _txn()),
        paddle_event(
            "adjustment.created",
            {"id": "adj_1", "action": "chargeback", "status": "approved", "reason": "fraud"},
        ),
    ):
        status, body = await _post(event)
        assert (status, body["action"]) == (200, "ignored"), body
    assert not seen.sent


async def test_an_approved_refund_brings_its_refresh(seen: SimpleNamespace) -> None:
    seen.row = {"provider_refund_id": "adj_1", "status": "pending"}
    reason = refund_reason(None, "c" * 32, "d" * 12, (TENANT, "re_1"))
    adj = {"id": "adj_1", "action": "refund", "status": "approved", "reason": reason,
           "transaction_id": "txn_1"}  # fmt: skip
    status, body = await _post(paddle_event("adjustment.updated", adj, event_id="evt_9"))
    assert (status, body["action"]) == (200, "refresh")
    (command,) = seen.sent
    assert command[1].refund_id == "re_1" and command[1].provider_refund_id == "adj_1"


async def test_a_huge_signature_timestamp_is_answered_bad_signature(seen: SimpleNamespace) -> None:
    """A ``ts`` of 400 digits (under the header's 2,048-character bound) is no float: it
    raised OverflowError, a 500 to an unauthenticated request (review h75r1 F6)."""
    huge = "ts=" + "9" * 400 + ";h1=" + "0" * 64
    status, body = await _post(paddle_event("transaction.completed", _txn()), huge)
    assert (status, body["error"]) == (400, "bad_signature")


_PERIOD_END = "2026-02-01T10:00:00.000000Z"


def _sub(**changed: Any) -> dict[str, Any]:
    """Paddle's subscription entity as a subscription event carries it (paystream named
    in its custom_data, copied from the checkout)."""
    return {
        "id": "sub_01p",
        "status": "active",
        "custom_data": {SUBSCRIPTION_REF_KEY: f"{TENANT}:sub_1", "paystream_request": "tag"},
        "current_billing_period": {
            "starts_at": "2026-01-01T10:00:00.000000Z",
            "ends_at": _PERIOD_END,
        },
        "scheduled_change": {"action": "cancel", "effective_at": _PERIOD_END, "resume_at": None},
        "items": [
            {"quantity": 1, "price": {"unit_price": {"amount": "1200", "currency_code": "USD"}}}
        ],
        **changed,
    }


def _sub_row() -> dict[str, Any]:
    return {"provider_subscription_id": "txn_ck", "status": "active",
            "cancel_at_period_end": True, "current_period_end": "2026-02-01T10:00:00+00:00",
            "amount": 1200, "payment_method_id": None}  # fmt: skip


async def test_a_paddle_subscription_event_saying_what_is_recorded_is_dropped(
    seen: SimpleNamespace,
) -> None:
    """The echo of paystream's own cancel at period end or price change (Paddle's
    ``subscription.updated``), and a subscription transaction's ``transaction.paid`` and
    ``.updated`` (its ``.completed``, ``.past_due``, ``.payment_failed`` or ``.canceled``
    follows, saying the same), bring no refresh: each was one of three Paddle calls, some
    five per renewal, against Paddle's 240 requests a minute (review h79r_b M1)."""
    seen.row = _sub_row()
    status, body = await _post(paddle_event("subscription.updated", _sub()))
    assert (status, body["action"]) == (200, "ignored"), body
    renewal = {"id": "txn_02r", "status": "paid", "origin": "subscription_recurring",
               "subscription_id": "sub_01p", "custom_data": _sub()["custom_data"]}  # fmt: skip
    for event_type in ("transaction.paid", "transaction.updated"):
        status, body = await _post(paddle_event(event_type, renewal))
        assert (status, body["action"]) == (200, "ignored"), (event_type, body)
    assert not seen.sent
    # What moved is read: a new period, the cancel removed, another price, another status,
    # a renewal's transaction completed.
    for event in (
        paddle_event("subscription.updated", _sub(current_billing_period={
            "starts_at": _PERIOD_END, "ends_at": "2026-03-01T10:00:00.000000Z"})),
        paddle_event("subscription.updated", _sub(scheduled_change=None)),
        paddle_event("subscription.updated", _sub(items=[{"quantity": 1, "price": {
            "unit_price": {"amount": "900", "currency_code": "USD"}}}])),
        paddle_event("subscription.past_due", _sub(status="past_due")),
        paddle_event("subscription.paused", _sub(status="paused")),
        paddle_event("transaction.completed", {**renewal, "status": "completed"}),
    ):  # fmt: skip
        status, body = await _post(event)
        assert (status, body["action"]) == (200, "refresh"), body
    assert len(seen.sent) == 6


async def test_a_paddle_subscription_event_of_another_tenant_or_checkout_is_ignored(
    seen: SimpleNamespace,
) -> None:
    """A subscription's own events name no checkout transaction (paystream's provider id),
    so the endpoint does not compare it: the tenant its custom_data names still must be
    this endpoint's, and a ``subscription.created`` naming another checkout (custom_data
    set at a checkout paystream did not make) is ignored."""
    seen.row = {**_sub_row(), "status": "requires_action"}
    other = {SUBSCRIPTION_REF_KEY: "globex:sub_1"}
    for event in (
        paddle_event("subscription.activated", _sub(custom_data=other)),
        paddle_event("subscription.created", _sub(transaction_id="txn_elsewhere")),
    ):
        status, body = await _post(event)
        assert (status, body["action"]) == (200, "ignored"), body
    assert not seen.sent
    status, body = await _post(paddle_event("subscription.created", _sub(transaction_id="txn_ck")))
    assert (status, body["action"]) == (200, "refresh"), body
