"""The insights runner on real in-memory and RocksDB tables, a fake producer (no Kafka):
failed publications, quiet tenants, hostile outcomes, the RocksDB store."""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP

from paystream.agents.insights import InsightsRunner
from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE
from paystream.settings import CloudEventsMode, Settings
from paystream.streams.codec import decode_record
from paystream.streams.outcomes import CommandRef, encode_outcome
from paystream.tables.changelog import BatchedChangelogTable
from tests.insights.standin_broker import standin_broker

pytestmark = pytest.mark.asyncio

T0 = 1_700_000_040_000  # a window start (a multiple of 60 s)
DECLINE = {
    "object": {"amount": 500, "currency": "USD", "customer_id": "cus_1"},
    "error": {"code": "card_declined", "decline_code": "generic_decline"},
}
PAID = {"object": {"amount": 900, "amount_captured": 900, "currency": "USD"}}


@dataclass
class _Msg:
    key: bytes | None
    value: bytes | None
    headers: Any
    partition: int
    offset: int
    timestamp: float | None = None  # when the outcome was produced (s), as Faust gives it


@dataclass
class _Event:
    message: _Msg


def _settings() -> Settings:
    return Settings(cloudevents_mode=CloudEventsMode.BINARY)  # type: ignore[call-arg]


def _table(app: faust.App, name: str, topic: str) -> BatchedChangelogTable:
    table = app.tables.add(BatchedChangelogTable(app, name=name, default=None, partitions=4))
    table._verified_source_topics_for_partitions.add(topic)
    return table


class Harness:
    def __init__(self, name: str, store: str = "memory://", tabledir: str = "") -> None:
        self.cfg = _settings()
        app = faust.App(
            f"insights-{name}", broker="kafka://127.0.0.1:1", store=store, tabledir=tabledir
        )
        topic = self.cfg.events_topic
        self.state = _table(app, f"{name}-insights", topic)
        self.seen = _table(app, f"{name}-seen", topic)
        if store.startswith("rocksdb"):  # every partition this worker's
            names = (self.state.changelog_topic_name, self.seen.changelog_topic_name)
            actives = {TP(n, p) for n in names for p in range(4)}
            app.assignor.assigned_actives = lambda: actives  # type: ignore[method-assign]
        self.now = T0 / 1000 + 1
        self.runner = InsightsRunner(
            self.cfg,
            {"acme": object(), "beta": object()},
            self.state,
            self.seen,
            clock=lambda: self.now,
            settled=lambda: self.settled,
        )
        self.settled = True  # partitions assigned, tables recovered
        self.published: list[Any] = []
        self.changelog: list[Any] = []
        self.fail_next = 0
        self.offset = 0

        async def produce(records: list[Any], out: list[Any], batch: Any) -> None:
            for rec in records:  # what the broker would refuse (over 1 MB)
                assert len(rec.key or b"") + len(rec.value or b"") < 1_000_000
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("broker unreachable")
            self.changelog += records
            self.published += [decode_record(r.key, r.value, dict(r.headers)) for _, r in out]

        self.runner._produce = produce  # type: ignore[method-assign]

    def event(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        cid: str,
        at_ms: int = T0,
        partition: int = 0,
        tenant: str = "acme",
        produced_ms: int | None = None,
    ) -> _Event:
        cmd = CommandRef(
            tenant, cid, "payment.create", cid, datetime.fromtimestamp(at_ms / 1000, UTC)
        )
        rec = encode_outcome(cmd, kind, data, CloudEventsMode.BINARY)
        self.offset += 1
        produced = None if produced_ms is None else produced_ms / 1000
        return _Event(_Msg(rec.key, rec.value, list(rec.headers), partition, self.offset, produced))

    def of_type(self, kind: str) -> list[Any]:
        return [e for e in self.published if e.get_type() == kind]

    async def first_window_events(self) -> int:
        """Once the first minute's window closed: the outcomes it counted (the only one)."""
        self.now = (T0 + 70_000) / 1000
        await self.runner.tick(lambda p: True)
        [window] = self.of_type(WINDOW_TYPE)
        return int(window.get_data()["events"])


async def test_a_batch_whose_publication_failed_publishes_its_alert_when_retried() -> None:
    h = Harness("retry")
    batch = [h.event("payment.failed", DECLINE, cid=f"c{i}") for i in range(5)]
    h.fail_next = 1
    with pytest.raises(RuntimeError):
        await h.runner.run_batch(batch)
    await h.runner.run_batch(batch)  # what _until_stored does: the same batch again
    assert len(h.of_type(ALERT_TYPE)) == 1
    assert await h.first_window_events() == 5  # counted once, not twice


async def test_a_failed_tick_publishes_its_windows_on_the_next() -> None:
    h = Harness("tickretry")
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="c1")])
    await h.runner.tick(lambda p: True)  # first tick: the takeover republication
    h.now = (T0 + 70_000) / 1000
    h.fail_next = 1
    with pytest.raises(RuntimeError):
        await h.runner.tick(lambda p: True)
    h.now += 2
    await h.runner.tick(lambda p: True)
    [window] = h.of_type(WINDOW_TYPE)
    assert window.get_data()["events"] == 1


async def test_a_quiet_tenant_s_expired_windows_leave_its_record() -> None:
    h = Harness("expire")
    await h.runner.run_batch([h.event("payment.failed", DECLINE, cid="c1")])
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)  # published
    assert len(h.of_type(WINDOW_TYPE)) == 1
    h.now = (T0 + 3_600_000) / 1000
    await h.runner.tick(lambda p: True)
    # Nothing read since on its partition: its outcomes may yet come (a backlog held).
    assert h.state.get("acme")["windows"] != {}
    # Another tenant's outcome on its partition, produced long past the horizon: nothing
    # of acme's read after it can reach them.
    later = T0 + 3_600_000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded", PAID, cid="b1", at_ms=later, tenant="beta", produced_ms=later
            )
        ]
    )
    h.now += 2  # (the next tick)
    await h.runner.tick(lambda p: True)
    stored = h.state.get("acme")
    assert stored["windows"] == {} and stored["fraud"] == {}


END_OF_TIME = int(datetime(9999, 12, 31, 23, 58, tzinfo=UTC).timestamp() * 1000)


async def test_declines_dated_at_the_end_of_time_do_not_stall_the_partition() -> None:
    # A command's `time` is the client's: 9999-12-31 is accepted, and its fraud window
    # ends in year 10000, which no datetime holds.
    h = Harness("endoftime")
    batch = [h.event("payment.failed", DECLINE, cid=f"c{i}", at_ms=END_OF_TIME) for i in range(5)]
    await h.runner.run_batch(batch)  # raised ValueError: retried for ever, ledger included


async def test_future_dated_outcomes_do_not_grow_a_tenant_record_without_bound() -> None:
    h = Harness("future")
    minute = 60_000
    batch = [
        h.event("payment.succeeded", PAID, cid=f"c{i}", at_ms=T0 + (i + 1) * 7 * minute)
        for i in range(6_000)
    ]
    await h.runner.run_batch(batch)  # one record per tenant: must stay under 1 MB
    assert len(h.state.get("acme")["windows"]) <= 2 * 15 + 1
    # The ids of those past the horizon ahead, seen by the fraud rules at the present
    # (review h65g), are kept in the present's windows, forgotten with them.
    horizon = 15 * minute
    assert all(ws <= T0 + horizon for ws, *_ in h.seen.data.data.values())


async def test_amounts_beyond_64_bits_cannot_stall_the_partition() -> None:
    # A forged outcome (a registered tenant's id): each amount fits in 64 bits, their sum
    # does not, and the table's JSON encoder (orjson) refused the record on every retry.
    h = Harness("huge")
    huge = {"object": {"amount": 2**64 - 1, "currency": "USD"}}
    batch = [h.event("payment.authorized", huge, cid=f"c{i}") for i in range(2)]
    await h.runner.run_batch(batch)
    json.dumps(h.changelog[0].value.decode())


async def test_forged_labels_cannot_grow_a_record_past_the_message_size() -> None:
    # Outcomes forged under a registered tenant's id: currencies, decline codes and
    # outcome types are the producer's strings, of any length and number.
    h = Harness("labels")
    big = [
        h.event(
            "payment.failed",
            {
                "object": {"amount": 5, "currency": f"{i}" + "X" * 300_000},
                "error": {"code": "card_declined", "decline_code": "D" * 300_000 + f"{i}"},
            },
            cid=f"c{i}",
        )
        for i in range(2)
    ]
    many = [
        h.event(
            f"payment.odd{i}", {"error": {"code": "x", "decline_code": f"code_{i}"}}, cid=f"m{i}"
        )
        for i in range(20_000)
    ]
    await h.runner.run_batch(big + many)  # the harness refuses records of 1 MB or more
    [window] = h.state.get("acme")["windows"].values()
    assert window["events"] == 20_002
    assert len(window["outcomes"]) <= 101 and len(window["money"]) <= 101


async def test_with_rocksdb_a_batch_reads_each_tenant_from_its_own_partition(
    tmp_path: Any,
) -> None:
    h = Harness("rocksread", "rocksdb://", str(tmp_path))
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="a1")])
    batch = [
        h.event("payment.succeeded", PAID, cid="a2"),
        h.event("payment.succeeded", PAID, cid="b1", tenant="beta", partition=1),
    ]
    # The agent iterates a Faust stream: the current event is the batch's last.
    token = _current_event.set(weakref.ref(batch[-1]))  # type: ignore[arg-type]
    try:
        await h.runner.run_batch(batch)
    finally:
        _current_event.reset(token)
    h.now = (T0 + 70_000) / 1000
    await h.runner.tick(lambda p: True)
    counts = {e.get_data()["tenant_id"]: e.get_data()["events"] for e in h.of_type(WINDOW_TYPE)}
    assert counts == {"acme": 2, "beta": 1}  # acme's record was read as empty: 1
    # /metrics sizes a Faust RocksDB table by its partition databases' own estimates.
    from paystream.tables.observed import table_keys

    # acme's and beta's records and their partitions' (0 and 1), plus writes over them a
    # compaction has not yet merged (RocksDB's estimate counts memtable entries): never
    # fewer, never a read of them.
    assert 4 <= table_keys(h.state) <= 8


async def test_with_rocksdb_quiet_tenants_windows_are_published_and_ids_forgotten(
    tmp_path: Any,
) -> None:
    h = Harness("rockstick", "rocksdb://", str(tmp_path))
    await h.runner.run_batch([h.event("payment.succeeded", PAID, cid="a1")])
    assert await h.first_window_events() == 1
    h.now = (T0 + 3_600_000) / 1000  # (another tenant's outcome: its partition moved on)
    later = T0 + 3_600_000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded", PAID, cid="b1", at_ms=later, tenant="beta", produced_ms=later
            )
        ]
    )
    await h.runner.tick(lambda p: True)
    assert [k for k, _ in h.seen.items() if k.startswith("acme:")] == []
    assert h.state.get("acme")["windows"] == {}


async def test_a_failure_on_one_outcome_does_not_stall_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug of ours on one outcome (here: reading it) must not fail the batch: it would be
    retried for ever, and the ledger sink with it, the agents sharing one batch."""
    from paystream.agents import insights as agent

    h = Harness("poison")
    real = agent.observe

    def observe(event: Any) -> Any:
        if event.get_extension("causationid") == "poison":
            raise KeyError("a bug")
        return real(event)

    monkeypatch.setattr(agent, "observe", observe)
    batch = [h.event("payment.succeeded", PAID, cid=c) for c in ("c1", "poison", "c2")]
    await h.runner.run_batch(batch)
    assert await h.first_window_events() == 2


async def test_a_takeover_republishes_once_its_tables_are_recovered() -> None:
    """A worker taking partitions over publishes their windows again, so that one lost in
    a crash between its table write and its publication is not lost for good. It ticked
    during the tables' recovery, republished what was there (nothing), and never again
    (review finding): it now waits for the recovery to end."""
    from paystream.app import app

    a = Harness("takeover-a")
    await a.runner.run_batch([a.event("payment.succeeded", PAID, cid="c1")])
    a.now = (T0 + 70_000) / 1000
    await a.runner.tick(lambda p: True)
    a.now += 2
    await a.runner.tick(lambda p: True)
    assert len(a.of_type(WINDOW_TYPE)) == 1  # ...and say it was lost with worker A
    b = Harness("takeover-b")
    b.now = a.now + 5
    app.consumer_generation_id += 1  # the partitions were assigned to B
    b.settled = False  # B recovers their tables
    await b.runner.tick(lambda p: True)
    assert b.of_type(WINDOW_TYPE) == [] and b.changelog == []  # nothing half-recovered
    for rec in a.changelog:  # the recovery: A's changelog replayed into B's stores
        table = b.state if rec.topic == a.state.changelog_topic.get_topic_name() else b.seen
        key = json.loads(rec.key)
        table.data.data[key] = json.loads(rec.value)
        table.data._key_partition[key] = rec.partition
    b.settled = True
    b.now += 2
    await b.runner.tick(lambda p: True)
    [window] = b.of_type(WINDOW_TYPE)
    assert window.get_data()["events"] == 1


async def test_a_long_horizon_keeps_the_record_within_a_message() -> None:
    """A day's horizon over minute windows kept every window of the day in the tenant's
    one record: a busy tenant's outgrew the broker's message size and stopped the
    partition, ledger included (review finding). At most WINDOWS_MAX are kept; the
    oldest published ones make way."""
    from paystream.agents.insights import config_from
    from paystream.insights.state import WINDOWS_MAX

    h = Harness("day")
    cfg = Settings(cloudevents_mode=CloudEventsMode.BINARY, insights_horizon_seconds=86_400)  # type: ignore[call-arg]
    h.runner.settings, h.runner.config = cfg, config_from(cfg)
    currencies = ["USD", "EUR", "GBP", "CAD", "AUD", "JPY", "CHF", "SEK"]
    n = 0
    for hour in range(3):
        batch = []
        for minute in range(60):
            at = T0 + (hour * 60 + minute) * 60_000
            for i, currency in enumerate(currencies):
                n += 1
                paid = {"object": {"amount": 900, "amount_captured": 900, "currency": currency}}
                batch.append(h.event("payment.succeeded", paid, cid=f"p{n}", at_ms=at + i))
        h.now = (T0 + (hour + 1) * 3_600_000 + 10_000) / 1000
        await h.runner.run_batch(batch)
    state = h.runner.state["acme"]
    assert len(state["windows"]) <= WINDOWS_MAX
    biggest = max(
        len(r.value or b"") for r in h.changelog if r.topic.endswith("day-insights-changelog")
    )
    assert biggest < 200_000, biggest
    windows = h.of_type(WINDOW_TYPE)
    assert len(windows) == 3 * 60 and {w.get_data()["events"] for w in windows} == {8}


async def test_a_manual_payment_is_one_attempt_and_a_pending_refund_is_refunded() -> None:
    """A manual-capture payment answered `payment.authorized` at creation and
    `payment.succeeded` at capture counted two attempts, halving the decline share the
    card-testing rule reads; a refund pending at the provider was never counted refunded
    (review findings)."""
    from paystream.insights.observe import observe

    h = Harness("manual")

    def seen(kind: str, data: dict[str, Any]) -> Any:
        ev = h.event(kind, data, cid=f"x{h.offset}")
        msg = ev.message
        return observe(decode_record(msg.key, msg.value, dict(msg.headers)))

    manual = {"amount": 900, "amount_captured": 900, "currency": "USD", "capture_method": "manual"}
    assert seen("payment.authorized", {"object": {**manual, "amount_captured": 0}}).attempt
    assert not seen("payment.succeeded", {"object": manual}).attempt  # its capture
    assert seen("payment.succeeded", {"object": {**manual, "capture_method": "automatic"}}).attempt
    assert seen("payment.failed", DECLINE).attempt
    refund = {"object": {"amount": 700, "currency": "USD"}}
    assert seen("refund.pending", refund).refunded == 700
    assert seen("refund.succeeded", refund).refunded == 700


async def test_the_tenant_record_is_produced_only_once_what_it_vouches_for_is_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer is not transactional: in one send a crash could land the tenant
    record (its `through` past the batch) without the batch's alert, lost for good, or
    without its counted ids, so a re-emitted outcome counted twice (review findings).
    The ids, alerts and windows go first and are awaited; the tenant record after."""
    h = Harness("twostep")
    del h.runner._produce  # the real one, over a recording stand-in for the broker
    sends: list[list[str]] = []
    standin_broker(monkeypatch, lambda records: sends.append(sorted({r.topic for r in records})))
    await h.runner.run_batch([h.event("payment.failed", DECLINE, cid=f"c{i}") for i in range(5)])
    state = h.state.changelog_topic.get_topic_name()
    seen = h.seen.changelog_topic.get_topic_name()
    assert sends == [sorted([seen, h.cfg.fraud_topic]), [state]]


async def test_a_batch_counted_again_later_publishes_the_same_alert() -> None:
    """A command dated ahead counts in the present fraud window. The present was the
    worker's clock: a batch whose alert landed and whose tenant record did not, counted
    again after a window boundary, published a second alert under another id (review
    finding). It is the outcome record's own time, the same on every delivery."""
    h = Harness("clampretry")
    fw = h.runner.config.fraud_window_ms
    boundary = (int(h.now * 1000) // fw + 1) * fw
    h.now = (boundary - 1_000) / 1000  # the worker's clock: a second before the boundary
    batch = [
        h.event(
            "payment.failed",
            DECLINE,
            cid=f"c{i}",
            at_ms=boundary + 1_000,
            produced_ms=boundary - 1_500,
        )
        for i in range(5)  # its client's clock is ahead
    ]
    calls = 0

    async def produce(records: list[Any], out: list[Any], b: Any) -> None:
        nonlocal calls
        calls += 1
        h.published += [decode_record(r.key, r.value, dict(r.headers)) for _, r in out]
        if calls == 1:  # the ids and alerts landed; the tenant record did not
            raise TimeoutError("tenant record not durable")

    h.runner._produce = produce  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await h.runner.run_batch(batch)
    h.now = (boundary + 5_000) / 1000  # counted again past the boundary
    await h.runner.run_batch(batch)
    assert len({a.get_id() for a in h.of_type(ALERT_TYPE)}) == 1


# ---- exactly-once across a crash (mutation testing) -----------------------------------


async def test_the_last_outcome_applied_redelivered_is_not_counted_again() -> None:
    """A crash after the tenant record landed, before the offsets were committed: the
    whole batch comes again, its last outcome at exactly the record's `through`."""
    h = Harness("redeliver")
    batch = [h.event("payment.succeeded", PAID, cid=f"c{i}") for i in range(3)]
    await h.runner.run_batch(batch)
    assert h.state.get("acme")["through"] == batch[-1].message.offset
    await h.runner.run_batch(batch)
    assert await h.first_window_events() == 3


async def test_outcomes_whose_ids_landed_without_the_tenant_record_count_on_redelivery() -> None:
    """The two-step produce: the ids counted (with their own offsets) are durable, the
    tenant record is not (a crash between). Redelivered, each outcome's id is found with
    its own offset: the same record, not a re-emission, and it must count."""
    h = Harness("halfway")
    batch = [h.event("payment.failed", DECLINE, cid=f"c{i}") for i in range(5)]
    await h.runner.run_batch(batch)
    assert len(h.of_type(ALERT_TYPE)) == 1
    del h.state.data["acme"]  # its record lost with the crash; its ids kept
    h.published.clear()
    await h.runner.run_batch(batch)
    assert len(h.of_type(ALERT_TYPE)) == 1  # the same alert, published again
    assert await h.first_window_events() == 5


async def test_outcomes_of_unregistered_tenants_leave_no_state() -> None:
    """Made-up tenant ids are answered unknown_tenant: their outcomes grow no table."""
    h = Harness("ghost")
    await h.runner.run_batch(
        [h.event("payment.failed", DECLINE, cid=f"g{i}", tenant="ghost") for i in range(5)]
    )
    assert h.state.get("ghost") is None
    assert not h.seen.data.data
    assert h.of_type(ALERT_TYPE) == []
