"""Stream time, review round 3: a crash in the tick between the counted ids forgotten and
the tenant record that said so; skips counted once per stored batch; a command dated over
a horizon ahead of its record in a backlog; what `late` counts; the dashboard after a
partition moved away. Each failed before its fix (the names say what must hold)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.agents.insights import SKIPPED
from tests.insights.standin_broker import standin_broker
from tests.insights.test_counting_edges import _window_counts
from tests.insights.test_runner import DECLINE, PAID, T0, Harness
from tests.insights.test_stream_time_client_clocks import read_late_with_one_dated_ahead

pytestmark = pytest.mark.asyncio

MIN = 60_000


async def test_ids_forgotten_by_a_raise_whose_record_did_not_land_do_not_count_a_resend_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """acme pays twice at T0 (published, 2). An hour on beta's outcome on the partition is
    read; the next tick raises acme's stream time to it, lets its window go and forgets
    its ids. The worker dies once the ids' tombstones (and the window) landed, before
    acme's record (the last send): recovered, acme has its window and its old stream
    time, and not the ids. c1 sent again by its client is counted again: 3."""
    h = Harness("raise-crash")
    await h.runner.run_batch(
        [
            h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i, produced_ms=T0 + 50)
            for i in (1, 2)
        ]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)  # published: 2
    assert _window_counts(h, T0) == [2]
    later = T0 + 60 * MIN
    h.now = (later + 1_000) / 1000
    beta = h.event(
        "payment.succeeded", PAID, cid="b1", tenant="beta", at_ms=later, produced_ms=later
    )
    await h.runner.run_batch([beta])

    # The real two-step produce, over a broker the worker dies on at the tenant records.
    fake_produce = h.runner._produce
    del h.runner._produce
    state_topic = h.state.changelog_topic.get_topic_name()
    seen_topic = h.seen.changelog_topic.get_topic_name()
    landed: list[Any] = []

    def killed_at_the_tenant_records(records: list[Any]) -> None:
        if any(r.topic == state_topic for r in records):
            raise SystemExit("worker killed")
        landed.extend(records)

    standin_broker(monkeypatch, killed_at_the_tenant_records)
    h.now += 31  # (a sweep is due)
    with pytest.raises(SystemExit):
        await h.runner.tick(lambda p: True)
    # Recovered from the changelogs: acme's record as it was, the ids as they landed.
    for rec in landed:
        if rec.topic == seen_topic and rec.value is None:
            del h.seen.data[json.loads(rec.key)]
    h.runner._produce = fake_produce  # type: ignore[method-assign]
    resent = later + 2 * MIN
    h.now = (resent + 1_000) / 1000
    again = h.event("payment.succeeded", PAID, cid="c1", at_ms=T0 + 1, produced_ms=resent)
    await h.runner.run_batch([again])
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert max(_window_counts(h, T0)) == 2, _window_counts(h, T0)


async def test_a_batch_retried_after_a_failed_produce_counts_its_skips_once() -> None:
    """An outcome skipped as late, its batch's produce failing twice (the broker
    unreachable) before it is stored: paystream_insights_skipped_total{why="late"} rises
    by 3 for one outcome (the alert PaystreamInsightsSkipped says 3 were not counted)."""
    h = Harness("skip-retry")
    h.now = (T0 + 30 * MIN) / 1000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded",
                PAID,
                cid="live",
                at_ms=T0 + 30 * MIN,
                produced_ms=T0 + 30 * MIN,
            )
        ]
    )
    late = h.event("payment.succeeded", PAID, cid="old", at_ms=T0, produced_ms=T0 + 30 * MIN + 5)
    before = SKIPPED.labels("late")._value.get()
    h.fail_next = 2
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await h.runner.run_batch([late])
    await h.runner.run_batch([late])
    assert SKIPPED.labels("late")._value.get() - before == 1


async def test_a_quiet_tenant_s_ids_go_once_its_raise_is_in_its_record() -> None:
    """(Control for the fix: without a crash, the resend is late and acme's ids are
    forgotten, a sweep after the raise is written.)"""
    h = Harness("raise-ok")
    await h.runner.run_batch(
        [
            h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i, produced_ms=T0 + 50)
            for i in (1, 2)
        ]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    later = T0 + 60 * MIN
    h.now = (later + 1_000) / 1000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded", PAID, cid="b1", tenant="beta", at_ms=later, produced_ms=later
            )
        ]
    )
    for _ in range(2):
        h.now += 31
        await h.runner.tick(lambda p: True)
    assert not [k for k in h.seen.data.data if str(k).startswith("acme:")]
    h.now += 60
    again = h.event(
        "payment.succeeded", PAID, cid="c1", at_ms=T0 + 1, produced_ms=int(h.now * 1000)
    )
    await h.runner.run_batch([again])
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert max(_window_counts(h, T0)) == 2, _window_counts(h, T0)


async def test_a_command_dated_over_a_horizon_after_its_record_does_not_make_a_backlog_late() -> (
    None
):
    """As test_one_command_dated_ahead_in_a_backlog_does_not_make_the_rest_late, the
    client 40 minutes ahead, the backlog read an hour late. Live, that outcome is skipped
    as future (over the horizon ahead) and moves nothing. Read late it is not future by
    the worker's clock, and the horizon floor makes its record time `time - horizon`:
    stream time jumps 25 minutes and the six after it are skipped as late."""
    counts = await read_late_with_one_dated_ahead(Harness("ahead-40"), 3, 40 * MIN, T0 + 60 * MIN)
    assert counts[-1:] == [9], counts


async def test_late_counts_outcomes_within_the_horizon_the_fraud_rules_saw() -> None:
    """(The PaystreamInsightsSkipped text.) 10 s windows (`paystream dev`): 70 windows of
    live traffic, then five declines of one customer 11 minutes old (within the 15-minute
    horizon; a parked command replayed): their window made way for newer ones (64 kept),
    so `late` rises by 5, yet the fraud rules counted them (an alert). The alert says
    late ones are "not counted in the analytics windows and fraud rules" and are "dated
    more than PAYSTREAM_INSIGHTS_HORIZON_SECONDS before the tenant's other outcomes"."""
    from paystream.agents.insights import config_from
    from paystream.insights.events import ALERT_TYPE
    from paystream.settings import CloudEventsMode, Settings

    h = Harness("late-text")
    h.runner.config = config_from(
        Settings(cloudevents_mode=CloudEventsMode.BINARY, insights_window_seconds=10)  # type: ignore[call-arg]
    )
    for s in range(70):
        t = T0 + s * 10_000
        h.now = (t + 500) / 1000
        await h.runner.run_batch(
            [h.event("payment.succeeded", PAID, cid=f"p{s}", at_ms=t, produced_ms=t)]
        )
        h.now += 6
        await h.runner.tick(lambda p: True)
    before = SKIPPED.labels("late")._value.get()
    now = int(h.now * 1000)
    await h.runner.run_batch(
        [
            h.event(
                "payment.failed", DECLINE, cid=f"d{i}", at_ms=now - 11 * MIN + i, produced_ms=now
            )
            for i in range(5)
        ]
    )
    assert SKIPPED.labels("late")._value.get() - before == 5
    assert [a.get_data()["rule"] for a in h.of_type(ALERT_TYPE)] == ["subject_declines"]


async def test_the_dashboard_shows_no_window_of_a_partition_moved_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dashboard's "Latest analytics window" and fraud alerts are "per tenant of this
    worker's partitions": acme's partition moved to another worker (which shows them
    too), this one kept showing acme's last window and alerts for good."""
    standin_broker(monkeypatch)
    h = Harness("dash-moved")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)
    paid = h.event("payment.succeeded", PAID, cid="c1")
    declines = [h.event("payment.failed", DECLINE, cid=f"d{i}") for i in range(5)]
    await h.runner.run_batch([paid, *declines])  # a fraud alert too
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    shown = h.runner.as_json()
    assert shown["windows"]["acme"]["events"] == 6, shown
    assert [a["tenant_id"] for a in shown["alerts"]] == ["acme"]
    h.now += 2
    await h.runner.tick(lambda p: False)  # partition 0 is another worker's now
    h.now += 2
    await h.runner.tick(lambda p: False)
    shown = h.runner.as_json()
    assert "acme" not in shown["windows"] and shown["alerts"] == []
