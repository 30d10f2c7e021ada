"""A Square notification at the webhook view (``POST /webhooks/square/{tenant}``): its
signature over the tenant's configured notification URL, its tenant and location, and
the refresh it brings. In process, as test_webhook_lookups.py (the view alone: its
registry, owner lookup and produce faked; the disputed payment's read from Square faked
through GatewayPool). tests/e2e/test_square_webhooks.py has them end to end."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

import paystream.web.webhooks as wh
from paystream import metrics
from paystream.gateways.square import webhooks as sq
from paystream.log_limits import ThrottledLog
from paystream.tenancy.models import Tenant
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, square_event, square_signature

pytestmark = pytest.mark.asyncio

TENANT = "acme"
KEY = "sq-view-signature-key"
PUBLIC = "https://pay.example.com/webhooks/square/acme"
_REAL_ENDPOINT_SECRET = wh._endpoint_secret


class _Request:
    def __init__(self, body: bytes, header: str | None, length: int | None = None) -> None:
        self.body = body
        self.content_length = len(body) if length is None else length
        self.headers = {} if header is None else {sq.SIGNATURE_HEADER: header}


def _tenant(**options: Any) -> Tenant:
    opts = {"location_id": FAKE_SQUARE_LOCATION, "webhook_url": PUBLIC, **options}
    opts = {k: v for k, v in opts.items() if v is not None}
    return Tenant(tenant_id=TENANT, gateway="square", gateway_options=opts,
                  secrets={"access_token": "x", "webhook_signature_key": "x"})  # fmt: skip


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    state = SimpleNamespace(sent=[], row={"provider_payment_id": "sqpay1", "status": "authorized"},
                            payment=None, reads=0)  # fmt: skip
    ready = asyncio.Event()
    ready.set()
    monkeypatch.setattr(wh, "registry", SimpleNamespace(ready=ready, tenants={TENANT: _tenant()}))
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

    class Square:
        async def read_payment(self, provider_payment_id: str) -> dict[str, Any]:
            state.reads += 1
            return dict(state.payment or {}, id=provider_payment_id)

    class Pool:
        def __init__(self, deps: Any, open_secret: Any = None) -> None:
            pass

        def get(self, tenant: Tenant) -> Square:
            return Square()

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(wh, "read_body", read_body)
    monkeypatch.setattr(wh, "_entity_row", entity_row)
    monkeypatch.setattr(wh, "_send", send)
    monkeypatch.setattr(wh, "_refresh", lambda p, t, n: (f"whk_{n.event_id}", n))
    monkeypatch.setattr(wh, "_budget", wh._Budget())
    monkeypatch.setattr(wh, "_lookups", wh._Budget())
    monkeypatch.setattr(wh, "_dispute_read_pace", wh._Budget())
    monkeypatch.setattr(wh, "_throttled", ThrottledLog(wh.log))
    monkeypatch.setattr(wh, "GatewayPool", Pool)
    monkeypatch.setattr(wh, "GatewayDeps", lambda settings: None)
    monkeypatch.setattr(wh, "_opener", lambda: None)
    return state


async def _post(
    body: bytes, header: str | None = "sign", length: int | None = None
) -> tuple[int, dict[str, Any]]:
    view = wh.WebhookView.__new__(wh.WebhookView)
    view.json = lambda body, status=200, headers=None: (status, body)  # type: ignore[method-assign]
    if header == "sign":
        header = square_signature(PUBLIC, body, KEY)
    request = _Request(body, header, length)
    return await view.post(request, "square", TENANT)  # type: ignore[arg-type,return-value]


def _payment(status: str = "CANCELED", **more: Any) -> dict[str, Any]:
    return {"id": "sqpay1", "status": status, "location_id": FAKE_SQUARE_LOCATION,
            "reference_id": sq.payment_reference(TENANT, "pay_1"), **more}  # fmt: skip


def _count(result: str) -> float:
    return metrics.WEBHOOKS.labels("square", TENANT, result)._value.get()


async def test_a_signed_payment_update_brings_the_payments_refresh(seen: SimpleNamespace) -> None:
    status, body = await _post(square_event("payment.updated", _payment(), event_id="ev1"))
    assert (status, body.get("action"), body.get("command_id")) == (200, "refresh", "whk_ev1")
    [(_, notice)] = seen.sent
    assert (notice.payment_id, notice.status) == ("pay_1", "canceled")


async def test_a_wrong_or_missing_signature_is_refused_and_counted(
    seen: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    before = _count("bad_signature")
    event = square_event("payment.updated", _payment())
    worker_url = "http://127.0.0.1:6066/webhooks/square/acme"  # (what the worker sees)
    for header in (None, square_signature(worker_url, event, KEY), "AAAA"):
        status, body = await _post(event, header)
        assert (status, body["error"]) == (400, "bad_signature"), body
    assert _count("bad_signature") == before + 3
    assert seen.sent == []
    # The operator is told which URL it was checked over (a wrong one looks like forgery).
    assert any(PUBLIC in r.getMessage() for r in caplog.records)


async def test_the_signature_is_over_the_base_url_setting_without_the_option(
    seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: _tenant(webhook_url=None)})
    event = square_event("payment.updated", _payment())
    status, body = await _post(event)
    # Neither configured: nothing to check over, never taken unsigned; Square retries.
    assert (status, body["error"]) == (503, "unavailable"), body
    monkeypatch.setattr(
        wh,
        "settings",
        SimpleNamespace(
            webhook_refreshes_per_second=10, webhook_base_url="https://pay.example.com"
        ),
    )
    status, body = await _post(event)
    assert (status, body.get("action")) == (200, "refresh"), body


async def test_an_oversized_body_is_refused_before_it_is_read(seen: SimpleNamespace) -> None:
    event = square_event("payment.updated", _payment())
    status, body = await _post(event, length=wh.MAX_BODY_BYTES + 1)
    assert (status, body["error"]) == (413, "payload_too_large")


async def test_a_tenant_without_a_signature_key_has_no_endpoint(
    seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyless = Tenant(tenant_id=TENANT, gateway="square", secrets={"access_token": "x"},
                     gateway_options={"location_id": FAKE_SQUARE_LOCATION})  # fmt: skip
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: keyless})
    monkeypatch.setattr(wh, "_endpoint_secret", _REAL_ENDPOINT_SECRET)
    monkeypatch.setattr(wh, "_opener", lambda: lambda tenant, name: SecretStr(KEY))
    # (the Square tenant's key is its webhook_signature_key: a Stripe name opens nothing)
    assert _REAL_ENDPOINT_SECRET(_tenant(), "square") is not None
    stripe_named = Tenant(tenant_id=TENANT, gateway="square", secrets={"webhook_secret": "x"})
    assert _REAL_ENDPOINT_SECRET(stripe_named, "square") is None
    status, _ = await _post(square_event("payment.updated", _payment()))
    assert status == 404


async def test_another_locations_and_another_tenants_events_are_ignored(
    seen: SimpleNamespace,
) -> None:
    other_location = square_event("payment.updated", _payment(location_id="LOTHER"))
    status, body = await _post(other_location)
    assert (status, body.get("why")) == (200, "another location's payment"), body
    other_tenant = _payment(reference_id=sq.payment_reference("globex", "pay_1"))
    status, body = await _post(square_event("payment.updated", other_tenant))
    assert (status, body.get("why")) == (200, "another tenant's payment"), body
    not_ours = square_event("payment.updated", _payment(reference_id="ORDER-77"))
    status, body = await _post(not_ours)
    assert body.get("action") == "ignored", body
    dispute = {"id": "dsp1", "state": "EVIDENCE_REQUIRED", "location_id": "LOTHER",
               "disputed_payment": {"payment_id": "sqpay1"}}  # fmt: skip
    status, body = await _post(square_event("dispute.created", dispute, location_id="LOTHER"))
    assert (status, body.get("why")) == (200, "another location's dispute"), body
    assert seen.sent == [] and seen.reads == 0  # (no read of another location's payment)


async def test_a_dispute_is_read_through_its_payment_and_refreshed(seen: SimpleNamespace) -> None:
    seen.row = {"provider_payment_id": "sqpay1", "status": "succeeded", "dispute_id": None}
    seen.payment = _payment("COMPLETED")
    dispute = {"id": "dsp1", "state": "EVIDENCE_REQUIRED", "location_id": FAKE_SQUARE_LOCATION,
               "disputed_payment": {"payment_id": "sqpay1"},
               "due_at": "2030-01-02T00:00:00Z"}  # fmt: skip
    status, body = await _post(square_event("dispute.created", dispute, event_id="evd"))
    assert (status, body.get("action")) == (200, "refresh"), body
    [(_, notice)] = seen.sent
    assert (notice.payment_id, notice.provider_dispute_id, notice.dispute_status) == (
        "pay_1", "dsp1", "needs_response",
    )  # fmt: skip
    # A dispute of a payment paystream did not name: nothing refreshed.
    seen.payment = _payment("COMPLETED", reference_id=None)
    status, body = await _post(square_event("dispute.created", dispute))
    assert body.get("action") == "ignored", body
    assert seen.reads == 2


async def test_a_refund_update_brings_the_refunds_refresh(seen: SimpleNamespace) -> None:
    seen.row = {"provider_refund_id": "sqpay1_r1", "status": "pending"}
    refund = {"id": "sqpay1_r1", "status": "COMPLETED", "payment_id": "sqpay1",
              "location_id": FAKE_SQUARE_LOCATION,
              "reason": sq.refund_reason(None, TENANT, "re_1")}  # fmt: skip
    status, body = await _post(square_event("refund.updated", refund))
    assert (status, body.get("action")) == (200, "refresh"), body
    [(_, notice)] = seen.sent
    assert (notice.refund_id, notice.status) == ("re_1", "succeeded")


async def test_a_body_signed_then_replayed_modified_is_refused(seen: SimpleNamespace) -> None:
    event = square_event("payment.updated", _payment("APPROVED"))
    header = square_signature(PUBLIC, event, KEY)
    edited = json.dumps({**json.loads(event), "event_id": "another"}).encode()
    status, body = await _post(edited, header)
    assert (status, body["error"]) == (400, "bad_signature")
