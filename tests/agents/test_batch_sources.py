"""A batch's answers are credited to their own command's partition: after a hand-over a
worker delivers only those of partitions still its own (review finding: records without
a key, from any partition, were all credited to the first one's)."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP, Message

from paystream.agents import commands
from tests.agents.harness import Harness


class _Event:
    def __init__(self, message: Message) -> None:
        self.message = message


def _keyless(partition: int, offset: int, value: bytes) -> Any:
    tp = TP("paystream.commands", partition)
    return _Event(Message(tp.topic, partition, offset, 0.0, 0, None, None, value, None, tp=tp))


class _Partitioner:
    async def partition(self, topic: str, key: bytes | None) -> int:
        return 0


async def test_keyless_commands_are_credited_to_their_own_partition(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = commands.CommandRunner()

    async def processor() -> Any:
        return harness.processor

    monkeypatch.setattr(runner, "processor", processor)
    monkeypatch.setattr(runner, "_kafka", lambda: (None, _Partitioner()))
    batch = await runner.process_batch(
        [_keyless(0, 7, b"not json 0"), _keyless(1, 3, b"not json 1")]
    )
    letters = [e for e in batch.emits if e.topic == harness.settings.dlq_topic]
    assert [e.record.value for e in letters] == [b"not json 0", b"not json 1"]
    # Partition 1 moved to another worker (which answers its command again).
    kept = batch.keep({0})
    assert [e.record.value for e in kept.emits if e.topic == harness.settings.dlq_topic] == [
        b"not json 0"
    ]


@pytest.mark.parametrize("stale", [False, True])
async def test_the_retention_sweep_runs_only_in_a_batch_of_the_current_generation(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, stale: bool
) -> None:
    """A batch taken before a rebalance is dropped by the hand-over, never delivered:
    a minimisation its sweep made reached the store alone, and later passes skipped it,
    so the changelog kept the personal data (review finding)."""
    runner = commands.CommandRunner()
    steps: list[float] = []

    async def processor() -> Any:
        return harness.processor

    monkeypatch.setattr(runner, "processor", processor)
    monkeypatch.setattr(runner, "_kafka", lambda: (None, _Partitioner()))
    monkeypatch.setattr(runner.retention, "step", steps.append)
    generation = commands.app.consumer_generation_id + (1 if stale else 0)
    tp = TP("paystream.commands", 0)
    message = Message(
        tp.topic, 0, 7, 0.0, 0, None, None, b"x", None, tp=tp, generation_id=generation
    )
    await runner.process_batch([_Event(message)])
    assert len(steps) == (0 if stale else 1)


async def test_no_sweep_in_a_batch_given_up_on_across_a_same_generation_rejoin(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over gives up on the batch while it runs, and the rejoin keeps the
    generation: _deliver drops the batch, so its sweep must not have run (review)."""
    runner = commands.CommandRunner()
    steps: list[float] = []
    monkeypatch.setattr(runner, "_kafka", lambda: (None, _Partitioner()))
    monkeypatch.setattr(runner.retention, "step", steps.append)
    monkeypatch.setattr(commands, "_assignments", 3)
    monkeypatch.setattr(commands, "_abandoned_at", None)

    class GivenUpOn:
        def __getattr__(self, name: str) -> Any:
            return getattr(harness.processor, name)

        async def process(self, inbound: Any) -> Any:
            commands._abandoned_at = commands._assignments  # the hand-over gives up
            commands._assignments += 1  # the rejoin: the same generation
            return await harness.processor.process(inbound)

    async def processor() -> Any:
        return GivenUpOn()

    monkeypatch.setattr(runner, "processor", processor)
    tp = TP("paystream.commands", 0)
    generation = commands.app.consumer_generation_id
    message = Message(
        tp.topic, 0, 7, 0.0, 0, None, None, b"x", None, tp=tp, generation_id=generation
    )
    await runner.process_batch([_Event(message)])
    assert steps == []
