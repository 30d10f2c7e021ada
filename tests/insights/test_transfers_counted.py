"""Transfers in the analytics windows: the real outcomes of transfer.create and
transfer.reverse (through the pipeline, on the simulator) counted per currency, made
(what they moved out) and reversed (what each reversal took back), each outcome once:
a redelivered command's outcome is the same event (the runner's counted ids skip it);
a window without transfers is published as before them, one with them matches the
published schema; the dashboard's windows table shows them, and the page's minor-unit
digits cover their currency."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.insights.events import window_event
from paystream.insights.observe import observe
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.web import views as v
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind
from tests.insights.test_runner import T0
from tests.ledger.transfers import an_enabled_account
from tests.test_docs import asyncapi, validator  # noqa: F401  (a fixture)
from tests.web.test_dashboard_disputes import _Headers

CFG = InsightsConfig(window_ms=60_000, horizon_ms=600_000, grace_ms=5_000)


async def _outcomes(redis_url: str) -> tuple[list[CloudEvent], CloudEvent]:
    """A payment, a transfer of 6 000 from it (sent twice), a reversal of 1 000 and one
    of the rest; and a payment in EUR with a transfer of 500 from it."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant("acme")
        await an_enabled_account(h, t)
        outs = []
        for pid, currency in (("p1", "USD"), ("p2", "EUR")):
            pay = {"payment_id": pid, "amount": 10_000, "currency": currency,
                   "payment_method_token": "pm_card_visa"}  # fmt: skip
            outs.append(await h.send("payment.create", t, pay))
        made = {"transfer_id": "tr1", "connected_account_id": "ca1", "amount": 6_000,
                "currency": "USD", "payment_id": "p1"}  # fmt: skip
        outs.append(await h.send("transfer.create", t, made, command_id="tr-cmd"))
        again = await h.send("transfer.create", t, made, command_id="tr-cmd")
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1", "amount": 1_000}))
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1"}))
        euro = {"connected_account_id": "ca1", "amount": 500, "currency": "EUR",
                "payment_id": "p2"}  # fmt: skip
        outs.append(await h.send("transfer.create", t, euro))
    assert [kind(o) for o in outs] == [
        "payment.succeeded", "payment.succeeded", "transfer.created", "transfer.reversed",
        "transfer.reversed", "transfer.created",
    ], [data(o) for o in outs]  # fmt: skip
    return outs, again


def _window(events: list[CloudEvent]) -> dict[str, Any]:
    """The events in one window (their times pinned to it: sent seconds apart, they may
    straddle a minute)."""
    st = TenantInsights("acme")
    for i, e in enumerate(events):
        seen = observe(e)
        assert seen is not None
        st.apply(dataclasses.replace(seen, time_ms=T0 + i), CFG)
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    return dict(json.loads(record.value))


@pytest.mark.asyncio
async def test_transfers_are_counted_per_currency_once(
    redis_url: str,
    asyncapi: dict[str, Any],  # noqa: F811
) -> None:
    outs, again = await _outcomes(redis_url)
    facts = [observe(o) for o in outs]
    assert [(f.transfer_created, f.transfer_reversed) for f in facts if f] == [
        (0, 0), (0, 0), (6_000, 0), (0, 1_000), (0, 5_000), (500, 0)
    ]  # fmt: skip
    # The redelivered command's outcome is the same event: counted once by its id.
    assert again.get_id() == outs[2].get_id()
    quiet = _window(outs[:2])
    assert "transfers" not in quiet
    payload = _window(outs)
    assert payload["transfers"] == {
        "USD": {"created": 1, "created_amount": 6_000, "reversed": 2, "reversed_amount": 6_000},
        "EUR": {"created": 1, "created_amount": 500, "reversed": 0, "reversed_amount": 0},
    }
    validator(asyncapi, "/components/messages/analyticsWindow/payload", draft7=True).validate(
        payload
    )
    schema = asyncapi["components"]["schemas"]["AnalyticsWindow"]["properties"]
    assert schema["transfers"]["additionalProperties"]["additionalProperties"] is False


def test_the_dashboard_shows_transfers_and_their_currencies() -> None:
    html, _ = v._dashboard()
    parser = _Headers("windows")
    parser.feed(html)
    assert parser.titles[-1] == "Transfers made / reversed", parser.titles
    assert "transferCell(w)" in html
    window = {"money": {}, "transfers": {"JPY": {"created": 1, "created_amount": 1200}}}
    units = v._minor_units({}, {}, {"windows": {"acme": window}, "alerts": []})
    assert units == {"JPY": 0}
