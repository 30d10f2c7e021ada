"""A broker refusing the command agent's writes must not take the fleet down one worker
at a time (review h69b).

1. A refusal aiokafka marks not retriable (TOPIC_AUTHORIZATION_FAILED on one topic the
   worker writes, POLICY_VIOLATION, UNKNOWN_SERVER_ERROR) failed the batch at once: the
   worker exited uncommitted (70), its partitions went to the next worker, which met the
   same refusal and exited, each exit a rebalance pausing the whole group. NOT_ENOUGH_
   REPLICAS (retriable) is waited out with the worker up, reported on /readyz; so must
   these be: the broker answered, nothing of the refused record batch landed.
2. A rebalance while a refused batch waits between two attempts (every record batch of
   the failed attempt settled: nothing of it is with the producer) ended the worker
   too: the hook saw ``_delivering`` and exited, and had it not, the retry that followed
   (``may_retry`` false) failed the batch and ``_exit_if_failed`` exited. Nothing can
   land late there: the batch can be given up like one still processing, and redone
   from the committed offsets by whoever owns its partitions.
"""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import NotEnoughReplicasError, TopicAuthorizationFailedError

from paystream.agents import commands
from paystream.agents.commands import ProcessedBatch
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from paystream.agents.publish_health import PUBLISH
from paystream.streams.batch_producer import OutRecord
from paystream.tables.changelog import ChangelogBatch
from tests.agents.test_shutdown import P0, StandInConsumer, event, stand_in_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(commands, "_exit_uncommitted", lambda what, exc=None: seen.append(what))
    return seen


@pytest.fixture(autouse=True)
def _state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_abandoned_at", None)
    monkeypatch.setattr(commands, "_assignments", 0)
    monkeypatch.setattr(commands, "_delivering", 0)
    monkeypatch.setattr(commands, "lease", SimpleNamespace(lapsed=lambda: False))
    PUBLISH.delivered()


_CHAINS: list[DeliveryChain] = []


@pytest.fixture(autouse=True)
async def _settle_chains(exits: list[str]) -> Any:
    """A batch left running by a failed assertion ends before the patches are undone
    (its _exit_if_failed would otherwise end the test process)."""
    yield
    while _CHAINS:
        last = _CHAINS.pop().last
        if last is not None and not last.done():
            last.cancel()
            await asyncio.wait([last])
            await asyncio.sleep(0)  # its done callback


def _runner(monkeypatch: pytest.MonkeyPatch) -> commands.CommandRunner:
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    monkeypatch.setattr(commands, "runner", runner)
    return runner


def _batch() -> ProcessedBatch:
    records = [OutRecord("paystream.events", 0, b"t", b"outcome")]
    return ProcessedBatch([event(P0, 3)], [], records, ChangelogBatch(), [], [0])


async def _start(offsets: DurableOffsets, batch: ProcessedBatch) -> DeliveryChain:
    chain = DeliveryChain()

    async def done() -> ProcessedBatch:
        return batch

    await chain.run(
        done(),
        lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
        on_done=functools.partial(commands._exit_if_failed, len(batch.events)),
    )
    _CHAINS.append(chain)
    return chain


async def test_a_non_retriable_refusal_is_waited_out_not_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """The broker refuses the outcomes topic (its ACL missing for a moment, say) and then
    takes it: the worker stays up, says why it is stuck, and delivers."""
    answers: list[Exception | None] = [TopicAuthorizationFailedError("paystream.events"), None]
    seen: list[Any] = []

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> list[Any]:
        seen.append(PUBLISH.trouble())
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return []

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    monkeypatch.setattr(commands, "app", stand_in_app(StandInConsumer()))
    _runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(stand_in_app(consumer))
    chain = await _start(offsets, _batch())
    assert await chain.drain(2)
    assert exits == [], "a refused write ended the worker: its successor meets the same refusal"
    assert answers == []  # produced again once the broker took writes
    assert seen[1] is not None and seen[1].refused  # reported (/readyz) meanwhile
    await offsets.commit()
    assert consumer.commits == [{P0: 4}]


async def test_a_rebalance_between_two_attempts_gives_the_batch_up_without_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    attempts: list[float] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> list[Any]:
        attempts.append(asyncio.get_running_loop().time())
        raise NotEnoughReplicasError()  # every record batch of the attempt failed

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = stand_in_app(StandInConsumer())
    monkeypatch.setattr(commands, "app", app)
    _runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(stand_in_app(consumer))
    chain = await _start(offsets, _batch())
    while len(attempts) < 3:  # refused, and waiting for its next attempt
        await asyncio.sleep(0.01)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)
    assert exits == [], "the hand-over ended a worker with nothing in the producer's hands"
    # Nor would the watch (it fires if Faust's flush holds the hook up past its time).
    assert not commands._watch._delivering(), "the watch would exit a worker producing nothing"
    given_up = len(attempts)
    await commands._count_assignment(None)  # the rejoin completes: a new generation
    app.consumer_generation_id = 2
    assert await chain.drain(3)
    assert exits == [], "a worker with nothing in the producer's hands exited at a rebalance"
    assert len(attempts) == given_up  # nothing produced after the hand-over gave it up
    await offsets.commit()
    assert consumer.commits == []  # redone from the committed offsets by their owner
    assert PUBLISH.trouble() is None  # nothing is failing on this worker any more
