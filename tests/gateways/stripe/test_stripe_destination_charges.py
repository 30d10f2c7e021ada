"""Destination charges over a fake transport: the form Stripe takes
(https://docs.stripe.com/connect/destination-charges: ``transfer_data[destination]`` and
``application_fee_amount`` on the PaymentIntent, no ``on_behalf_of``; the capture's
capped ``application_fee_amount``; the refund's ``reverse_transfer`` and
``refund_application_fee``), nothing of them on a payment without a destination, and a
tenant acting for a connected account refused before any request."""

from __future__ import annotations

import pytest

from paystream.gateways.base import CapturePayment, CreateRefund
from paystream.gateways.errors import UnsupportedOperation
from tests.gateways.stripe.test_stripe_transport import PAY, PI, answer, gateway

pytestmark = pytest.mark.asyncio

DESTINED = PAY.model_copy(
    update={"destination_account": "acct_1Dest", "application_fee_amount": 150}
)
REFUND = {"id": "re_1", "object": "refund", "amount": 500, "currency": "usd",
          "payment_intent": "pi_123", "status": "succeeded"}  # fmt: skip


async def test_a_destination_charge_sends_transfer_data_and_the_fee() -> None:
    gw, fake = gateway(answer(200, PI))
    await gw.create_payment(DESTINED, idempotency_key="k1")
    [req] = fake.requests
    form = req["form"]
    assert form["transfer_data[destination]"] == ["acct_1Dest"]
    assert form["application_fee_amount"] == ["150"]
    assert "on_behalf_of" not in form and "Stripe-Account" not in req["headers"]


async def test_a_fee_of_0_is_not_sent() -> None:
    gw, fake = gateway(answer(200, PI))
    await gw.create_payment(
        DESTINED.model_copy(update={"application_fee_amount": 0}), idempotency_key="k1"
    )
    [req] = fake.requests
    assert req["form"]["transfer_data[destination]"] == ["acct_1Dest"]
    assert "application_fee_amount" not in req["form"]


async def test_a_plain_payment_sends_neither() -> None:
    gw, fake = gateway(answer(200, PI))
    await gw.create_payment(PAY, idempotency_key="k1")
    [req] = fake.requests
    assert not {k for k in req["form"] if "transfer" in k or "application_fee" in k}


async def test_a_capture_names_the_capped_fee_only_when_given() -> None:
    gw, fake = gateway(answer(200, PI))
    await gw.capture_payment(
        CapturePayment(provider_payment_id="pi_123", amount=100, application_fee_amount=100),
        idempotency_key="k2",
    )
    await gw.capture_payment(CapturePayment(provider_payment_id="pi_123"), idempotency_key="k3")
    capped, whole = fake.requests
    assert capped["form"]["application_fee_amount"] == ["100"]
    assert capped["form"]["amount_to_capture"] == ["100"]
    assert "application_fee_amount" not in whole["form"]


async def test_a_refund_sends_its_transfer_options() -> None:
    gw, fake = gateway(answer(200, REFUND))
    req = CreateRefund(provider_payment_id="pi_123", amount=500, reverse_transfer=True,
                       refund_application_fee=False)  # fmt: skip
    await gw.create_refund(req, idempotency_key="k4")
    await gw.create_refund(CreateRefund(provider_payment_id="pi_123"), idempotency_key="k5")
    both, plain = fake.requests
    assert both["form"]["reverse_transfer"] == ["true"]
    assert both["form"]["refund_application_fee"] == ["false"]
    assert not {"reverse_transfer", "refund_application_fee"} & set(plain["form"])


async def test_a_tenant_acting_for_a_connected_account_sends_none() -> None:
    gw, fake = gateway(answer(200, PI), connected_account="acct_42")
    with pytest.raises(UnsupportedOperation) as refused:
        await gw.create_payment(DESTINED, idempotency_key="k1")
    assert "acct_42" in str(refused.value)
    assert fake.requests == []
