"""Outcomes the insights counted twice, or not at all, and a record that outgrew a
message (review findings, each failing before its fix)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.agents.insights import InsightsRunner, config_from
from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE
from paystream.settings import CloudEventsMode, Settings
from paystream.streams.codec import KafkaRecord, decode_record
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness as PipelineHarness
from tests.agents.harness import data, kind
from tests.agents.test_let_through import _parked_after_a_charge, _record
from tests.insights.test_runner import DECLINE, END_OF_TIME, PAID, T0, Harness, _Event, _Msg

pytestmark = pytest.mark.asyncio


async def _answered_by_another(harness: PipelineHarness) -> list[KafkaRecord]:
    """The outcomes of c2 (p1's resend) and of c1 (p1's create, parked after its charge,
    re-driven after c2 ran)."""
    t, _ = await _parked_after_a_charge(harness)  # c1 charged p1, its answer lost: parked
    emits = await harness.processor.process(_record(t, "c2"))
    emits += await harness.processor.process(_record(t))  # c1 re-driven
    return [e.record for e in emits if e.topic == harness.settings.events_topic]


async def test_a_create_answered_by_its_resend_is_not_counted_twice(redis_url: str) -> None:
    """A parked create re-driven after its resend ran is answered with the resend's
    payment (`answered_by`): one charge, which the windows counted twice."""
    async with running_harness(redis_url) as harness:
        records = await _answered_by_another(harness)
    decoded = [decode_record(r.key, r.value, dict(r.headers)) for r in records]
    at_ms = int(decoded[0].get_time().timestamp() * 1000)
    assert [kind(e) for e in decoded] == ["payment.succeeded", "payment.succeeded"]
    assert data(decoded[1])["answered_by"] == "c2"
    ins = Harness("answered")
    ins.runner.tenants = {str(decoded[0].get_extension("tenantid")): object()}
    events = [
        _Event(_Msg(r.key, r.value, list(r.headers), 0, offset))
        for offset, r in enumerate(records, start=1)
    ]
    ins.now = at_ms / 1000
    await ins.runner.run_batch(events)
    ins.now = (at_ms + 3 * 60_000) / 1000
    await ins.runner.tick(lambda p: True)
    [window] = ins.of_type(WINDOW_TYPE)
    assert window.get_data()["money"]["USD"]["captured"] == 5000
    assert window.get_data()["events"] == 1


@pytest.mark.parametrize("length", [160, 255])
async def test_fraud_subjects_at_their_bounds_keep_the_record_within_a_message(
    length: int,
) -> None:
    """2,000 distinct subjects a fraud window, ids of up to 255 characters, over the
    horizon's three fraud windows: the names alone outgrew the broker's message size
    (the harness refuses records of 1 MB or more)."""
    h = Harness("subjects")
    fw = h.runner.config.fraud_window_ms
    n = 0
    for w in range(3):
        h.now = (T0 + w * fw + 1_000) / 1000
        batch = []
        for _ in range(1_000):
            n += 1
            obj = {
                **DECLINE["object"],
                "customer_id": f"{n:06d}".ljust(length, "c"),
                "payment_method_id": f"{n:06d}".ljust(length, "m"),
            }
            batch.append(
                h.event(
                    "payment.failed", {**DECLINE, "object": obj}, cid=f"d{n}", at_ms=T0 + w * fw
                )
            )
        await h.runner.run_batch(batch)


async def test_a_client_clocked_ahead_does_not_crowd_the_present_out() -> None:
    """Short windows, the default horizon: outcomes dated up to the horizon ahead filled
    every window kept, and the present's were skipped, fraud rules and all."""
    h = Harness("crowded")
    cfg = Settings(cloudevents_mode=CloudEventsMode.BINARY, insights_window_seconds=10)  # type: ignore[call-arg]
    h.runner.settings, h.runner.config = cfg, config_from(cfg)
    for n, second in enumerate(range(0, 700, 10)):  # the skewed client: 890 s ahead
        h.now = (T0 + second * 1000) / 1000
        at = T0 + second * 1000 + 890_000
        await h.runner.run_batch([h.event("payment.succeeded", PAID, cid=f"a{n}", at_ms=at)])
    at = int(h.now * 1000)  # a card tester, through the tenant's correctly clocked server
    await h.runner.run_batch(
        [h.event("payment.failed", DECLINE, cid=f"t{i}", at_ms=at + i) for i in range(5)]
    )
    assert len(h.of_type(ALERT_TYPE)) == 1
    h.now = (at + 20_000) / 1000
    await h.runner.tick(lambda p: True)
    present = [w for w in h.of_type(WINDOW_TYPE) if w.get_data()["outcomes"].get("payment.failed")]
    assert present and present[0].get_data()["events"] == 5


async def test_outcomes_of_a_backlog_are_counted_when_it_is_read() -> None:
    """The insights share their agent with the ledger sink, which holds a batch while
    PostgreSQL is down: read 16 minutes late, every outcome was skipped as late."""
    h = Harness("backlog")
    batch = [
        h.event("payment.failed", DECLINE, cid=f"c{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(5)
    ]
    h.now = (T0 + 16 * 60_000) / 1000  # the ledger's database came back
    await h.runner.run_batch(batch)
    await h.runner.tick(lambda p: True)
    assert len(h.of_type(ALERT_TYPE)) == 1
    windows = h.of_type(WINDOW_TYPE)  # (published again by the tick: the same event)
    assert windows and {(w.get_id(), w.get_data()["events"]) for w in windows} == {
        (windows[0].get_id(), 5)
    }


async def test_a_backlog_read_in_two_batches_counts_each_window_once() -> None:
    """Five outcomes of one minute read 17 minutes late, in two batches: judged late by
    when they were produced (this session, reverted), the first batch's window was
    published and expired, and the second made it again from nothing (published as 3,
    then 2: consumers keep 3). Review finding. By stream time (expiry too), and closed
    by it as the batches are read: counted, and published once, with the five."""
    h = Harness("backlog2")
    events = [
        h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(5)
    ]
    h.now = (T0 + 17 * 60_000) / 1000
    await h.runner.run_batch(events[:3])
    await h.runner.run_batch(events[3:])
    await h.runner.tick(lambda p: True)
    counts = {w.get_id(): w.get_data()["events"] for w in h.of_type(WINDOW_TYPE)}
    assert list(counts.values()) == [5], counts


async def test_a_decline_re_emitted_in_a_backlog_does_not_fire_a_false_alert() -> None:
    """Four declines of one customer (the rule fires at five), one re-emitted a minute
    later (the same event id) and read after a 20-minute ledger outage, once its id was
    forgotten: judged by when it was produced, it was counted again. Review finding."""
    h = Harness("reemit-fraud")
    declines = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(4)
    ]
    h.now = (T0 + 100) / 1000
    await h.runner.run_batch(declines)
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    assert h.of_type(ALERT_TYPE) == []
    again = h.event("payment.failed", DECLINE, cid="d0", at_ms=T0, produced_ms=T0 + 60_000)
    h.now = (T0 + 20 * 60_000) / 1000
    other = h.event("payment.succeeded", PAID, cid="c9", at_ms=T0 + 19 * 60_000,
                    produced_ms=T0 + 19 * 60_000, tenant="beta", partition=1)  # fmt: skip
    await h.runner.run_batch([other])
    await h.runner.tick(lambda p: True)
    await h.runner.run_batch([again])
    assert h.of_type(ALERT_TYPE) == [], [a.get_data() for a in h.of_type(ALERT_TYPE)]


def _window_counts(h: Harness, start_ms: int) -> list[int]:
    """The `events` of each publication of the window starting at ``start_ms``, in order."""
    iso = datetime.fromtimestamp(start_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    return [
        w.get_data()["events"]
        for w in h.of_type(WINDOW_TYPE)
        if w.get_data()["window_start"] == iso
    ]


async def test_a_backlog_read_late_with_a_tick_between_its_batches_updates_its_window() -> None:
    """Five outcomes of one minute read 17 minutes late in two batches, the worker's
    tick between them (it publishes closed windows by the clock): the window published
    with the first batch's three is updated to five by the second, never made again
    from its two (consumers keep the publication with the most: five)."""
    h = Harness("backlog-tick")
    events = [
        h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i, produced_ms=T0 + i + 50)
        for i in range(5)
    ]
    h.now = (T0 + 17 * 60_000) / 1000
    await h.runner.run_batch(events[:3])
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3]
    h.now += 2
    await h.runner.run_batch(events[3:])
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3, 5]
    assert h.state.get("acme")["windows"][str(T0)]["events"] == 5
    h.now += 2  # nothing more to publish: the same figures are not published again
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3, 5]


async def test_a_forged_far_future_record_time_does_not_make_the_present_late() -> None:
    """A producer sets its record's time: an outcome forged with one in year 9999 moved
    stream time there, and every later outcome was late, every window expired. Stream
    time moves no further than the worker's clock."""
    h = Harness("forged-time")
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i) for i in range(3)]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3]
    forged = h.event(
        "payment.succeeded", PAID, cid="forged", at_ms=T0 + 65_000, produced_ms=END_OF_TIME
    )
    await h.runner.run_batch([forged])
    assert h.state.get("acme")["windows"][str(T0)]["events"] == 3  # not expired
    h.now = (T0 + 80_000) / 1000
    late = h.event(
        "payment.succeeded", PAID, cid="late", at_ms=T0 + 30_000, produced_ms=T0 + 75_000
    )
    present = h.event(
        "payment.failed", DECLINE, cid="now", at_ms=T0 + 79_000, produced_ms=T0 + 79_500
    )
    await h.runner.run_batch([late, present])
    h.now = (T0 + 200_000) / 1000
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3, 4]
    assert _window_counts(h, T0 + 60_000) == [2]  # the forged outcome and the present's
    assert h.state.get("acme")["stream"] <= T0 + 80_000


async def test_a_record_of_the_version_without_stream_time_loads_and_counts() -> None:
    """A record written before stream time was kept (no `stream`): it loads, counts, and
    from then on lateness goes by stream time (a backlog read 17 minutes on counts)."""
    h = Harness("old-record")
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + i) for i in range(3)]
    )
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    old = {k: v for k, v in h.state.get("acme").items() if k != "stream"}
    h.runner._write(h.state, "acme", old, 0)  # as the previous version wrote it
    h.now = (T0 + 120_000) / 1000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c3", at_ms=T0 + 10_000, produced_ms=T0 + 20_000)]
    )
    assert h.state.get("acme")["stream"] == T0 + 120_000  # the clock when loaded
    assert _window_counts(h, T0) == [3, 4]
    h.now = (T0 + 17 * 60_000) / 1000  # a tick while the next outcomes are held back
    await h.runner.tick(lambda p: True)
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="c4", at_ms=T0 + 20_000, produced_ms=T0 + 90_000)]
    )
    h.now += 2
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0) == [3, 4, 5]


async def test_a_new_tenants_client_clock_ahead_does_not_make_a_backlog_late() -> None:
    """Partition 0 read 70 minutes late; in the backlog, a new tenant's first outcome,
    its client's clock an hour ahead. With no stream time of its own it believed its
    command's time less a horizon, 45 minutes on, and the tick moved acme (quiet, same
    partition) there: acme's other outcomes of T0 were then late, its window 3 of 6
    (review finding). A tenant with none is held against its partition's."""
    minute = 60_000
    h = Harness("newahead")
    h.now = (T0 + 70 * minute) / 1000

    def acme(i: int) -> Any:
        return h.event(
            "payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i, produced_ms=T0 + i + 50
        )

    first = [acme(i) for i in range(3)]
    first.append(
        h.event("payment.succeeded", PAID, cid="b0", tenant="beta",
                at_ms=T0 + 60 * minute + 10, produced_ms=T0 + 60)
    )  # fmt: skip
    await h.runner.run_batch(first)
    await h.runner.tick(lambda p: True)
    h.now += 2
    await h.runner.run_batch([acme(i) for i in range(3, 6)])
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0)[-1:] == [6]


async def test_a_new_tenants_client_clock_ahead_after_a_restart_does_not_make_a_backlog_late() -> (
    None
):
    """The same, with the worker restarted between acme's outcomes and beta's first: the
    new worker had read nothing of partition 0, and held beta against nothing. It now
    reads the partition's stream time from the partition's record, so a batch is judged
    the same after a restart (or a crash's redelivery) as when first read."""
    minute = 60_000
    h = Harness("newaheadrestart")
    h.now = (T0 + 70 * minute) / 1000

    def acme(i: int) -> Any:
        return h.event(
            "payment.succeeded", PAID, cid=f"a{i}", at_ms=T0 + i, produced_ms=T0 + i + 50
        )

    await h.runner.run_batch([acme(i) for i in range(3)])
    produce = h.runner._produce
    h.runner = InsightsRunner(  # the restart: the same tables, nothing read yet
        h.cfg, h.runner.tenants, h.state, h.seen, clock=lambda: h.now, settled=lambda: True
    )
    h.runner._produce = produce  # type: ignore[method-assign]
    await h.runner.run_batch(
        [
            h.event("payment.succeeded", PAID, cid="b0", tenant="beta",
                    at_ms=T0 + 60 * minute + 10, produced_ms=T0 + 60)
        ]
    )  # fmt: skip
    await h.runner.tick(lambda p: True)
    h.now += 2
    await h.runner.run_batch([acme(i) for i in range(3, 6)])
    await h.runner.tick(lambda p: True)
    assert _window_counts(h, T0)[-1:] == [6]


async def test_the_undo_of_a_failed_produce_keeps_a_rocksdb_tenant_record(tmp_path: Any) -> None:
    """The value before a write was read without its partition: a RocksDB store then
    reads the current event's (here the batch's last, another partition's) and finds
    nothing, so the undo of a failed produce deleted acme's record, and the retry counted
    its window again from nothing (review finding)."""
    import weakref

    from faust.streams import _current_event

    h = Harness("rockundo", "rocksdb://", str(tmp_path))
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="a1")])
    batch = [
        h.event("payment.succeeded", PAID, cid="a2"),
        h.event("payment.succeeded", PAID, cid="b1", tenant="beta", partition=1),
    ]
    token = _current_event.set(weakref.ref(batch[-1]))
    try:
        h.fail_next = 1
        with pytest.raises(RuntimeError):
            await h.runner.run_batch(batch)
        await h.runner.run_batch(batch)  # the retry
    finally:
        _current_event.reset(token)
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    counts = {e.get_data()["tenant_id"]: e.get_data()["events"] for e in h.of_type(WINDOW_TYPE)}
    assert counts == {"acme": 2, "beta": 1}


async def test_payments_asking_for_authentication_are_attempts_of_the_decline_burst() -> None:
    """250 creations in one window: 200 sent to 3-D Secure, 25 succeeded, 25 declined
    (10%). Only the 50 answered then counted as attempts, so the 25 declines were half:
    a card-testing alert on an ordinary SCA-heavy tenant (review finding)."""
    h = Harness("threeds")
    batch, n = [], 0
    for _ in range(25):
        for _ in range(8):
            n += 1
            waiting = {"object": {"amount": 900, "currency": "USD", "customer_id": f"c{n}"}}
            batch.append(h.event("payment.requires_action", waiting, cid=f"r{n}"))
        n += 1
        paid = {"object": {"amount": 900, "amount_captured": 900, "currency": "USD",
                           "capture_method": "automatic", "customer_id": f"c{n}"}}  # fmt: skip
        batch.append(h.event("payment.succeeded", paid, cid=f"s{n}"))
        n += 1
        declined = {
            "object": {**DECLINE["object"], "customer_id": f"c{n}"},
            "error": DECLINE["error"],
        }
        batch.append(h.event("payment.failed", declined, cid=f"d{n}"))
    await h.runner.run_batch(batch)
    assert h.of_type(ALERT_TYPE) == []
