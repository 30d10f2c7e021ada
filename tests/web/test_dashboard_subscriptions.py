"""The dashboard's subscriptions, server side (no browser): the JSON view it reads
(/v1/stats) carries each tenant's subscriptions in its latest analytics window, with
every currency's digits; the page has their columns beside the payments'. (The
browser's rendering: tests/web/test_dashboard_insights.py, which needs Chromium.)"""

from __future__ import annotations

import pytest

from paystream.web import views as v
from tests.insights.standin_broker import standin_broker
from tests.insights.test_runner import T0, Harness
from tests.insights.test_subscriptions_counted import _created, _inv
from tests.web.test_dashboard_disputes import _Headers
from tests.web.test_views_recovery_review import _stats


async def test_the_stats_carry_each_tenant_s_subscriptions_and_their_currencies_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's KWD subscription created (its first invoice paid): its latest window,
    as /v1/stats answers it, holds one invoice paid (12.340 KWD, in minor units) and one
    subscription created, and the page is told KWD has three digits."""
    standin_broker(monkeypatch)
    h = Harness("dash-subscriptions")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)
    made = _created("c1", [_inv("paid", created_by="c1", currency="KWD", amount=12_340)])
    made["data"]["object"] = {**made["data"]["object"], "currency": "KWD", "amount": 12_340}
    await h.runner.run_batch([h.event(made["kind"], made["data"], cid="c1")])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    monkeypatch.setattr(v.insights, "runner", h.runner)
    stats = await _stats(monkeypatch, payments={})
    window = stats["insights"]["windows"]["acme"]
    assert window["subscriptions"] == {
        "KWD": {"created": 1, "canceled": 0, "invoices_paid": 1, "invoices_paid_amount": 12_340,
                "invoices_declined": 0}
    }  # fmt: skip
    assert stats["minor_units"].get("KWD") == 3


def test_minor_units_cover_an_invoice_s_currency_the_window_s_money_lacks() -> None:
    """A window naming invoices in JPY only: its amounts are shown in yen."""
    window = {"money": {}, "subscriptions": {"JPY": {"invoices_paid": 1,
                                                    "invoices_paid_amount": 1200}}}  # fmt: skip
    units = v._minor_units({}, {}, {"windows": {"acme": window}, "alerts": []})
    assert units == {"JPY": 0}


def test_the_latest_window_table_has_the_subscription_columns_beside_the_payments() -> None:
    html, _ = v._dashboard()
    parser = _Headers("windows")
    parser.feed(html)
    at = parser.titles.index("Declined")
    assert parser.titles[at + 1 : at + 4] == [
        "Subscription revenue",
        "Invoices declined",
        "Subscriptions created / canceled",
    ], parser.titles
    assert "subscriptionCells" in html
