"""Stream-time rules the insights suite did not pin (mutation testing of the stream-time
change): each test names its rule and was checked to fail with that rule broken."""

from __future__ import annotations

import pytest

from paystream.insights.events import ALERT_TYPE
from paystream.insights.observe import Observed
from paystream.insights.state import WINDOWS_MAX, InsightsConfig, TenantInsights
from tests.insights.standin_broker import standin_broker
from tests.insights.test_counting_edges import _window_counts
from tests.insights.test_runner import DECLINE, PAID, T0, Harness
from tests.insights.test_stream_time_client_clocks import read_late_with_one_dated_ahead

MIN = 60_000
CFG = InsightsConfig()


def _seen(at: int) -> Observed:
    return Observed(event_id=f"e{at}", tenant_id="acme", outcome="payment.succeeded", time_ms=at)


@pytest.mark.asyncio
async def test_a_future_command_does_not_move_a_new_tenant_s_stream_time() -> None:
    """Rule: an outcome whose command is dated in the future (by the worker's clock) does
    not advance stream time (`is_future` checked before `advance`). A new tenant's
    backlog, read 30 minutes late, starts with a command its client dated 50 minutes
    ahead of its record: believed a horizon before its time (the tenant has no stream
    time to be in line with) and cut to the clock, it would move stream time 30 minutes
    past the rest of the backlog, and the nine after it would be late."""
    counts = await read_late_with_one_dated_ahead(
        Harness("future-first"), 0, 50 * MIN, T0 + 30 * MIN
    )
    assert counts[-1:] == [9], counts


@pytest.mark.asyncio
async def test_a_record_time_just_behind_stream_time_is_in_line() -> None:
    """Rule: a record time up to a horizon *before* the tenant's stream time is in line
    (believed as is, whatever its command's time), not only one at or after it. The
    processors producing to one partition have clocks a few ms apart, so record times are
    not strictly increasing. A backlog read an hour late; the fourth record's time is
    40 ms behind the third's and its client dated the command 40 minutes ahead: taken as
    out of line, it is believed a horizon before its command's time and moves stream
    time 25 minutes past the rest, and the six after it are late."""
    h = Harness("skewed-producer")
    events = [
        h.event(
            "payment.succeeded",
            PAID,
            cid=f"c{i}",
            at_ms=T0 + i + (40 * MIN if i == 3 else 0),
            produced_ms=T0 + 10 if i == 3 else T0 + i + 50,
        )
        for i in range(10)
    ]
    h.now = (T0 + 60 * MIN) / 1000
    await h.runner.run_batch(events)
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0)[-1:] == [9], _window_counts(h, T0)


def test_an_outcome_older_than_every_kept_window_does_not_evict_a_newer_one() -> None:
    """Rule: to make room, `has_room` lets go only a published window *older* than the
    outcome's. A full record (64 published windows) and an outcome a minute before all
    of them: no room (counted as late), nothing let go. Letting the oldest kept window go
    for it would move `evicted_through` past the outcome's own window: a newer window's
    later outcomes late, an older one's counted."""
    st = TenantInsights("acme")
    for m in range(1, WINDOWS_MAX + 1):
        st.windows[str(T0 + m * MIN)] = {"events": 1, "emitted": 1}
    kept = dict(st.windows)
    assert not st.has_room(_seen(T0 + 30_000), CFG)
    assert st.windows == kept
    assert st.evicted_through == -1


@pytest.mark.asyncio
async def test_declines_one_a_batch_with_far_past_record_times_alert() -> None:
    """Rule: the fraud rules' time is the record time, but not more than a horizon before
    the command's time (`rules_at`). A producer whose clock is far behind (record time
    1970), five declines of one customer, each in its own batch: counted in a 1970 fraud
    window, each batch's expiry (by stream time) lets that window go and the next decline
    finds it let go: no alert ever fires."""
    h = Harness("past-fraud-one-a-batch")
    for i in range(5):
        h.now = (T0 + i * 1_000 + 500) / 1000
        decline = h.event(
            "payment.failed", DECLINE, cid=f"d{i}", at_ms=T0 + i * 1_000, produced_ms=1_000
        )
        await h.runner.run_batch([decline])
    alerts = [a.get_data()["rule"] for a in h.of_type(ALERT_TYPE)]
    assert alerts.count("subject_declines") == 1, alerts


@pytest.mark.asyncio
async def test_a_counted_id_is_kept_while_its_window_s_outcomes_are_not_late() -> None:
    """Rule: a counted id is forgotten a horizon *and a window* behind stream time (ids
    are kept by their window's start; an outcome is late by its own time, up to a window
    after it). c1 at 59 s into its minute is counted; stream time moves to 15.5 minutes
    on, a sweep runs: by the window's start alone c1's id would go while c1 is not late
    (59 s > 30 s), and c1 sent again by its client would be counted twice."""
    h = Harness("id-margin")
    at = T0 + 59_000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c1", at_ms=at, produced_ms=at)]
    )
    later = T0 + 15 * MIN + 30_000
    h.now = (later + 100) / 1000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c2", at_ms=later, produced_ms=later)]
    )
    h.now += 31  # (a sweep is due)
    await h.runner.tick(lambda p: True)
    again = h.event("payment.succeeded", PAID, cid="c1", at_ms=at, produced_ms=later + 200)
    await h.runner.run_batch([again])
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert max(_window_counts(h, T0)) == 1, _window_counts(h, T0)


@pytest.mark.asyncio
async def test_a_sweep_leaves_the_ids_of_partitions_this_worker_does_not_have() -> None:
    """Rule: the tick forgets counted ids only of the partitions this worker has. beta's
    ids on partition 1 (a standby copy here) are judged by the clock, beta's stream time
    being another worker's: an hour on they would be deleted (tombstones on a partition
    this worker does not own), and a resend in beta's backlog counted again."""
    h = Harness("not-owned-ids")
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="b1", tenant="beta", partition=1, at_ms=T0)]
    )
    assert [k for k in h.seen.data.data if str(k).startswith("beta:")]
    h.now = (T0 + 60 * MIN) / 1000
    await h.runner.tick(lambda p: p == 0)
    assert [k for k in h.seen.data.data if str(k).startswith("beta:")]


@pytest.mark.asyncio
async def test_a_full_record_mid_batch_publishes_only_windows_stream_time_closed() -> None:
    """Rule: when a record is full mid-batch, windows are published as closed by stream
    time (capped at the clock), not by the worker's clock. A backlog of 90 minutes read
    two hours late in one batch, two outcomes a minute, the second from a client 30 s
    behind (read after the next minute's first): once 64 windows are open, by the clock
    the 64th would be published with one outcome and again with two."""
    h = Harness("full-mid-batch")
    await h.runner.tick(lambda p: True)  # (the takeover's, before any outcome)
    events = []
    for m in range(90):
        at = T0 + m * MIN
        events.append(h.event("payment.succeeded", PAID, cid=f"a{m}", at_ms=at, produced_ms=at))
        if m:
            events.append(
                h.event(
                    "payment.succeeded",
                    PAID,
                    cid=f"b{m}",
                    at_ms=at - 30_000,
                    produced_ms=at + 10,
                )
            )
    h.now = (T0 + 120 * MIN) / 1000
    await h.runner.run_batch(events)
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0 + 63 * MIN) == [2]


@pytest.mark.asyncio
async def test_the_dashboard_shows_a_window_republished_with_its_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rule: the dashboard's latest window of a tenant is replaced by a later publication
    of the same window (`<=`, not `<`): a window published with one outcome and again,
    updated, with two, would be shown with one for good."""
    standin_broker(monkeypatch)
    h = Harness("dash-update")
    del h.runner._produce  # the real one (it keeps what the dashboard shows)
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="c1")])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    assert h.runner.as_json()["windows"]["acme"]["events"] == 1
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c2", at_ms=T0 + 5, produced_ms=T0 + 70_000)]
    )
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert h.runner.as_json()["windows"]["acme"]["events"] == 2


@pytest.mark.asyncio
async def test_a_tick_gives_a_record_of_the_version_without_stream_time_the_clock() -> None:
    """Rule: a record without `stream` (the previous version's, which let its windows and
    ids go by the clock) loads with the worker's clock as its stream time in the tick too,
    not only in a batch. Loaded as a new tenant's (none) and written back by the first
    tick after the upgrade, the record lost what it was judged by: a resend of c1, whose
    window and id the old version let go by the clock 20 minutes on, is believed (its own
    time, a horizon ahead at most) and counted in a window made again from nothing."""
    h = Harness("old-record-tick")
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i) for i in (1, 2, 3)]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3]
    # As the previous version left it 20 minutes on: window and ids let go by the clock.
    old = {k: v for k, v in h.state.get("acme").items() if k != "stream"}
    old["windows"] = {}
    h.runner._write(h.state, "acme", old, 0)
    for key in [k for k in h.seen.data.data if str(k).startswith("acme:")]:
        h.runner._write(h.seen, key, None, 0)
    h.now = (T0 + 20 * MIN) / 1000
    await h.runner.tick(lambda p: True)  # the upgraded worker's first tick
    again = h.event(
        "payment.succeeded", PAID, cid="c1", at_ms=T0 + 1, produced_ms=int(h.now * 1000)
    )
    await h.runner.run_batch([again])
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3], _window_counts(h, T0)


@pytest.mark.asyncio
async def test_a_quiet_tenant_is_raised_only_to_its_own_partition_s_stream_time() -> None:
    """Rule: the tick raises a quiet tenant's stream time to the latest of the tenants on
    *its* partition (read in order with its own), not of every partition. acme's
    partition is read 30 minutes late (the ledger's database was down for it), beta's
    partition is live: raised to beta's time, acme's windows would be let go and the
    rest of its backlog, read next, skipped as late."""
    h = Harness("raise-own-partition")
    h.now = (T0 + 30 * MIN) / 1000
    first = [
        h.event(
            "payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i * MIN, produced_ms=T0 + i * MIN
        )
        for i in range(3)
    ]
    live = h.event(
        "payment.succeeded",
        PAID,
        cid="b1",
        tenant="beta",
        partition=1,
        at_ms=T0 + 30 * MIN,
        produced_ms=T0 + 30 * MIN,
    )
    await h.runner.run_batch([*first, live])
    await h.runner.tick(lambda p: True)
    rest = [
        h.event(
            "payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i * MIN, produced_ms=T0 + i * MIN
        )
        for i in range(3, 6)
    ]
    h.now += 2
    await h.runner.run_batch(rest)
    h.now += 2
    await h.runner.tick(lambda p: True)
    counted = [max(_window_counts(h, T0 + i * MIN) or [0]) for i in range(6)]
    assert counted == [1] * 6, counted


@pytest.mark.asyncio
async def test_a_batch_publishes_no_window_the_worker_s_clock_has_not_closed() -> None:
    """Rule: a batch publishes windows closed by stream time, but never past the worker's
    clock. acme's record holds a stream time 3 minutes ahead of this worker's clock
    (written by a worker whose clock ran ahead, before the partition moved here): by
    stream time alone, the minute still under way would be published with 2 outcomes
    of however many it gets."""
    h = Harness("clock-cap")
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="c1", at_ms=T0 + 1)])
    ahead = dict(h.state.get("acme"), stream=T0 + 3 * MIN)
    h.runner._write(h.state, "acme", ahead, 0)
    h.now = (T0 + 2_000) / 1000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c2", at_ms=T0 + 2_000, produced_ms=T0 + 2_000)]
    )
    assert _window_counts(h, T0) == []


@pytest.mark.asyncio
async def test_a_quiet_tenant_s_ids_go_by_the_stream_time_its_record_keeps() -> None:
    """Rule: the tick forgets a quiet tenant's counted ids by the stream time its record
    keeps, not by the partition's raise when that raise let nothing go (and so is not
    written). acme's four declines of one customer (their window let go to keep the
    record at 64 windows), beta read 20 minutes on: by the raise the ids go, acme's
    stream time stays, and a client's resend of a decline (not late by it) is counted
    again by the fraud rules: a fifth decline, a false alert."""
    h = Harness("ids-by-kept-stream")
    await h.runner.run_batch(
        [
            h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=T0 + i * 1_000, produced_ms=T0)
            for i in range(4)
        ]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    let_go = dict(h.state.get("acme"), windows={}, evicted=T0)  # (for room, by has_room)
    h.runner._write(h.state, "acme", let_go, 0)
    later = T0 + 20 * MIN
    h.now = (later + 1_000) / 1000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded", PAID, cid="b1", tenant="beta", at_ms=later, produced_ms=later
            )
        ]
    )
    h.now += 31  # (a sweep is due)
    await h.runner.tick(lambda p: True)
    assert h.state.get("acme")["stream"] == T0
    assert len([k for k in h.seen.data.data if str(k).startswith("acme:")]) == 4
    again = h.event("payment.failed", DECLINE, cid="d3", at_ms=T0 + 3_000, produced_ms=T0 + MIN)
    await h.runner.run_batch([again])
    assert not h.of_type(ALERT_TYPE)


async def test_declines_with_far_past_record_times_across_batches_alert_once() -> None:
    """The fraud rules' time is at least a horizon before stream time: a client 12
    minutes behind whose records carry a 1970 time (a producer's broken clock), one
    decline a batch amid live traffic, had each decline's fraud window let go by stream
    time at its batch's end, and the next found it gone: five declines, no alert (the
    same declines with ordinary record times: one). Mutation review finding."""
    h = Harness("far-past-spread")
    for b in range(5):
        now = T0 + b * 1_000 + 500
        h.now = now / 1000
        live = h.event(
            "payment.succeeded", PAID, cid=f"p{b}", at_ms=T0 + b * 1_000, produced_ms=T0 + b * 1_000
        )
        decline = h.event(
            "payment.failed",
            DECLINE,
            cid=f"d{b}",
            at_ms=T0 - 12 * MIN + b * 1_000,
            produced_ms=1_000,
        )
        await h.runner.run_batch([live, decline])
    assert [a.get_data()["rule"] for a in h.of_type(ALERT_TYPE)] == ["subject_declines"]
