"""The dashboard's payouts and tax, server side (no browser): the page has their columns
beside the payments' and subscriptions', and the JSON view it reads (/v1/stats) gives
the digits of every currency they name. (The browser's rendering:
tests/web/test_dashboard_insights.py, which needs Chromium.)"""

from __future__ import annotations

from paystream.web import views as v
from tests.web.test_dashboard_disputes import _Headers


def test_the_latest_window_table_has_tax_and_payout_columns_beside_the_subscriptions() -> None:
    html, _ = v._dashboard()
    parser = _Headers("windows")
    parser.feed(html)
    at = parser.titles.index("Subscriptions created / canceled")
    assert parser.titles[at + 1 : at + 5] == [
        "Tax collected",
        "Payouts paid",
        "Payouts in flight",
        "Payouts failed",
    ], parser.titles
    assert parser.titles[at + 5] == "Payments succeeded"
    assert "taxAndPayoutCells" in html


def test_minor_units_cover_payout_and_tax_currencies_the_window_s_money_lacks() -> None:
    """A window naming a payout in JPY and tax in KWD only: their amounts in yen and
    dinars."""
    window = {
        "money": {},
        "payouts": {"JPY": {"paid": 1, "paid_amount": 1200}},
        "tax_collected": {"KWD": {"payments": 1000, "invoices": 0}},
    }
    units = v._minor_units({}, {}, {"windows": {"acme": window}, "alerts": []})
    assert units == {"JPY": 0, "KWD": 3}
