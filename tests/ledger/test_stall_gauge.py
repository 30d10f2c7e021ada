"""The ledger-stalled gauge the agent sets on a failure outside the writer is cleared
once the batch is stored or handed over. The writer clears it only after a database
write, which a batch of nothing to write never makes: it stayed 1, and the stalled-sink
alert paged for a sink that was fine (review finding)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest


class _Msg:
    def __init__(self, value: bytes, offset: int, gen: int) -> None:
        self.key, self.value, self.headers = b"acme", value, []
        self.timestamp, self.topic, self.partition, self.offset = 1.7e9, "ev", 0, offset
        self.generation_id = gen


class _Ev:
    def __init__(self, message: _Msg) -> None:
        self.message = message


@pytest.mark.asyncio
async def test_the_gauge_clears_once_a_batch_with_nothing_to_write_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paystream.agents import ledger_sink as agent
    from paystream.ledger.sink import STALLED

    STALLED.set(0)
    runner = agent.LedgerSinkRunner(agent.settings)
    from sqlalchemy.ext.asyncio import create_async_engine

    from paystream.ledger.sink import LedgerSink

    runner._sink = LedgerSink(
        create_async_engine("postgresql+asyncpg://u:p@127.0.0.1:1/x"), None
    )  # never connected: no DB write happens
    calls = {"n": 0}

    async def park(records: Any, dead: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("ledger DLQ topic not reachable (once)")

    monkeypatch.setattr(runner, "_park", park)
    monkeypatch.setattr(agent, "runner", runner)
    monkeypatch.setattr(agent, "ENABLED", True)
    monkeypatch.setattr(agent.insights, "runner", None)
    monkeypatch.setattr(agent, "app", types.SimpleNamespace(consumer_generation_id=7))
    monkeypatch.setattr(agent, "RETRY_FIRST_SECONDS", 0.01)
    # an undecodable outcome: dead at translation, no ledger event to write
    await asyncio.wait_for(agent._until_stored([_Ev(_Msg(b"\x00 not an event", 0, 7))]), 5)
    assert calls["n"] == 2
    assert STALLED._value.get() == 0


@pytest.mark.asyncio
async def test_the_gauge_clears_when_the_failed_batch_moves_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paystream.agents import ledger_sink as agent
    from paystream.ledger.sink import STALLED

    STALLED.set(0)
    fake_app = types.SimpleNamespace(consumer_generation_id=7)

    class Runner:
        async def run_batch(self, events: Any) -> None:
            fake_app.consumer_generation_id = 8  # the partitions move away meanwhile
            raise RuntimeError("a failure outside the writer")

    monkeypatch.setattr(agent, "runner", Runner())
    monkeypatch.setattr(agent, "ENABLED", True)
    monkeypatch.setattr(agent.insights, "runner", None)
    monkeypatch.setattr(agent, "app", fake_app)
    monkeypatch.setattr(agent, "RETRY_FIRST_SECONDS", 0.01)
    await asyncio.wait_for(agent._until_stored([_Ev(_Msg(b"x", 0, 7))]), 5)
    assert STALLED._value.get() == 0
