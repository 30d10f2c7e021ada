"""subscription.update's request at Stripe, as its API reference has it
(https://docs.stripe.com/api/subscriptions/update), sent through a stand-in client (as
tests/gateways/stripe/test_stripe_subscriptions.py's): a new Plan on the one item with
``proration_behavior=none``, ``default_payment_method``, ``cancel_at_period_end``; only
what is asked for. tests/gateways/test_contract.py runs it against localstripe."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from paystream.gateways.base import UpdateSubscription
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.money import Money
from tests.gateways.stripe.test_stripe_subscriptions import _Client, _Obj, _plan, _sub

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


def _item(iid: str, amount: int, subscription: str = "sub_1") -> dict[str, Any]:
    """A pending proration item, as Stripe lists it (before basil's ``parent``)."""
    return {"id": iid, "object": "invoiceitem", "amount": amount, "proration": True,
            "subscription": subscription, "description": f"{iid} time",
            "period": {"start": 1_780_000_000 + amount, "end": 1_782_592_000}}  # fmt: skip


class _Paged(_Client):
    """``GET /v1/invoiceitems`` answered a page at a time (``starting_after``), or
    refused with ``refusal``."""

    def __init__(self, items: list[dict[str, Any]], page: int, refusal: Exception | None,
                 calls: list[tuple[str, Any]]) -> None:  # fmt: skip
        product_plan = _plan(id="plan_old", product="prod_1")
        current = _sub(items={"object": "list", "data": [{"id": "si_1", "plan": product_plan}]})
        super().__init__({"subscriptions.retrieve_async": current,
                          "plans.create_async": {"id": "plan_new"},
                          "subscriptions.update_async": _sub(customer="cus_1"),
                          "invoices.list_async": {"data": []}}, calls)  # fmt: skip
        self._items, self._page, self._refusal = items, page, refusal

    def __getattr__(self, service: str) -> Any:
        if service != "invoice_items":
            return super().__getattr__(service)
        paged = self

        class _Items:
            async def list_async(self, params: dict[str, Any]) -> Any:
                paged._calls.append(("invoice_items.list_async", (dict(params),)))
                if paged._refusal is not None:
                    raise paged._refusal
                ids = [i["id"] for i in paged._items]
                at = ids.index(params["starting_after"]) + 1 if "starting_after" in params else 0
                data = paged._items[at : at + min(paged._page, params["limit"])]
                return _Obj({"object": "list", "data": data,
                             "has_more": at + len(data) < len(paged._items)})  # fmt: skip

        return _Items()


_PRORATED = UpdateSubscription(
    provider_subscription_id="sub_1",
    amount=Money(amount=2500, currency="USD"),
    proration="create_prorations",
)


async def test_the_pending_prorations_are_read_from_every_page() -> None:
    """Stripe's list of a customer's pending items takes no subscription filter: every
    page is read (``starting_after``), and only this subscription's kept (review
    h79r_e L3)."""
    items = [_item("ii_a", 900), _item("ii_x", 50, subscription="sub_other"), _item("ii_b", -600)]
    calls: list[tuple[str, Any]] = []
    gw = StripeGateway(_Paged(items, 1, None, calls))  # type: ignore[arg-type]
    res = await gw.update_subscription(_PRORATED, idempotency_key="k4")
    assert [p.amount for p in res.pending_prorations] == [-600, 900]
    reads = [args[0] for name, args in calls if name == "invoice_items.list_async"]
    assert [r.get("starting_after") for r in reads] == [None, "ii_a", "ii_x"]
    assert {(r["customer"], r["pending"]) for r in reads} == {("cus_1", True)}


async def test_a_refused_pending_read_answers_the_applied_update() -> None:
    """The update took effect at Stripe before the read: a refusal of the read (a key
    restricted from invoice items) answers it without its pending lines; a retryable
    failure is raised, the update sent again answered from its key (review h79r_e L3)."""
    denied = stripe.PermissionError("restricted key", http_status=403)
    gw = StripeGateway(_Paged([], 100, denied, []))  # type: ignore[arg-type]
    res = await gw.update_subscription(_PRORATED, idempotency_key="k5")
    assert (res.provider_subscription_id, res.pending_prorations) == ("sub_1", ())
    down = stripe.APIConnectionError("connection reset")
    with pytest.raises(GatewayError) as info:
        await StripeGateway(_Paged([], 100, down, [])).update_subscription(  # type: ignore[arg-type]
            _PRORATED, idempotency_key="k6"
        )
    assert info.value.retryable
