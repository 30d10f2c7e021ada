"""The request fingerprint written without ``model_dump`` (``model_fingerprint``) is the
fingerprint of the dumped request, for every request model it writes directly."""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel

from paystream.gateways import base as gw
from paystream.gateways.simulator.store import (
    PLAIN_REQUESTS,
    model_fingerprint,
    request_fingerprint,
)
from paystream.money import Money

# ---- the request fingerprint --------------------------------------------------------

_PLAIN_LEAVES: set[Any] = {str, int, bool, type(None), dict[str, str]}


def _plain(annotation: Any) -> bool:
    """A field type orjson writes as ``model_dump(mode="json")`` does."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_plain(arg) for arg in typing.get_args(annotation))
    if annotation in _PLAIN_LEAVES or annotation in PLAIN_REQUESTS:
        return True
    return isinstance(annotation, type) and issubclass(annotation, StrEnum)


@pytest.mark.parametrize("model", sorted(PLAIN_REQUESTS, key=lambda m: m.__name__))
def test_plain_requests_have_only_plain_fields(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert _plain(field.annotation), f"{model.__name__}.{name}: {field.annotation}"
        assert field.serialization_alias is None and field.alias is None
    assert not model.model_computed_fields
    assert model.model_config.get("extra") in (None, "forbid", "ignore")


def test_every_request_type_is_plain() -> None:
    requests = {m for m in vars(gw).values() if isinstance(m, type) and issubclass(m, gw._Req)}
    assert requests - {gw._Req} <= PLAIN_REQUESTS


_REQUESTS: list[tuple[str, BaseModel]] = [
    ("create_customer", gw.CreateCustomer()),
    ("create_customer", gw.CreateCustomer(email="a@b.c", name="Zoë", metadata={"b": "1", "a": ""})),
    ("update_customer", gw.UpdateCustomer(provider_customer_id="cus_x", metadata=None)),
    ("update_customer", gw.UpdateCustomer(provider_customer_id="cus_x", metadata={"k": "v"})),
    ("delete_customer", gw.DeleteCustomer(provider_customer_id="cus_x")),
    ("attach_payment_method", gw.AttachPaymentMethod(provider_customer_id="c", token="pm_x")),
    ("detach_payment_method", gw.DetachPaymentMethod(provider_payment_method_id="pm_x")),
    (
        "create_payment",
        gw.CreatePayment(
            amount=Money(amount=1234, currency="usd"),
            provider_payment_method_id="pm_card_visa",
            capture_method=gw.CaptureMethod.MANUAL,
            description='order \u2603 "5"',
            metadata={"z": "1", "order_id": "ord-5", "channel": "web"},
            return_url="https://example.invalid/r?a=1&b=2",
        ),
    ),
    (
        "create_payment",
        gw.CreatePayment(amount=Money(amount=0, currency="JPY"), provider_payment_method_id="x"),
    ),
    ("capture_payment", gw.CapturePayment(provider_payment_id="pi_x")),
    ("capture_payment", gw.CapturePayment(provider_payment_id="pi_x", amount=10)),
    ("cancel_payment", gw.CancelPayment(provider_payment_id="pi_x", reason="duplicate")),
    ("create_refund", gw.CreateRefund(provider_payment_id="pi_x", amount=5, metadata={"a": "b"})),
    (
        "submit_dispute_evidence",
        gw.SubmitDisputeEvidence(
            provider_dispute_id="dp", evidence={"b": "2", "a": "1"}, submit=False
        ),
    ),
    ("accept_dispute", gw.AcceptDispute(provider_dispute_id="dp_x")),
]


@pytest.mark.parametrize(("operation", "req"), _REQUESTS)
def test_model_fingerprint_is_the_dumped_requests_fingerprint(
    operation: str, req: BaseModel
) -> None:
    assert model_fingerprint(operation, req) == request_fingerprint(
        operation, req.model_dump(mode="json")
    )


def test_a_model_not_known_plain_is_dumped_first() -> None:
    import datetime

    class Other(BaseModel):
        at: datetime.datetime
        money: Money

    req = Other(at=datetime.datetime(2026, 1, 2, 3, 4, 5, 6), money=Money(amount=1, currency="EUR"))
    assert model_fingerprint("x", req) == request_fingerprint("x", req.model_dump(mode="json"))
