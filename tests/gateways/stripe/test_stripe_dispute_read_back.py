"""A Stripe dispute opens days after the charge (``charge.dispute.created``): the
gateway's retrieve_payment reports it, read from ``GET /v1/disputes`` when the
PaymentIntent's latest charge says ``disputed`` (tests/gateways/test_contract.py has it
against the tests' fake of Stripe's disputes too)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from paystream.gateways.base import Capability, DisputeStatus, RetrievePayment
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.money import Money
from tests.gateways.stripe.test_stripe_transport import API_BASE, PI, gateway

pytestmark = pytest.mark.asyncio

READ = RetrievePayment(provider_payment_id="pi_123")
DISPUTED_PI = {**PI, "latest_charge": {**PI["latest_charge"], "disputed": True}}  # type: ignore[dict-item]
DU = {
    "id": "du_1",
    "object": "dispute",
    "amount": 1500,
    "currency": "usd",
    "charge": "ch_1",
    "payment_intent": "pi_123",
    "reason": "fraudulent",
    "status": "needs_response",
    "evidence_details": {"due_by": 1_900_000_000},
}


def _stripe(pi: dict[str, Any], disputes: list[dict[str, Any]]) -> Any:
    def handler(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = urlsplit(req["url"]).path
        if path == "/v1/disputes":
            return 200, {"object": "list", "data": disputes, "has_more": False}
        return 200, pi

    return handler


async def test_a_disputed_payment_reads_back_with_its_latest_charges_dispute() -> None:
    """Its latest charge's, even listed after another charge's of the PaymentIntent (an
    earlier charge's, newer: Stripe lists newest first; review h72c: the filter was not
    pinned, the latest charge's listed first)."""
    older = {**DU, "id": "du_0", "charge": "ch_0", "status": "lost"}  # (another charge's)
    gw, fake = gateway(_stripe(DISPUTED_PI, [older, {**DU}]))
    res = await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert res.dispute is not None
    assert (res.dispute.provider_dispute_id, res.dispute.status) == (
        "du_1",
        DisputeStatus.NEEDS_RESPONSE,
    )
    assert res.dispute.amount == Money(amount=1500, currency="USD")
    assert res.dispute.reason == "fraudulent" and res.dispute.evidence_due_by is not None
    read, listed = fake.requests
    assert read["method"] == "get" and listed["method"] == "get"
    url = urlsplit(listed["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{API_BASE}/v1/disputes"
    assert parse_qs(url.query) == {"payment_intent": ["pi_123"]}
    assert "Idempotency-Key" not in listed["headers"]  # (a read: no key)


async def test_every_dispute_of_the_latest_charge_is_read_back_newest_first() -> None:
    """A charge disputed again (du_2 filed after du_1): both are reported, newest first,
    ``dispute`` the newest, so the one paystream recorded is read from its own entry
    (review h72g: only the newest was, and the recorded one's decision never again)."""
    older = {**DU, "id": "du_0", "charge": "ch_0", "status": "lost"}  # (another charge's)
    newer = {**DU, "id": "du_2", "status": "warning_needs_response"}
    lost = {**DU, "status": "lost"}
    gw, _ = gateway(_stripe(DISPUTED_PI, [newer, older, lost]))
    res = await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert [(d.provider_dispute_id, d.status) for d in res.disputes] == [
        ("du_2", DisputeStatus.NEEDS_RESPONSE),
        ("du_1", DisputeStatus.LOST),
    ]
    assert res.dispute == res.disputes[0]


async def test_an_undisputed_payment_costs_no_dispute_listing() -> None:
    gw, fake = gateway(_stripe(PI, [DU]))
    res = await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert res.dispute is None and res.disputes == () and len(fake.requests) == 1


async def test_a_tenant_without_the_disputes_capability_lists_none() -> None:
    caps = [c.value for c in (Capability.PAYMENTS, Capability.REFUNDS, Capability.WEBHOOKS)]
    gw, fake = gateway(_stripe(DISPUTED_PI, [DU]), options={"capabilities": caps})
    res = await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert res.dispute is None and len(fake.requests) == 1


async def test_a_failed_listing_fails_the_read_as_any_call() -> None:
    def handler(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if urlsplit(req["url"]).path == "/v1/disputes":
            return 403, {"error": {"type": "invalid_request_error", "message": "rk_ lacks it"}}
        return 200, DISPUTED_PI

    gw, _ = gateway(handler)
    with pytest.raises(GatewayError) as info:
        await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert info.value.code is ErrorCode.PERMISSION_DENIED


async def test_an_older_dispute_in_a_status_unknown_here_leaves_the_newest_read() -> None:
    """A charge's first dispute is in a status this version does not know (one Stripe adds
    later, as it added ``prevented`` and the appeal statuses); a chargeback followed. The
    chargeback is still read, and the merchant told to answer it: only the newest must
    be understood (review h72j), the older one is left out."""
    older = {**DU, "id": "du_1", "status": "some_status_added_later"}
    newer = {**DU, "id": "du_2", "status": "needs_response"}
    gw, _ = gateway(_stripe(DISPUTED_PI, [newer, older]))
    res = await gw.retrieve_payment(READ, idempotency_key="read-1")
    assert res.dispute is not None
    assert (res.dispute.provider_dispute_id, res.dispute.status) == (
        "du_2",
        DisputeStatus.NEEDS_RESPONSE,
    )
    assert [d.provider_dispute_id for d in res.disputes] == ["du_2"]
