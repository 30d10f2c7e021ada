"""A cancel is answered as its outcome only when Paddle's answer is the transaction,
canceled: the PATCH's answer used to be mapped as it came, so a 200 naming the
transaction still ``ready`` (or ``completed``: paid at checkout meanwhile), or another
transaction, went out as the cancel's outcome. Against the FAKE Paddle, its cancel
answering so (Paddle's transaction object, as its API reference gives it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiohttp import web

from paystream.devstack._process import free_port
from paystream.gateways.base import CancelPayment, CreatePayment, PaymentStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from tests.fixtures.paddle_fake import _BODY, PaddleFake, _answer
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import gateway, key, usd


class _OddCancel(PaddleFake):
    """The fake, its cancel answering 200 with the transaction as ``answer`` says:
    unchanged, paid meanwhile, or another transaction of the seller."""

    answer: ClassVar[str] = "canceled"
    other: ClassVar[dict[str, Any]] = {}

    async def update_transaction(self, request: web.Request) -> web.Response:
        if request[_BODY].get("status") != "canceled" or self.answer == "canceled":
            return await super().update_transaction(request)
        txn = self._named(request, "transactions", "transaction")
        if self.answer == "another":
            return _answer(self.other)
        return _answer({**txn, "status": self.answer})


@pytest.fixture
async def odd_cancel() -> AsyncIterator[str]:
    runner = web.AppRunner(_OddCancel().app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    _OddCancel.answer = "canceled"
    await runner.cleanup()


async def _ready(url: str, amount: int) -> str:
    """A transaction opened at checkout and declined there: ``ready``, cancelable."""
    gw = gateway(url)
    made = await gw.create_payment(
        CreatePayment(amount=usd(amount), provider_payment_method_id="checkout"),
        idempotency_key=key(),
    )
    await gw.aclose()
    await paddle_checkout(url, made.provider_payment_id, "declined")
    return made.provider_payment_id


@pytest.mark.parametrize("answer", ["ready", "completed", "another"])
async def test_a_cancel_answered_with_no_canceled_transaction_is_refused(
    odd_cancel: str, answer: str
) -> None:
    pid = await _ready(odd_cancel, 3100)
    if answer == "another":
        # (another transaction of the seller's, canceled)
        _OddCancel.other = {"id": await _ready(odd_cancel, 3200), "status": "canceled"}
    _OddCancel.answer = answer
    gw = gateway(odd_cancel)
    try:
        with pytest.raises(GatewayError) as refused:
            await gw.cancel_payment(CancelPayment(provider_payment_id=pid), idempotency_key=key())
    finally:
        await gw.aclose()
    assert refused.value.code is ErrorCode.INVALID_STATE and not refused.value.retryable
    assert refused.value.provider_payment_id == pid
    assert pid in refused.value.message and "not canceled" in refused.value.message


async def test_a_cancel_answered_canceled_is_canceled(odd_cancel: str) -> None:
    pid = await _ready(odd_cancel, 3300)
    gw = gateway(odd_cancel)
    done = await gw.cancel_payment(CancelPayment(provider_payment_id=pid), idempotency_key=key())
    await gw.aclose()
    assert done.status is PaymentStatus.CANCELED and done.provider_payment_id == pid
