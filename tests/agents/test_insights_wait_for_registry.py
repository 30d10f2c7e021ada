"""The outcome agent counts no batch before the tenant registry has loaded (review h62a):
a worker started with outcomes waiting read them first, skipped their tenants as
unregistered and committed past them, lost to the insights for good (a rolling restart
lost two payments' counts so, one run in fifteen). The end-to-end case is in
tests/e2e/test_insights_registry_late.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paystream.agents import ledger_sink
from tests.agents.test_insights_given_up_batch import GEN, P0, _outcome_agent
from tests.tenancy.test_mirror import _until

pytestmark = pytest.mark.asyncio


def _registry_loading(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, asyncio.Event]:
    agent = _outcome_agent(monkeypatch, pauses_once=False, pause=lambda app, lease: None)
    ready = asyncio.Event()
    ledger_sink.insights.runner.tenants_ready = ready  # type: ignore[union-attr]
    return agent, ready


async def test_a_batch_read_before_the_registry_loaded_is_counted_once_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, ready = _registry_loading(monkeypatch)
    await agent.put([10, 11, 12])
    assert agent.counted == []
    ready.set()
    await _until(lambda: bool(agent.counted), 5)
    assert agent.counted == [10, 11, 12]
    await agent.stop()
    assert agent.consumer.commits == [{P0: 13}]


async def test_a_batch_whose_partitions_moved_while_it_waited_is_left_to_their_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, ready = _registry_loading(monkeypatch)
    runner = ledger_sink.insights.runner
    judged = asyncio.Event()
    waiting = runner.await_tenants  # type: ignore[union-attr]

    async def await_tenants(events: Any) -> bool:
        try:
            return await waiting(events)
        finally:
            judged.set()

    runner.await_tenants = await_tenants  # type: ignore[union-attr]
    await agent.put([10, 11])
    agent.app.consumer_generation_id = GEN + 1  # a rebalance came meanwhile
    ready.set()
    await asyncio.wait_for(judged.wait(), 5)
    await asyncio.sleep(0)  # (the batch's turn after its wait: dropped, not counted)
    await agent.stop()
    assert agent.counted == []
    assert not any(c.get(P0, 0) > 10 for c in agent.consumer.commits), agent.consumer.commits
