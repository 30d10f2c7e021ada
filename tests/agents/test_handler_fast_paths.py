"""create_payment reads the command's and the answer's fields from their ``__dict__``
and builds its request and record without validating them again: what it makes must be
what validating the same values makes, field for field and byte for byte."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from paystream.agents import handlers as h
from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.streams import commands as c
from paystream.streams.outcomes import CommandRef
from paystream.tables.records import PaymentRecord


class _Gateway:
    provider = "simulator"

    def __init__(self, answer: gw.PaymentResult | GatewayError, *, webhooks: bool = False) -> None:
        self.answer = answer
        self.capabilities = frozenset({gw.Capability.WEBHOOKS} if webhooks else ())
        self.requests: list[tuple[gw.CreatePayment, str]] = []

    async def create_payment(self, req: gw.CreatePayment, *, idempotency_key: str) -> Any:
        self.requests.append((req, idempotency_key))
        if isinstance(self.answer, GatewayError):
            raise self.answer
        return self.answer


_COMMANDS = [
    {"amount": 1234, "currency": "usd", "payment_method_token": "pm_card_visa"},
    {
        "payment_id": "pay_chosen",
        "amount": 1,
        "currency": " JPY ",
        "payment_method_token": "pm_card_visa",
        "capture": "manual",
        "description": "  a description  ",
        "statement_descriptor": "SHOP",
        "return_url": "https://example.com/back",
        "metadata": {"order": "o-1", "": "empty key"},
    },
    {"amount": 99_999_999_999, "currency": "kwd", "payment_method_token": "tok", "capture": "auto"},
]


def _answer(pid: str, status: str, currency: str, **more: Any) -> dict[str, Any]:
    return {
        "provider_payment_id": pid,
        "status": status,
        "amount": {"amount": 1, "currency": currency},
        **more,
    }


_ANSWERS: list[dict[str, Any]] = [
    _answer("pi_1", "succeeded", "usd", amount_captured=1234),
    _answer("pi_2", "authorized", "EUR", amount_refunded=-5, failure_code="x", failure_message="y"),
    _answer(
        "pi_3",
        "requires_action",
        "GBP",
        next_action={"type": "redirect", "url": "https://3ds", "nested": [1, {"a": None}]},
    ),
    _answer("pi_4", "processing", "USD"),
    _answer("pi_5", "canceled", "USD"),
    _answer("pi_6", "failed", "USD", failure_code="card_declined", failure_message="declined"),
]


def _ctx(gateway: Any) -> h.HandlerContext:
    cmd = CommandRef("t1", "cmd-1", "payment.create", "idem-1", datetime(2026, 1, 1, tzinfo=UTC))
    return h.HandlerContext(cmd=cmd, gateway=gateway, tables=h.Tables({}, {}, {}, {}, {}))


def _reference_record(
    ctx: h.HandlerContext, data: c.CreatePayment, res: gw.PaymentResult | None
) -> PaymentRecord:
    """The record as validating its fields, read as attributes, makes it."""
    pid = data.payment_id or ctx.derived_id("pay")
    fields: dict[str, Any] = {
        "tenant_id": ctx.tenant,
        "id": pid,
        "provider": ctx.gateway.provider,
        "created_by": ctx.cmd.command_id,
        "amount": data.amount,
        "currency": data.currency,
        "capture_method": "manual" if data.capture is c.CaptureMode.MANUAL else "automatic",
        "customer_id": None,
        "payment_method_id": data.payment_method_id,
    }
    if res is None:
        fields.update(
            status=gw.PaymentStatus.FAILED.value,
            provider_payment_id="pi_declined",
            failure_code="insufficient_funds",
            failure_message="no money",
        )
    else:
        fields.update(
            status=res.status.value,
            provider_payment_id=res.provider_payment_id,
            amount_captured=res.amount_captured,
            amount_refunded=max(0, res.amount_refunded),
            failure_code=res.failure_code,
            failure_message=res.failure_message,
            next_action=res.next_action,
            customer_action_delivered=res.next_action is not None,
        )
    return PaymentRecord.model_validate(fields)


@pytest.mark.parametrize("webhooks", [False, True], ids=["no-webhooks", "webhooks"])
@pytest.mark.parametrize(
    ("command", "answer"), list(itertools.product(_COMMANDS, [*_ANSWERS, None]))
)
def test_create_payment_makes_what_validation_makes(
    command: dict[str, Any], answer: dict[str, Any] | None, webhooks: bool
) -> None:
    data = c.CreatePayment.model_validate(command)
    res = None if answer is None else gw.PaymentResult.model_validate(answer)
    declined = GatewayError(
        ErrorCode.INSUFFICIENT_FUNDS,
        "no money",
        provider="simulator",
        http_status=402,
        decline_code="insufficient_funds",
        provider_payment_id="pi_declined",
    )
    gateway = _Gateway(declined if res is None else res, webhooks=webhooks)
    ctx = _ctx(gateway)
    result = asyncio.run(h.create_payment(ctx, data))
    pid = result.primary.id if result.primary is not None else ""

    (req, _key) = gateway.requests[0]
    expected_req = gw.CreatePayment(
        amount={"amount": data.amount, "currency": data.currency},  # type: ignore[arg-type]
        provider_payment_method_id=str(data.payment_method_token),
        capture_method=gw.CaptureMethod.MANUAL
        if data.capture is c.CaptureMode.MANUAL
        else gw.CaptureMethod.AUTOMATIC,
        description=data.description,
        statement_descriptor=data.statement_descriptor,
        return_url=data.return_url,
        # A provider that sends webhooks is told which payment it is (paystream_payment).
        metadata=gw.payment_ref(data.metadata, ctx.cmd.tenant_id, pid)
        if webhooks
        else data.metadata,
    )
    assert req == expected_req
    assert orjson.dumps(req.model_dump(mode="json")) == orjson.dumps(
        expected_req.model_dump(mode="json")
    )
    assert req.metadata is not data.metadata  # its own copy (paystream.built)

    expected = _reference_record(_ctx(gateway), data, res)
    assert result.primary == expected
    assert result.primary is not None
    assert orjson.dumps(result.primary.model_dump(mode="json")) == orjson.dumps(
        expected.model_dump(mode="json")
    )
    assert type(result.primary.status) is str
    assert result.outcome_type == (
        "payment.failed" if res is None else h._PAYMENT_OUTCOME[res.status]
    )


@pytest.mark.parametrize("answer", _ANSWERS)
@pytest.mark.parametrize("refunded", [0, 3, 10_000])
def test_a_payment_result_is_applied_as_its_attributes_read(
    answer: dict[str, Any], refunded: int
) -> None:
    """_apply_payment_result (capture, cancel) reads the answer's ``__dict__``."""
    res = gw.PaymentResult.model_validate(answer)
    data = c.CreatePayment.model_validate(_COMMANDS[0])
    base = _reference_record(_ctx(_Gateway(res)), data, res)
    base.amount_refunded = refunded
    got, expected = base.model_copy(deep=True), base.model_copy(deep=True)
    h._apply_payment_result(_ctx(_Gateway(res)), got, res)
    expected.status = res.status.value
    expected.amount_captured = res.amount_captured
    expected.amount_refunded = max(expected.amount_refunded, res.amount_refunded)
    expected.failure_code = res.failure_code
    expected.failure_message = res.failure_message
    expected.next_action = res.next_action
    # (once given, kept)
    expected.customer_action_delivered = base.next_action is not None or res.next_action is not None
    assert got == expected
    assert orjson.dumps(got.model_dump(mode="json")) == orjson.dumps(
        expected.model_dump(mode="json")
    )
    assert type(got.status) is str
