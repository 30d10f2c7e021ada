"""Stream time against odd record times: a producer sets its record's time (0, 1970, year
9999), so stream time believes it only within a horizon of the command's time. Review
of the stream-time change: each failed before that bound."""

from __future__ import annotations

import pytest

from tests.insights.test_counting_edges import _window_counts
from tests.insights.test_runner import DECLINE, END_OF_TIME, PAID, T0, Harness

pytestmark = pytest.mark.asyncio

MIN = 60_000


@pytest.mark.parametrize("odd_time", [0, END_OF_TIME])
async def test_one_odd_record_time_in_a_backlog_does_not_make_the_rest_late(odd_time: int) -> None:
    """Ten outcomes of one minute read 17 minutes late (the ledger's database was down);
    the fourth's record time is 0 (read as "now") or far ahead (clamped to now): stream
    time jumps to the worker's clock and the six after it are skipped as late."""
    h = Harness(f"odd-{odd_time}")
    events = [
        h.event(
            "payment.succeeded",
            PAID,
            cid=f"c{i}",
            at_ms=T0 + i,
            produced_ms=odd_time if i == 3 else T0 + i + 50,
        )
        for i in range(10)
    ]
    h.now = (T0 + 17 * MIN) / 1000
    await h.runner.run_batch(events)
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0)[-1:] == [10], _window_counts(h, T0)


async def test_another_tenant_s_odd_record_time_does_not_make_a_backlog_late() -> None:
    """Two tenants on one partition, its backlog read 17 minutes late in two batches (a
    tick between): one record of beta's with a far-future time moves beta's stream time
    to the clock, the tick raises acme's to it, and acme's rest of the backlog is late."""
    h = Harness("odd-cross")
    first = [
        h.event("payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(3)
    ]
    first.append(
        h.event(
            "payment.succeeded",
            PAID,
            cid="b0",
            at_ms=T0 + 5,
            tenant="beta",
            produced_ms=END_OF_TIME,
        )
    )
    rest = [
        h.event("payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(3, 6)
    ]
    h.now = (T0 + 17 * MIN) / 1000
    await h.runner.run_batch(first)
    await h.runner.tick(lambda p: True)
    h.now += 2
    await h.runner.run_batch(rest)
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0)[-1:] == [6], _window_counts(h, T0)


async def test_counted_ids_are_forgotten_when_record_times_are_far_past() -> None:
    """A producer whose clock is far behind (record time 1970): stream time never moves
    from there, so no counted id is ever forgotten (nor any window expired): the
    insights_seen table grows with every outcome, hours after the horizon."""
    h = Harness("past-ids")
    for minute in range(120):  # two hours of live traffic, one outcome a minute
        h.now = (T0 + minute * MIN + 500) / 1000
        await h.runner.run_batch(
            [
                h.event(
                    "payment.succeeded",
                    PAID,
                    cid=f"c{minute}",
                    at_ms=T0 + minute * MIN,
                    produced_ms=1_000 + minute,
                )
            ]
        )
        h.now += 31  # a sweep
        await h.runner.tick(lambda p: True)
    # A record time before its command's is believed as at most a horizon before it, so
    # stream time lags the commands by up to a horizon: ids of about two horizons (15
    # min + a window each) stay, not all 120 (stream time frozen in 1970, every id did).
    assert len(h.seen.data.data) <= 35, (len(h.seen.data.data), h.state.get("acme")["stream"])


async def test_declines_with_far_past_record_times_alert_once() -> None:
    """Ten declines of one customer in two batches, record times far past: one alert."""
    from paystream.insights.events import ALERT_TYPE

    h = Harness("past-fraud")
    for b in range(2):
        h.now = (T0 + b * 1_000 + 500) / 1000
        await h.runner.run_batch(
            [
                h.event(
                    "payment.failed",
                    DECLINE,
                    cid=f"d{b}{i}",
                    at_ms=T0 + b * 1_000 + i,
                    produced_ms=1_000,
                )
                for i in range(5)
            ]
        )
    alerts = [a.get_data()["rule"] for a in h.of_type(ALERT_TYPE)]
    assert alerts.count("subject_declines") == 1, alerts
