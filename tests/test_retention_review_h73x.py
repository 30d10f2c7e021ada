"""Review h73x: retention of invoices with their subscription (7d0db59)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from paystream.tables.retention import expired
from tests.test_entity_retention import NOW, OLD, RETENTION, Table, entity, sweep

DAY = 24 * 3600


def test_a_subscription_expiring_between_the_invoices_walk_and_its_own_strands_its_invoices():
    """The sweep walks the invoices table, then the subscriptions table, one budget a
    batch. A canceled subscription whose retention runs out after its invoices were
    walked but before it is walked goes alone; its paid invoice then has no owner
    (not found: kept) and stays in the tables for ever."""
    canceled_at = NOW - RETENTION + 5  # expires at NOW + 5
    subscriptions = Table(
        "subscriptions",
        {"t:s1": (0, entity("subscription", canceled_at, status="canceled"))},
    )
    invoices = Table(
        "invoices",
        {"t:i1": (0, entity("invoice", OLD, status="paid", subscription_id="s1"))},
    )
    s = sweep([invoices, subscriptions], actives={0}, budget=1, rest_seconds=0)
    assert s.step(NOW) == 0  # the invoice: its subscription not expired yet, kept
    s.step(NOW + 10)  # the subscription, expired now (deleted here on 7d0db59)
    for n in range(10):  # later passes, up to a year on
        s.step(NOW + 20 + n * 40 * DAY)
        s.step(NOW + 21 + n * 40 * DAY)
    assert "t:s1" not in subscriptions
    # FAILS: the invoice is kept for ever (its owner "not found").
    assert "t:i1" not in invoices, "invoice stranded without its subscription"


def _at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_a_live_daily_subscriptions_invoices_past_the_providers_listing_are_swept():
    """A live daily subscription's provider lists its newest 24 invoices; one from 600
    days ago is never listed again, so nothing records it again: it may go once it is
    unchanged for the retention. Kept, the invoices table grows by 365 rows a year per
    daily subscription, for as long as it lives (retention's bound on the tables gone)."""
    period_start = NOW - DAY
    sub = entity(
        "subscription",
        NOW - DAY,
        status="active",
        interval="day",
        interval_count=1,
        current_period_start=_at(period_start),
        current_period_end=_at(period_start + DAY),
    )
    old_invoice = entity(
        "invoice",
        OLD - 59 * DAY,  # paid 600 days ago, unchanged since
        status="paid",
        subscription_id="s1",
        period_start=_at(NOW - 601 * DAY),
        period_end=_at(NOW - 600 * DAY),
    )
    # FAILS: kept while the subscription lives, however far past the newest 24.
    assert expired(old_invoice, NOW, RETENTION, lambda sid: sub)
    # (one still among the newest 24 stays, as it must)
    recent = dict(old_invoice, period_start=_at(NOW - 11 * DAY), period_end=_at(NOW - 10 * DAY))
    assert not expired(recent, NOW, RETENTION, lambda sid: sub)
    assert timedelta(days=600) > timedelta(days=24)


def test_a_customer_expiring_between_the_methods_walk_and_its_own_strands_its_method():
    """The same race for a payment method and its erased customer (before 7d0db59)."""
    erased_at = NOW - RETENTION + 5
    customers = Table(
        "customers", {"t:c1": (0, entity("customer", erased_at, erased=True, deleted=True))}
    )
    methods = Table(
        "payment_methods",
        {"t:m1": (0, entity("payment_method", OLD, attached=True, customer_id="c1"))},
    )
    s = sweep([methods, customers], actives={0}, budget=1, rest_seconds=0)
    s.step(NOW)
    s.step(NOW + 10)
    for n in range(10):
        s.step(NOW + 20 + n * 40 * DAY)
        s.step(NOW + 21 + n * 40 * DAY)
    assert "t:c1" not in customers
    assert "t:m1" not in methods  # FAILS on main: kept for ever
