"""Stream time against clients' clocks: a command's `time` is its client's (any year up
to 9999 is accepted). Review of the stream-time change, second round: each docstring
says what happened before its fix (stream time took the command's time as the lower
bound of the record's; a fraud window let go by stream time was made again; a batch
spanning over 64 windows had no room)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.insights.events import ALERT_TYPE
from paystream.streams.codec import decode_record
from tests.insights.test_counting_edges import _window_counts
from tests.insights.test_runner import DECLINE, END_OF_TIME, PAID, T0, Harness

pytestmark = pytest.mark.asyncio

MIN = 60_000


async def read_late_with_one_dated_ahead(
    h: Harness, index: int, ahead_ms: int, read_at_ms: int
) -> list[int]:
    """Ten payments of one minute, the ``index``-th's command dated ``ahead_ms`` ahead by
    its client, read in one batch at ``read_at_ms`` (a backlog); the counts its window was
    published with."""
    events = [
        h.event(
            "payment.succeeded",
            PAID,
            cid=f"c{i}",
            at_ms=T0 + i + (ahead_ms if i == index else 0),
            produced_ms=T0 + i + 50,
        )
        for i in range(10)
    ]
    h.now = read_at_ms / 1000
    await h.runner.run_batch(events)
    await h.runner.tick(lambda p: True)
    return _window_counts(h, T0)


@pytest.mark.parametrize("ahead_ms", [END_OF_TIME - T0, 20 * MIN])
async def test_one_command_dated_ahead_in_a_backlog_does_not_make_the_rest_late(
    ahead_ms: int,
) -> None:
    """Ten outcomes of one minute read late (the ledger's database was down); the fourth's
    command is dated ahead by its client (year 9999, or 20 minutes: skipped as future
    when read live). Its time is taken as when it was produced: stream time jumps to
    the worker's clock and the six after it are skipped as late."""
    counts = await read_late_with_one_dated_ahead(
        Harness(f"ahead-{ahead_ms}"), 3, ahead_ms, T0 + 30 * MIN
    )
    assert counts[-1:] == [9], counts


async def test_a_client_clocked_ahead_within_the_horizon_does_not_make_another_tenant_late() -> (
    None
):
    """One partition, its backlog read 30 minutes late in two batches (a tick between).
    beta's client is 14 minutes ahead (within the horizon: counted live, and harmless,
    stream time being cut to the clock). Read late, beta's stream time is 14 minutes
    past what was read; the tick raises acme's to it, and acme's next outcome, from a
    client 3 minutes behind (counted when read live), is skipped as late."""
    h = Harness("ahead-cross")
    first = [
        h.event(
            "payment.succeeded",
            PAID,
            cid=f"a{i}",
            at_ms=T0 + i * MIN,
            produced_ms=T0 + i * MIN + 50,
        )
        for i in range(4)
    ]
    first.append(
        h.event(
            "payment.succeeded",
            PAID,
            cid="b0",
            tenant="beta",
            at_ms=T0 + 3 * MIN + 14 * MIN,
            produced_ms=T0 + 3 * MIN + 100,
        )
    )
    behind = h.event(
        "payment.succeeded", PAID, cid="a9", at_ms=T0 + MIN + 500, produced_ms=T0 + 4 * MIN
    )
    h.now = (T0 + 30 * MIN) / 1000
    await h.runner.tick(lambda p: True)  # (the first tick: a takeover, nothing yet)
    h.now += 2
    await h.runner.run_batch(first)
    await h.runner.tick(lambda p: True)
    h.now += 2
    await h.runner.run_batch([behind])
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0 + MIN)[-1:] == [2], _window_counts(h, T0 + MIN)


async def test_a_batch_counted_again_after_a_failed_produce_counts_the_same_outcomes() -> None:
    """Read live: a payment of a client 14 minutes ahead (counted: within the horizon),
    five declines of a client 5 minutes behind (counted, an alert). The produce fails
    after the ids and the alert landed, not the tenant record (the broker unreachable);
    the batch is counted again 12 minutes on. Stream time was cut to the clock at the
    first count, not at the second: the declines are now skipped as late, the tenant's
    record keeps none of what was published."""

    h = Harness("redo-ahead")
    h.now = (T0 + 1_000) / 1000
    ahead = h.event("payment.succeeded", PAID, cid="x", at_ms=T0 + 14 * MIN, produced_ms=T0 + 500)
    behind = [
        h.event(
            "payment.failed", DECLINE, cid=f"d{i}", at_ms=T0 - 5 * MIN + i, produced_ms=T0 + 600
        )
        for i in range(5)
    ]
    calls = 0

    async def produce(records: list[Any], out: list[Any], batch: Any) -> None:
        nonlocal calls
        calls += 1
        h.published += [decode_record(r.key, r.value, dict(r.headers)) for _, r in out]
        if calls == 1:  # the ids and the alert landed; the tenant record did not
            raise TimeoutError("tenant record not durable")

    h.runner._produce = produce  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await h.runner.run_batch([ahead, *behind])
    h.now = (T0 + 12 * MIN) / 1000  # counted again once the broker answers
    await h.runner.run_batch([ahead, *behind])
    window = h.state.get("acme")["windows"].get(str(T0 - 5 * MIN))
    assert window is not None and window["events"] == 5, h.state.get("acme")


async def test_declines_of_a_client_behind_with_far_past_record_times_alert_once() -> None:
    """As test_declines_with_far_past_record_times_alert_once, the client's clock 12
    minutes behind (counted: within the horizon), the tenant's other traffic live: the
    fraud rules' time, cut to the command's time less the horizon, falls in a fraud window
    that stream time lets go after each batch (expire() does not move
    fraud_evicted_through), and the next batch makes it again from nothing."""
    h = Harness("behind-fraud")
    for b in range(2):
        h.now = (T0 + b * 1_000 + 500) / 1000
        live = h.event(
            "payment.succeeded", PAID, cid=f"p{b}", at_ms=T0 + b * 1_000, produced_ms=T0 + b * 1_000
        )
        declines = [
            h.event(
                "payment.failed",
                DECLINE,
                cid=f"d{b}{i}",
                at_ms=T0 - 12 * MIN + b * 1_000 + i,
                produced_ms=1_000,
            )
            for i in range(5)
        ]
        await h.runner.run_batch([live, *declines])
    alerts = [a.get_data()["rule"] for a in h.of_type(ALERT_TYPE)]
    assert alerts.count("subject_declines") == 1, alerts


async def test_a_quiet_tenant_s_backlog_of_over_an_hour_read_in_one_batch_is_counted() -> None:
    """One outcome a minute for 90 minutes, read in one batch (the ledger sink's batches
    hold up to 500) after the ledger's database was down two hours. Live, each window is
    published and let go as the next come; in one batch none is published until its
    end, so once 64 windows are open every later outcome finds no room: skipped as late."""
    h = Harness("hour-backlog")
    events = [
        h.event(
            "payment.succeeded",
            PAID,
            cid=f"c{m}",
            at_ms=T0 + m * MIN,
            produced_ms=T0 + m * MIN + 50,
        )
        for m in range(90)
    ]
    h.now = (T0 + 120 * MIN) / 1000
    await h.runner.run_batch(events)
    h.now += 2
    await h.runner.tick(lambda p: True)
    counted = {w.get_data()["window_start"]: w.get_data()["events"] for w in h.published}
    assert sum(counted.values()) == 90, (len(counted), sum(counted.values()))
