"""The ledger sink agent commits only what is stored: a failing batch is retried, a batch
cut short (shutdown) is not committed. (Faust's take_events acknowledged a batch however
its body ended, so a shutdown during a database outage committed past its outcomes.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from paystream.agents import ledger_sink
from paystream.errors import ConfigurationError
from tests.agents.test_shutdown import P0, StandInConsumer, event, stand_in_app

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


def agent_over(
    monkeypatch: pytest.MonkeyPatch,
    runner: FlakyRunner,
    batches: list[list[Any]],
) -> StandInConsumer:
    async def take(*_: Any, **__: Any) -> AsyncIterator[list[Any]]:
        for batch in batches:
            yield batch

    consumer = StandInConsumer()
    app = stand_in_app(consumer)
    app.rebalancing = False
    monkeypatch.setattr(ledger_sink, "take_batches", take)
    monkeypatch.setattr(ledger_sink, "runner", runner)
    monkeypatch.setattr(ledger_sink, "app", app)
    monkeypatch.setattr(ledger_sink, "RETRY_FIRST_SECONDS", 0.01)
    return consumer


async def test_a_failing_batch_is_retried_until_stored_then_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = FlakyRunner(failures=2)
    consumer = agent_over(monkeypatch, runner, [[event(P0, 0), event(P0, 1)]])
    await asyncio.wait_for(ledger_sink.store_outcomes(object()), 10)
    assert runner.attempts == 3 and runner.stored == [0, 1]
    assert consumer.commits == [{P0: 2}]


async def test_a_batch_cut_short_by_shutdown_is_not_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = FlakyRunner(block=True)
    consumer = agent_over(monkeypatch, runner, [[event(P0, 0)], [event(P0, 1)]])
    task = asyncio.ensure_future(ledger_sink.store_outcomes(object()))
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
    task = asyncio.ensure_future(ledger_sink.store_outcomes(object()))
    await asyncio.wait_for(committing.wait(), 5)  # the stream ended: the final commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumer.commits == [{P0: 1}]
