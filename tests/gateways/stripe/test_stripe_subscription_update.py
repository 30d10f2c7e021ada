"""subscription.update's request at Stripe, as its API reference has it
(https://docs.stripe.com/api/subscriptions/update), sent through a stand-in client (as
tests/gateways/stripe/test_stripe_subscriptions.py's): a new Plan on the one item with
``proration_behavior=none``, ``default_payment_method``, ``cancel_at_period_end``; only
what is asked for. tests/gateways/test_contract.py runs it against localstripe."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import UpdateSubscription
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.money import Money
from tests.gateways.stripe.test_stripe_subscriptions import _Client, _plan, _sub

pytestmark = pytest.mark.asyncio


def _gateway(calls: list[tuple[str, Any]], now: dict[str, Any] | None = None) -> StripeGateway:
    product_plan = _plan(id="plan_old", product="prod_1", interval="week", interval_count=2)
    current = now or _sub(items={"object": "list", "data": [{"id": "si_1", "plan": product_plan}]})
    answers = {
        "subscriptions.retrieve_async": current,
        "plans.create_async": {"id": "plan_new"},
        "subscriptions.update_async": _sub(),
        "invoices.list_async": {"data": []},
    }
    return StripeGateway(_Client(answers, calls))  # type: ignore[arg-type]


def _params(calls: list[tuple[str, Any]], verb: str) -> list[Any]:
    return [args for name, args in calls if name == verb]


async def test_a_new_amount_is_a_new_plan_on_the_item_without_prorations() -> None:
    calls: list[tuple[str, Any]] = []
    req = UpdateSubscription(
        provider_subscription_id="sub_1", amount=Money(amount=2500, currency="USD")
    )
    await _gateway(calls).update_subscription(req, idempotency_key="ps:t:k1")
    [(plan_params, plan_opts)] = _params(calls, "plans.create_async")
    # The same interval and Product, under a key derived from the update's.
    assert plan_params == {"amount": 2500, "currency": "usd", "interval": "week",
                           "interval_count": 2, "product": "prod_1"}  # fmt: skip
    assert plan_opts["idempotency_key"] == "ps:t:k1:plan"
    [(sid, params, opts)] = _params(calls, "subscriptions.update_async")
    assert sid == "sub_1" and opts["idempotency_key"] == "ps:t:k1"
    assert params == {"items": [{"id": "si_1", "plan": "plan_new"}], "proration_behavior": "none"}


async def test_a_payment_method_and_cancel_at_period_end_alone_make_no_plan() -> None:
    calls: list[tuple[str, Any]] = []
    req = UpdateSubscription(
        provider_subscription_id="sub_1",
        provider_payment_method_id="pm_2",
        cancel_at_period_end=False,
    )
    await _gateway(calls).update_subscription(req, idempotency_key="k2")
    assert _params(calls, "plans.create_async") == []
    assert _params(calls, "subscriptions.retrieve_async") == []
    [(_, params, _)] = _params(calls, "subscriptions.update_async")
    assert params == {"default_payment_method": "pm_2", "cancel_at_period_end": False}


async def test_a_subscription_of_more_than_one_item_is_not_repriced() -> None:
    calls: list[tuple[str, Any]] = []
    two = _sub(items={"object": "list", "data": [{"id": "si_1", "plan": _plan()},
                                                 {"id": "si_2", "plan": _plan()}]})  # fmt: skip
    req = UpdateSubscription(
        provider_subscription_id="sub_1", amount=Money(amount=2500, currency="USD")
    )
    with pytest.raises(GatewayError) as info:
        await _gateway(calls, two).update_subscription(req, idempotency_key="k3")
    assert info.value.code is ErrorCode.INVALID_STATE
    assert _params(calls, "subscriptions.update_async") == []
