"""Round two of the Square gateway (h73g), against the FAKE Square now made faithful
where it hid bugs: another location's disputes and refunds (two tenants on one Square
seller), evidence sent again after it was submitted, an unknown refund status, "refund
the rest" without the disputes, card brands named as the other gateways name them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from paystream.gateways.base import (
    AcceptDispute,
    CreateRefund,
    DisputeStatus,
    RefundStatus,
    RetrievePayment,
    RetrieveRefund,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.square import mapping
from paystream.gateways.square.gateway import SquareGateway
from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_LOCATION_2,
)
from tests.gateways.harness import open_square_dispute
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, paid, usd, wired

__all__ = ["wired"]


@pytest.fixture
async def shops(square_url: str) -> AsyncIterator[tuple[SquareGateway, SquareGateway]]:
    """Two tenants on one Square seller (the same token), one location each."""
    a, b = gateway_at(square_url), gateway_at(square_url, FAKE_SQUARE_LOCATION_2)
    yield a, b
    await a.aclose()
    await b.aclose()


async def _not_found(coro: object) -> None:
    with pytest.raises(GatewayError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code is ErrorCode.NOT_FOUND, info.value


# ---- another location's disputes and refunds --------------------------------------------


async def test_another_locations_dispute_is_not_found_and_not_answered(
    shops: tuple[SquareGateway, SquareGateway], square_url: str
) -> None:
    a, b = shops
    pid = await paid(a)
    did = await open_square_dispute(square_url, pid)
    await _not_found(
        b.accept_dispute(AcceptDispute(provider_dispute_id=did), idempotency_key=key())
    )
    await _not_found(
        b.submit_dispute_evidence(
            SubmitDisputeEvidence(provider_dispute_id=did, evidence={"receipt": "ours"}),
            idempotency_key=key(),
        )
    )
    now = await a.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key=key())
    assert now.dispute is not None and now.dispute.status is DisputeStatus.NEEDS_RESPONSE


async def test_another_locations_refund_is_not_found(
    shops: tuple[SquareGateway, SquareGateway],
) -> None:
    a, b = shops
    pid = await paid(a)
    made = await a.create_refund(
        CreateRefund(provider_payment_id=pid, amount=500), idempotency_key=key()
    )
    read = RetrieveRefund(provider_refund_id=made.provider_refund_id)
    assert (await a.retrieve_refund(read, idempotency_key=key())).amount == usd(500)
    await _not_found(b.retrieve_refund(read, idempotency_key=key()))


async def test_another_locations_disputed_payment_is_not_read_for_a_webhook(
    shops: tuple[SquareGateway, SquareGateway],
) -> None:
    """read_payment (a dispute event's payment, web/webhooks.py) keeps to the tenant's
    location as every read by id does: another location's reads as not found (the
    view ignores the event), never its reference_id."""
    a, b = shops
    pid = await paid(a)
    assert (await a.read_payment(pid))["id"] == pid
    await _not_found(b.read_payment(pid))


async def test_a_payment_read_lists_no_dispute_of_another_location(
    wired: tuple[SquareGateway, Wire],
) -> None:
    """ListDisputes asked for the tenant's location; a dispute of another location in
    the answer (the filter not applied) is not the tenant's to see or answer."""
    gw, wire = wired
    pid = await paid(gw)
    theirs = {
        "id": "DSPOTHERLOC1", "state": "EVIDENCE_REQUIRED", "reason": "NO_KNOWLEDGE",
        "amount_money": {"amount": 2000, "currency": "USD"},
        "disputed_payment": {"payment_id": pid}, "location_id": FAKE_SQUARE_LOCATION_2,
        "created_at": "2030-01-01T00:00:00.000Z",
    }  # fmt: skip
    wire.answer["/v2/disputes"] = (200, {"disputes": [theirs]})
    now = await gw.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key=key())
    assert now.dispute is None and not now.disputes


# ---- evidence sent again after it was submitted ----------------------------------------


async def test_evidence_redelivered_after_a_lost_submit_answers_the_dispute(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """SubmitEvidence takes no key: its answer lost, the command is sent again and finds
    the dispute PROCESSING. Its evidence under its keys answered as before (the key's
    successful answers): it was this command's, answered as the dispute is now."""
    gw, wire = wired
    did = await open_square_dispute(square_url, await paid(gw))
    req = SubmitDisputeEvidence(
        provider_dispute_id=did, evidence={"receipt": "R-1", "customer_name": "Ada"}
    )
    k = key()
    wire.lose = "/submit-evidence"
    with pytest.raises(GatewayError) as first:
        await gw.submit_dispute_evidence(req, idempotency_key=k)
    assert first.value.retryable
    again = await gw.submit_dispute_evidence(req, idempotency_key=k)
    assert again.status is DisputeStatus.UNDER_REVIEW and again.provider_dispute_id == did


async def test_evidence_for_a_dispute_submitted_otherwise_is_still_invalid_state(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """Submitted by another command (or in Square's dashboard): this command's evidence
    was never added, so it is not answered as if it had been."""
    gw, _ = wired
    did = await open_square_dispute(square_url, await paid(gw))
    await gw.submit_dispute_evidence(
        SubmitDisputeEvidence(provider_dispute_id=did, evidence={"receipt": "R-1"}),
        idempotency_key=key(),
    )
    with pytest.raises(GatewayError) as info:
        await gw.submit_dispute_evidence(
            SubmitDisputeEvidence(provider_dispute_id=did, evidence={"receipt": "R-2"}),
            idempotency_key=key(),
        )
    assert info.value.code is ErrorCode.INVALID_STATE and not info.value.retryable


# ---- an unknown refund status ----------------------------------------------------------


async def test_an_unknown_refund_status_is_an_unreadable_answer(
    wired: tuple[SquareGateway, Wire],
) -> None:
    """As an unknown payment or dispute status: parked until a version that knows it,
    never read as PENDING (which a later read could never settle)."""
    gw, wire = wired
    wire.answer["/v2/refunds/"] = (
        200,
        {
            "refund": {
                "id": "RFNEW", "status": "PARTIALLY_REVERSED", "payment_id": "PAY1",
                "amount_money": {"amount": 100, "currency": "USD"},
                "location_id": FAKE_SQUARE_LOCATION,
            }
        },
    )  # fmt: skip
    with pytest.raises(GatewayError) as info:
        await gw.retrieve_refund(RetrieveRefund(provider_refund_id="RFNEW"), idempotency_key=key())
    assert info.value.unreadable_answer and info.value.retryable


# ---- "refund the rest" reads the payment alone ----------------------------------------


async def test_refunding_the_rest_reads_no_disputes(wired: tuple[SquareGateway, Wire]) -> None:
    """A token without DISPUTES_READ (or a dispute in a state this version does not know)
    made every whole refund fail: what is left is the payment's alone."""
    gw, wire = wired
    pid = await paid(gw, 900)
    refused = {"category": "AUTHENTICATION_ERROR", "code": "INSUFFICIENT_SCOPES",
               "detail": "The merchant has not granted DISPUTES_READ."}  # fmt: skip
    wire.answer["/v2/disputes"] = (403, {"errors": [refused]})
    made = await gw.create_refund(CreateRefund(provider_payment_id=pid), idempotency_key=key())
    assert (made.amount, made.status) == (usd(900), RefundStatus.SUCCEEDED)
    assert not any(path.startswith("/v2/disputes") for path, _ in wire.sent)


# ---- card brands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("square", "ours"),
    [
        ("VISA", "visa"),
        ("MASTERCARD", "mastercard"),
        ("AMERICAN_EXPRESS", "amex"),
        ("DISCOVER", "discover"),
        ("DISCOVER_DINERS", "diners"),
        ("JCB", "jcb"),
        ("CHINA_UNIONPAY", "unionpay"),
        ("INTERAC", "interac"),
        ("EFTPOS", "eftpos_au"),
        ("OTHER_BRAND", "unknown"),
    ],
)
def test_card_brands_are_named_as_the_stripe_gateway_and_the_simulator_name_them(
    square: str, ours: str
) -> None:
    card = mapping.card({"id": "ccof:1", "card_brand": square, "last_4": "0005"})
    assert card.brand == ours
