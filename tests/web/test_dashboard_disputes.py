"""The dashboard's disputes, server side (no browser): the JSON view it reads (/v1/stats)
carries each tenant's disputes opened and lost and the payments that succeeded in its
latest analytics window, with every currency's digits; the page has their columns. (The
browser's rendering: tests/web/test_dashboard_insights.py, which needs Chromium.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from paystream.web import views as v
from tests.insights.standin_broker import standin_broker
from tests.insights.test_disputes_counted import _dispute, _paid
from tests.insights.test_runner import T0, Harness
from tests.web.test_views_recovery_review import _stats


class _Headers(HTMLParser):
    """The column titles of the table with id ``table``."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self.table, self.inside, self.cell, self.titles = table, False, False, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id") == self.table:
            self.inside = True
        elif self.inside and tag == "th":
            self.cell = True
            self.titles.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self.cell = False
        elif tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.cell:
            self.titles[-1] += data


async def test_the_stats_carry_each_tenant_s_disputes_and_their_currencies_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tenant's KWD payment with a dispute raised at charge: its latest window, as
    /v1/stats answers it, holds one payment succeeded and one dispute opened (12.340
    KWD, in minor units), and the page is told KWD has three digits."""
    standin_broker(monkeypatch)
    h = Harness("dash-disputes")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)
    charge = _paid("c1", _dispute("needs_response", 1, currency="KWD", amount=12_340))
    charge["data"]["object"] = {**charge["data"]["object"], "currency": "KWD",
                                "amount": 12_340, "amount_captured": 12_340}  # fmt: skip
    await h.runner.run_batch([h.event(charge["kind"], charge["data"], cid="c1")])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    monkeypatch.setattr(v.insights, "runner", h.runner)
    stats = await _stats(monkeypatch, payments={})
    window = stats["insights"]["windows"]["acme"]
    assert window["payments_succeeded"] == {"KWD": 1}, window
    assert window["disputes"] == {
        "KWD": {"opened": 1, "opened_amount": 12_340, "lost": 0, "lost_amount": 0}
    }
    assert stats["minor_units"].get("KWD") == 3


def test_minor_units_cover_a_dispute_s_currency_the_window_s_money_lacks() -> None:
    """A window (of an outcome shape this version does not read as money) naming a
    dispute in JPY only: its amounts are shown in yen, not as minor units."""
    window = {"money": {}, "disputes": {"JPY": {"opened": 1, "opened_amount": 1200}}}
    units = v._minor_units({}, {}, {"windows": {"acme": window}, "alerts": []})
    assert units == {"JPY": 0}


def test_the_latest_window_table_has_the_dispute_columns() -> None:
    html, policy = v._dashboard()
    parser = _Headers("windows")
    parser.feed(html)
    # (After the payments succeeded; columns added later, e.g. transfers, come after.)
    at = parser.titles.index("Payments succeeded")
    assert parser.titles[at : at + 4] == [
        "Payments succeeded",
        "Disputes opened",
        "Disputes lost",
        "Dispute rate",
    ], parser.titles
    # (The page's script, which fills them, is the one its policy lets run.)
    assert "disputeCells" in html and re.search(r"script-src 'sha256-[^']+'", policy)
