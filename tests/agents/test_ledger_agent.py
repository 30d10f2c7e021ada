"""The ledger sink agent commits only what is stored: a failing batch is retried, a batch
cut short (shutdown) is not committed. (Faust's take_events acknowledged a batch however
its body ended, so a shutdown during a database outage committed past its outcomes.)"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from paystream.agents import ledger_sink
from paystream.agents.continuity import ContinuityGuard
from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from tests.agents.test_shutdown import P0, PassThroughGuard, StandInConsumer, event, stand_in_app

pytestmark = pytest.mark.asyncio


class FlakyRunner:
    """Fails its first ``failures`` batches, then stores; or blocks for ever."""

    def __init__(self, failures: int = 0, block: bool = False) -> None:
        self.failures, self.block = failures, block
        self.attempts = 0
        self.stored: list[int] = []
        self.started = asyncio.Event()

    async def run_batch(self, events: list[Any]) -> None:
        self.attempts += 1
        self.started.set()
        if self.block:
            await asyncio.get_running_loop().create_future()  # the database never answers
        if self.attempts <= self.failures:
            raise ConfigurationError("PAYSTREAM_DB_APP_PASSWORD is not set")
        self.stored += [e.message.offset for e in events]


# The agent's stream, as far as it looks at it (whether events are waiting).
STREAM = SimpleNamespace(channel=SimpleNamespace(queue=SimpleNamespace(empty=lambda: False)))


def agent_over(
    monkeypatch: pytest.MonkeyPatch,
    runner: FlakyRunner,
    batches: list[list[Any]],
    guard: Any = PassThroughGuard,
) -> StandInConsumer:
    async def take(*_: Any, **__: Any) -> AsyncIterator[list[Any]]:
        for batch in batches:
            yield batch

    consumer = StandInConsumer()
    app = stand_in_app(consumer)
    app.rebalancing = False
    monkeypatch.setattr(ledger_sink, "take_batches", take)
    monkeypatch.setattr(ledger_sink, "ContinuityGuard", guard)
    monkeypatch.setattr(ledger_sink, "runner", runner)
    monkeypatch.setattr(ledger_sink, "app", app)
    monkeypatch.setattr(ledger_sink, "RETRY_FIRST_SECONDS", 0.01)
    return consumer


async def test_a_failing_batch_is_retried_until_stored_then_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = FlakyRunner(failures=2)
    consumer = agent_over(monkeypatch, runner, [[event(P0, 0), event(P0, 1)]])
    await asyncio.wait_for(ledger_sink.store_outcomes(STREAM), 10)
    assert runner.attempts == 3 and runner.stored == [0, 1]
    assert consumer.commits == [{P0: 2}]


async def test_a_batch_cut_short_by_shutdown_is_not_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = FlakyRunner(block=True)
    consumer = agent_over(monkeypatch, runner, [[event(P0, 0)], [event(P0, 1)]])
    task = asyncio.ensure_future(ledger_sink.store_outcomes(STREAM))
    await asyncio.wait_for(runner.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumer.commits == [] and runner.stored == []


async def test_what_was_stored_is_committed_when_the_agent_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust ends the agent's stream and cancels it straight after: the final commit
    outlives the cancel (it was cut off, and the stored batch written again later)."""
    runner = FlakyRunner()
    consumer = agent_over(monkeypatch, runner, [[event(P0, 0)]])
    committing = asyncio.Event()

    async def slow_commit(offsets: dict[Any, int]) -> bool:
        committing.set()
        await asyncio.sleep(0.1)  # the broker's round trip
        consumer.commits.append(dict(offsets))
        return True

    monkeypatch.setattr(consumer, "_commit", slow_commit)
    task = asyncio.ensure_future(ledger_sink.store_outcomes(STREAM))
    await asyncio.wait_for(committing.wait(), 5)  # the stream ended: the final commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumer.commits == [{P0: 1}]


async def test_an_outcome_faust_never_delivered_is_read_before_the_commit_passes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust dropped offset 2 (flow control, a rebalance) and delivered 3 and 4: the sink
    stored 0, 1, 3, 4 and committed 5, so outcome 2 never reached the ledger, for good."""
    reads: list[tuple[int, int]] = []

    async def read_range(tp: Any, start: int, end: int) -> tuple[list[Any], int]:
        reads.append((start, end))
        return [event(tp, o) for o in range(start, end)], end

    async def committed(tps: Any) -> dict[Any, int | None]:
        return dict.fromkeys(tps, 0)

    def guard(app: Any, topic: str, **kwargs: Any) -> ContinuityGuard:
        return ContinuityGuard(
            app, topic, read_range=read_range, read_committed=committed, **kwargs
        )

    runner = FlakyRunner()
    delivered = [event(P0, 0), event(P0, 1), event(P0, 3), event(P0, 4)]
    consumer = agent_over(monkeypatch, runner, [delivered], guard)
    await asyncio.wait_for(ledger_sink.store_outcomes(STREAM), 10)
    assert reads == [(2, 3)] and runner.stored == [0, 1, 2, 3, 4]
    assert consumer.commits == [{P0: 5}]


async def test_an_outcome_nested_too_deeply_is_parked_not_retried_for_ever() -> None:
    """The card scan recursed into it and raised RecursionError, which escaped the batch:
    retried for ever, with every later outcome of its partition waiting behind it."""
    import json

    from paystream.agents.ledger_sink import RawRecord, translate_records
    from paystream.ledger.sink import FORBIDDEN_DATA

    payment = {"amount": 100, "currency": "USD", "status": "succeeded"}
    data = {"tenant_id": "acme", "entity_type": "payment", "entity_id": "pay_1", "version": 1,
            "object": {**payment, "x": json.loads("[" * 900 + "]" * 900)}}  # fmt: skip
    doc = {"specversion": "1.0", "id": "evt-1", "source": "/x", "tenantid": "acme",
           "type": "com.paystream.payment.succeeded", "time": "2025-01-01T00:00:00Z",
           "datacontenttype": "application/json", "data": data}  # fmt: skip
    record = RawRecord(b"acme", json.dumps(doc).encode(),
                       {"content-type": b"application/cloudevents+json"}, 0.0, "t/0/1")  # fmt: skip
    flat = {
        **doc,
        "id": "evt-2",
        "data": {**data, "object": {"amount": 100, "currency": "USD", "status": "succeeded"}},
    }
    shallow = RawRecord(b"acme", json.dumps(flat).encode(), record.headers, 0.0, "t/0/2")
    translated = translate_records([record, shallow])
    assert translated.dead[0].reason == FORBIDDEN_DATA  # not copied again: unchecked
    assert "nested deeper than 64 levels" in translated.dead[0].detail
    assert 1 not in translated.dead, translated.dead.get(1)
    assert len(translated.events) == 1


async def test_a_dead_letter_is_counted_once_however_often_its_parking_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger's dead-letter topic unreachable three times: the batch is run four
    times, its one bad outcome parked once and counted once (it was counted on every
    run, so an alert on the counter kept climbing for one record)."""
    ls = ledger_sink

    def counted() -> float:
        labels = {"reason": "undecodable"}
        return REGISTRY.get_sample_value("paystream_ledger_dead_letters_total", labels) or 0.0

    cfg = load_settings(
        database_url="postgresql://owner@127.0.0.1:1/x",
        db_app_password="pw",
        master_key=base64.b64encode(os.urandom(32)).decode(),
    )
    runner = ls.LedgerSinkRunner(cfg)
    failures, parked = [3], []

    async def park(records: object, dead: dict[int, object]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("ledger dead-letter topic unreachable")
        parked.extend(dead)

    monkeypatch.setattr(runner, "_park", park)
    monkeypatch.setattr(ls, "runner", runner)
    monkeypatch.setattr(ls, "RETRY_FIRST_SECONDS", 0.01)
    msg = SimpleNamespace(
        key=b"acme", value=b"not a cloudevent", headers=[], timestamp=1.0,
        topic="paystream.events", partition=0, offset=7,
        generation_id=ls.app.consumer_generation_id,
    )  # fmt: skip
    before = counted()
    await ls._until_stored([SimpleNamespace(message=msg)])  # type: ignore[list-item]
    assert len(parked) == 1
    assert counted() - before == 1


async def test_a_batch_whose_partitions_moved_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch retried past a rebalance is dropped (uncommitted: the partitions' new
    owner runs it): written late, it would land after and over that owner's records."""
    runs = []

    class Failing:
        async def run_batch(self, events: Any) -> None:
            runs.append(len(events))
            monkeypatch.setattr(ledger_sink.app, "consumer_generation_id", 99)  # a rebalance
            raise ConnectionError("database unreachable")

    monkeypatch.setattr(ledger_sink, "runner", Failing())
    monkeypatch.setattr(ledger_sink, "RETRY_FIRST_SECONDS", 0.01)
    msg = SimpleNamespace(
        key=b"acme", value=b"x", headers=[], timestamp=1.0, topic="paystream.events",
        partition=0, offset=7, generation_id=ledger_sink.app.consumer_generation_id,
    )  # fmt: skip
    batch = [SimpleNamespace(message=msg)]
    await asyncio.wait_for(ledger_sink._until_stored(batch), 5)  # type: ignore[arg-type]
    assert runs == [1]


async def test_a_batch_whose_partitions_moved_while_it_was_stored_is_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger write waited out a database outage across a rebalance and then
    succeeded: the insights counted the batch all the same, after its new owner had
    (windows and alerts published twice; review finding)."""
    counted: list[int] = []

    class SlowStore:
        async def run_batch(self, events: Any) -> None:
            monkeypatch.setattr(ledger_sink.app, "consumer_generation_id", 99)  # a rebalance

    class Counting:
        async def await_tenants(self, events: Any) -> bool:
            return False

        async def run_batch(self, events: Any) -> None:
            counted.append(len(events))

    monkeypatch.setattr(ledger_sink, "ENABLED", True)  # (a worker of the ledger and insights)
    monkeypatch.setattr(ledger_sink, "runner", SlowStore())
    monkeypatch.setattr(ledger_sink.insights, "runner", Counting())
    msg = SimpleNamespace(
        key=b"acme", value=b"x", headers=[], timestamp=1.0, topic="paystream.events",
        partition=0, offset=7, generation_id=ledger_sink.app.consumer_generation_id,
    )  # fmt: skip
    await asyncio.wait_for(ledger_sink._until_stored([SimpleNamespace(message=msg)]), 5)  # type: ignore[list-item]
    assert counted == []
