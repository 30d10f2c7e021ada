"""Square webhook events (paystream/gateways/square/webhooks.py): the signature over the
notification URL and body, the event's age, and what each followed event says of the
tenant's payment, refund or dispute. The signatures are made as Square documents them
(tests/fixtures/square_fake.py: square_signature), not with paystream's helper."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from paystream.gateways.square import webhooks as sq
from paystream.gateways.webhook_notices import BadWebhook
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, square_event, square_signature

KEY = "sq-signature-key-under-test"
URL = "https://pay.example.com/webhooks/square/acme"
TENANT = "acme"


def _iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payment(status: str = "CANCELED", ref: str | None = None, **more: Any) -> dict[str, Any]:
    reference = ref if ref is not None else sq.payment_reference(TENANT, "pay_1")
    return {"id": "sqpay1", "status": status, "location_id": FAKE_SQUARE_LOCATION,
            "reference_id": reference, "amount_money": {"amount": 100, "currency": "USD"},
            **more}  # fmt: skip


def _verify(body: bytes, header: str | None, url: str = URL, key: str = KEY) -> dict[str, Any]:
    return sq.verified_event(body, header, key, url)


# ---- the signature --------------------------------------------------------------------


def test_a_notification_signed_as_square_documents_is_verified() -> None:
    body = square_event("payment.updated", _payment())
    event = _verify(body, square_signature(URL, body, KEY))
    assert event["type"] == "payment.updated"
    # paystream's own signer (the one the docs' example would use) agrees with Square's
    assert sq.signature(URL, body, KEY) == square_signature(URL, body, KEY)


def test_another_key_is_refused() -> None:
    body = square_event("payment.updated", _payment())
    with pytest.raises(BadWebhook, match="signature not verified"):
        _verify(body, square_signature(URL, body, "another key"))


def test_a_signature_over_another_notification_url_is_refused() -> None:
    """Behind a proxy the worker sees another URL than Square signed: a URL configured
    wrong fails every event, never passes one unsigned."""
    body = square_event("payment.updated", _payment())
    signed_for_worker = square_signature("http://10.0.0.5:6066/webhooks/square/acme", body, KEY)
    with pytest.raises(BadWebhook, match="notification URL"):
        _verify(body, signed_for_worker)
    with pytest.raises(BadWebhook):
        _verify(body, square_signature(URL + "/", body, KEY))  # (byte for byte)


def test_a_signed_body_modified_is_refused() -> None:
    body = square_event("payment.updated", _payment(status="APPROVED"))
    header = square_signature(URL, body, KEY)
    edited = body.replace(b'"APPROVED"', b'"CANCELED"')
    assert edited != body
    with pytest.raises(BadWebhook):
        _verify(edited, header)
    with pytest.raises(BadWebhook):
        _verify(body + b" ", header)  # (the raw body: not re-serialised JSON)


def test_a_missing_or_empty_header_is_refused() -> None:
    body = square_event("payment.updated", _payment())
    for header in (None, ""):
        with pytest.raises(BadWebhook, match="no x-square-hmacsha256-signature"):
            _verify(body, header)


def test_odd_headers_and_bodies_are_refused_not_raised() -> None:
    body = square_event("payment.updated", _payment())
    with pytest.raises(BadWebhook):
        _verify(body, "é" * 44)
    with pytest.raises(BadWebhook, match="UTF-8"):
        _verify(b"\xff" + body, square_signature(URL, body, KEY))
    with pytest.raises(BadWebhook):
        _verify(body, square_signature(URL, body, KEY), key="")


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b'"x"'])
def test_a_signed_body_that_is_no_event_is_refused(payload: bytes) -> None:
    with pytest.raises(BadWebhook):
        _verify(payload, square_signature(URL, payload, KEY))


def test_an_old_or_future_or_undated_event_is_refused_though_signed() -> None:
    """No timestamp is signed: the event's own created_at bounds a replay to Square's
    72 hours of retries."""
    for created in (_iso(-timedelta(hours=74)), _iso(timedelta(hours=1)), "yesterday"):
        body = square_event("payment.updated", _payment(), created_at=created)
        with pytest.raises(BadWebhook):
            _verify(body, square_signature(URL, body, KEY))
    retried = square_event("payment.updated", _payment(), created_at=_iso(-timedelta(hours=71)))
    assert _verify(retried, square_signature(URL, retried, KEY))


# ---- what the events say ---------------------------------------------------------------


def _event(event_type: str, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return dict(json.loads(square_event(event_type, obj, **kw)))


def test_a_payment_updated_names_the_tenants_payment_by_its_reference() -> None:
    event = _event("payment.updated", _payment("CANCELED"), event_id="e1")
    notice = sq.payment_notice(event, TENANT)
    assert notice is not None
    assert (notice.event_id, notice.tenant_id, notice.payment_id) == ("e1", TENANT, "pay_1")
    assert (notice.provider_payment_id, notice.status) == ("sqpay1", "canceled")
    assert notice.account == FAKE_SQUARE_LOCATION and notice.created is not None


def test_another_tenants_payment_is_told_apart_and_a_foreign_reference_is_not_ours() -> None:
    other = _event("payment.updated", _payment(ref=sq.payment_reference("globex", "pay_1")))
    notice = sq.payment_notice(other, TENANT)
    assert notice is not None and notice.tenant_id != TENANT  # ignored as another tenant's
    for foreign in ("ORDER-1234", "", "abc:def", "zzzzzzzz:pay_1"):
        assert sq.payment_notice(_event("payment.updated", _payment(ref=foreign)), TENANT) is None
    assert sq.payment_notice(_event("payment.updated", {**_payment(), "reference_id": None}),
                             TENANT) is None  # fmt: skip


def test_another_locations_payment_names_its_location() -> None:
    event = _event("payment.updated", _payment(location_id="LOTHER"))
    notice = sq.payment_notice(event, TENANT)
    assert notice is not None and notice.account == "LOTHER"
    unnamed = _event("payment.updated", {**_payment(), "location_id": None}, location_id=None)
    notice = sq.payment_notice(unnamed, TENANT)
    assert notice is not None and notice.account == ""  # (no tenant's)


def test_events_not_followed_are_not_notices() -> None:
    for kind in ("payment.created", "customer.created", "refund.created"):
        assert sq.payment_notice(_event(kind, _payment()), TENANT) is None
        assert sq.refund_notice(_event(kind, _payment()), TENANT) is None
    broken = _event("payment.updated", _payment())
    broken["data"]["object"] = {"refund": _payment()}
    assert sq.payment_notice(broken, TENANT) is None


def test_a_payment_reference_fits_squares_40_characters() -> None:
    ref = sq.payment_reference(
        "a-tenant-with-a-long-id-of-sixty-three-characters-" + "x" * 12, "pay_" + "a" * 24
    )
    assert ref is not None and len(ref) <= 40
    # A 4-digit tag without a separator: a producer's UUID as its payment id fits (h73i).
    assert sq.payment_reference(TENANT, str(uuid.uuid4())) is not None
    assert sq.payment_reference(TENANT, "p" * 37) is None  # (too long: not named)


def test_a_refund_updated_names_the_tenants_refund_by_its_reason() -> None:
    reason = sq.refund_reason("requested_by_customer", TENANT, "re_1")
    assert reason.startswith("requested_by_customer ") and len(reason) <= 192
    refund = {"id": "sqpay1_r1", "status": "FAILED", "payment_id": "sqpay1",
              "location_id": FAKE_SQUARE_LOCATION, "reason": reason}  # fmt: skip
    notice = sq.refund_notice(_event("refund.updated", refund), TENANT)
    assert notice is not None
    assert (notice.tenant_id, notice.refund_id, notice.provider_refund_id, notice.status) == (
        TENANT, "re_1", "sqpay1_r1", "failed",
    )  # fmt: skip
    assert sq.refund_reason(None, TENANT, "re_2").startswith("[ps:")
    bare = {**refund, "reason": "requested_by_customer"}
    assert sq.refund_notice(_event("refund.updated", bare), TENANT) is None
    other = {**refund, "reason": sq.refund_reason(None, "globex", "re_1")}
    found = sq.refund_notice(_event("refund.updated", other), TENANT)
    assert found is not None and found.tenant_id != TENANT


def _dispute(state: str = "EVIDENCE_REQUIRED", **more: Any) -> dict[str, Any]:
    return {"id": "dsp1", "state": state, "disputed_payment": {"payment_id": "sqpay1"},
            "due_at": "2030-01-02T00:00:00.000Z", "location_id": FAKE_SQUARE_LOCATION,
            "reason": "NO_KNOWLEDGE", **more}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(sq.FOLLOWED_DISPUTE_EVENTS))
def test_a_dispute_event_names_the_disputed_payment(kind: str) -> None:
    notice = sq.dispute_notice(_event(kind, _dispute()))
    assert notice is not None
    assert (notice.provider_dispute_id, notice.provider_payment_id) == ("dsp1", "sqpay1")
    assert (notice.status, notice.account) == ("needs_response", FAKE_SQUARE_LOCATION)
    assert notice.evidence_due_by == int(datetime(2030, 1, 2, tzinfo=UTC).timestamp())
    won = sq.dispute_notice(_event(kind, _dispute("WON")))
    assert won is not None and (won.status, won.evidence_due_by) == ("won", None)


def test_an_older_dispute_shape_and_one_naming_no_payment() -> None:
    older = {**_dispute(), "dispute_id": "dsp1"}
    del older["id"]
    notice = sq.dispute_notice(_event("dispute.state.updated", older))
    assert notice is not None and notice.provider_dispute_id == "dsp1"
    assert (
        sq.dispute_notice(_event("dispute.created", {**_dispute(), "disputed_payment": {}})) is None
    )


def test_the_disputed_payment_names_paystreams_payment_by_its_reference() -> None:
    notice = sq.dispute_notice(_event("dispute.created", _dispute()))
    assert notice is not None
    paid = _payment("COMPLETED")
    found = sq.disputed_payment_notice(notice, paid, TENANT)
    assert found is not None
    assert (found.tenant_id, found.payment_id, found.status) == (TENANT, "pay_1", "succeeded")
    assert (found.provider_dispute_id, found.dispute_status) == ("dsp1", "needs_response")
    assert sq.disputed_payment_notice(notice, {**paid, "reference_id": None}, TENANT) is None
    assert sq.disputed_payment_notice(notice, {**paid, "id": "another"}, TENANT) is None
    other = sq.disputed_payment_notice(
        notice, {**paid, "reference_id": sq.payment_reference("globex", "pay_1")}, TENANT
    )
    assert other is not None and other.tenant_id != TENANT


# ---- the gateway: WEBHOOKS with a signature key, references sent --------------------


def _square_gateway(url: str, *, webhooks: bool, **options: object) -> Any:
    from pydantic import SecretStr

    from paystream.gateways.base import GatewayContext
    from paystream.gateways.registry import GatewayDeps, build_gateway
    from paystream.settings import load_settings
    from tests.fixtures.square_fake import FAKE_SQUARE_TOKEN

    credentials = {"access_token": SecretStr(FAKE_SQUARE_TOKEN)}
    if webhooks:
        credentials["webhook_signature_key"] = SecretStr(KEY)
    ctx = GatewayContext(
        tenant_id=TENANT,
        provider="square",
        credentials=credentials,
        options={"location_id": FAKE_SQUARE_LOCATION, **options},
    )
    return build_gateway(ctx, GatewayDeps(settings=load_settings(square_api_base=url)))


async def test_webhooks_is_a_capability_only_with_a_signature_key(square_url: str) -> None:
    from paystream.gateways.base import Capability

    with_key = _square_gateway(square_url, webhooks=True)
    without = _square_gateway(square_url, webhooks=False)
    narrowed = _square_gateway(square_url, webhooks=True, capabilities=["payments"])
    try:
        assert Capability.WEBHOOKS in with_key.capabilities
        assert Capability.WEBHOOKS not in without.capabilities
        assert narrowed.capabilities == {Capability.PAYMENTS}
    finally:
        for gw in (with_key, without, narrowed):
            await gw.aclose()


async def test_payments_and_refunds_carry_paystreams_reference_at_square(square_url: str) -> None:
    import uuid

    from paystream.gateways.base import (
        CreatePayment,
        CreateRefund,
        payment_ref,
        refund_ref,
    )
    from paystream.money import Money

    gw = _square_gateway(square_url, webhooks=True)
    try:
        req = CreatePayment(
            amount=Money(amount=500, currency="USD"),
            provider_payment_method_id="cnon:card-nonce-ok",
            metadata=payment_ref({}, TENANT, "pay_1"),
        )
        paid = await gw.create_payment(req, idempotency_key=uuid.uuid4().hex)
        at_square = await gw.read_payment(paid.provider_payment_id)
        assert at_square["reference_id"] == sq.payment_reference(TENANT, "pay_1")
        refund = CreateRefund(
            provider_payment_id=paid.provider_payment_id,
            amount=100,
            reason="duplicate",
            metadata=refund_ref({}, TENANT, "re_1"),
        )
        done = await gw.create_refund(refund, idempotency_key=uuid.uuid4().hex)
        got = await gw._sq.refunds.get(done.provider_refund_id)
        assert got.refund.reason == sq.refund_reason("duplicate", TENANT, "re_1")
        # Without the reference (no WEBHOOKS: the handler adds none), none is sent.
        plain = await gw.create_payment(
            req.model_copy(update={"metadata": {}}), idempotency_key=uuid.uuid4().hex
        )
        assert "reference_id" not in await gw.read_payment(plain.provider_payment_id)
    finally:
        await gw.aclose()


@pytest.mark.parametrize(
    "url",
    ["http://pay.example.com/h", "https://user:pw@pay.example.com/h", "https://x/h#f",
     "ftp://pay.example.com", "https://pay.example.com/a b", 7],
)  # fmt: skip
def test_a_webhook_url_option_square_cannot_post_to_is_refused(url: object) -> None:
    from paystream.errors import ConfigurationError
    from paystream.gateways.registry import validate_options

    with pytest.raises(ConfigurationError, match="webhook_url"):
        validate_options("square", {"location_id": FAKE_SQUARE_LOCATION, "webhook_url": url})
    validate_options("square", {"location_id": FAKE_SQUARE_LOCATION, "webhook_url": URL})
    validate_options(
        "square",
        {"location_id": FAKE_SQUARE_LOCATION, "webhook_url": "http://127.0.0.1:8/x?t=1"},
    )


@pytest.mark.parametrize(
    "base", ["http://pay.example.com", "https://pay.example.com/?x=1", "https://u:p@x.com"]
)
def test_a_webhook_base_url_setting_square_cannot_post_to_is_refused(base: str) -> None:
    from pydantic import ValidationError

    from paystream.settings import Settings

    with pytest.raises(ValidationError, match="PAYSTREAM_WEBHOOK_BASE_URL"):
        Settings(webhook_base_url=base)
    assert Settings(webhook_base_url="https://pay.example.com/in/").webhook_base_url == (
        "https://pay.example.com/in"
    )


def test_the_signature_key_is_a_known_square_secret() -> None:
    from paystream.gateways.registry import KNOWN_SECRETS, REQUIRED_SECRETS

    assert "webhook_signature_key" in KNOWN_SECRETS["square"]
    assert "webhook_signature_key" not in REQUIRED_SECRETS["square"]


def test_tenants_add_warns_of_a_signature_key_beside_capabilities_without_webhooks() -> None:
    from paystream.cli.tenants import _webhooks_left_out

    key = {"access_token", "webhook_signature_key"}
    assert _webhooks_left_out("square", {"capabilities": ["payments"]}, key)
    assert not _webhooks_left_out("square", {"capabilities": ["payments", "webhooks"]}, key)
    assert not _webhooks_left_out("square", {}, key)
    assert not _webhooks_left_out("square", {"capabilities": ["payments"]}, {"access_token"})
