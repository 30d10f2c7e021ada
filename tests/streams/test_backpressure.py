"""A stalled agent's queue never fills, however many of its partitions have a backlog.

Driven with Faust's own per-partition delivery closure (``ConductorCompiler.build``), its
consumer's pause/resume methods and mode's ``FlowControlQueue``, and aiokafka's drain
rule (a poll takes at most ``max_records`` across partitions, a partition's fetched
records in order). A full queue is where Faust's conductor waits, and every agent's
delivery with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace as NS
from typing import Any

import pytest
from faust.transport.conductor import ConductorCompiler
from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.queues import FlowControlEvent, FlowControlQueue, ThrowableQueue

from paystream.app import max_poll_records
from paystream.streams import backpressure

MAXSIZE = 4096
FETCHED = 2000  # records a partition's fetch holds (~1 MiB of ~500-byte outcomes)


class _Channel:
    """What the conductor's closure uses of a channel (hashable: it is kept in a set)."""

    key_type = value_type = None

    def __init__(self, decode: Any, queue: FlowControlQueue[Any]) -> None:
        self.decode, self.queue, self.put = decode, queue, queue.put


async def _fills(partitions: int, queued: int, methods: dict[str, Any]) -> bool:
    """Does an agent that never takes end with a full queue (the conductor blocked)?"""
    flow = FlowControlEvent()
    flow.resume()
    queue: FlowControlQueue[Any] = FlowControlQueue(maxsize=MAXSIZE, flow_control=flow)
    tps = [TP("paystream.events", p) for p in range(partitions)]
    consumer = NS(
        _active_partitions=None,
        _paused_partitions=set(),
        _buffered_partitions=set(),
        app=NS(in_recovery=False),
        assignment=lambda: set(tps),
    )
    for name in ("_get_active_partitions", "_set_active_tps"):
        setattr(consumer, name, getattr(Consumer, name).__get__(consumer))
    for name, method in methods.items():
        setattr(consumer, name, method.__get__(consumer))

    async def ok() -> None:
        return None

    async def decode(message: Any, propagate: bool = True) -> Any:
        return message

    app = NS(
        consumer=consumer,
        flow_control=NS(acquire=ok),
        producer=NS(buffer=NS(wait_until_ebb=ok)),
        sensors=NS(on_topic_buffer_full=lambda tp: None),
    )
    channel = _Channel(decode, queue)
    deliver = {tp: ConductorCompiler().build(NS(app=app), tp, {channel}) for tp in tps}  # type: ignore[arg-type]
    fetched = {tp: FETCHED for tp in tps}
    for i in range(queued):
        queue.force_put_nowait(i)  # delivered before the agent stalled
    for _ in range(100):
        active = consumer._get_active_partitions()
        if not active:
            return False  # every partition paused short of full
        budget, poll = max_poll_records(MAXSIZE), {}
        for tp in list(fetched):
            if tp in active and budget:
                taken = min(budget, fetched[tp])
                poll[tp], budget = taken, budget - taken
                fetched[tp] -= taken
                if not fetched[tp]:  # fetched again, behind the others
                    del fetched[tp]
                    fetched[tp] = FETCHED
        for tp, n in poll.items():
            for _ in range(n):
                try:
                    await asyncio.wait_for(deliver[tp](NS(tp=tp, incref=lambda n: None)), 0.2)
                except TimeoutError:
                    return True
    return False


TOPIC_WIDE = {
    "on_buffer_full": backpressure.on_buffer_full,
    "on_buffer_drop": backpressure.on_buffer_drop,
}


@pytest.mark.asyncio
@pytest.mark.parametrize(("partitions", "queued"), [(1, 0), (1, 275), (2, 0), (2, 275), (4, 0)])
async def test_a_stalled_agent_s_queue_never_fills(partitions: int, queued: int) -> None:
    assert not await _fills(partitions, queued, TOPIC_WIDE)


@pytest.mark.asyncio
@pytest.mark.parametrize(("partitions", "queued"), [(2, 275), (3, 0), (4, 0)])
async def test_faust_s_per_partition_pause_lets_it_fill(partitions: int, queued: int) -> None:
    """Why: paused one partition at a time, a few partitions behind fill the queue."""
    assert await _fills(partitions, queued, backpressure.FAUST_PER_PARTITION)


def test_the_worker_s_consumer_pauses_topic_wide() -> None:
    import paystream.app  # noqa: F401 - creating the app installs it

    assert Consumer.on_buffer_full is backpressure.on_buffer_full
    assert Consumer.on_buffer_drop is backpressure.on_buffer_drop


_COMMANDS = {TP("paystream.commands", p) for p in range(4)}
_CHANGELOG = {TP("paystream-payments-changelog", p) for p in range(4)}


@pytest.mark.asyncio
async def test_pressure_dropping_mid_recovery_resumes_no_paused_partition() -> None:
    """A rebalance while the agent's queue was past 80%: Faust pauses every partition,
    clears the queue and, while tables recover, keeps the stream's partitions paused.
    The agent's next wait on its empty queue fires the pressure-drop callback left on it;
    that resumed the whole topic, and commands ran against tables still being restored
    (review finding). Faust's own consumer methods, mode's queue."""
    backpressure.install()
    consumer = NS(
        app=NS(in_recovery=False),
        _active_partitions=None,
        _paused_partitions=set(),
        _buffered_partitions=set(),
        assignment=lambda: _COMMANDS | _CHANGELOG,
    )
    for name in ("_get_active_partitions", "_set_active_tps", "pause_partitions",
                 "resume_partitions", "on_buffer_full", "on_buffer_drop"):  # fmt: skip
        setattr(consumer, name, getattr(Consumer, name).__get__(consumer))
    flow = FlowControlEvent(initially_suspended=False)
    queue: ThrowableQueue[int] = ThrowableQueue(
        maxsize=MAXSIZE, flow_control=flow, clear_on_resume=True
    )
    tp = TP("paystream.commands", 0)
    consumer._set_active_tps(consumer.assignment())
    for i in range(int(MAXSIZE * 0.81)):  # the agent busy: its queue passes 80%
        queue.put_nowait_enhanced(
            i,
            on_pressure_high=lambda: consumer.on_buffer_full(tp),
            on_pressure_drop=lambda: consumer.on_buffer_drop(tp),
        )
    assert not _COMMANDS & consumer._get_active_partitions()
    # The rebalance (App._on_partitions_revoked, then the assignment) and recovery.
    consumer.pause_partitions(consumer.assignment())
    flow.suspend()
    flow.clear()
    consumer._set_active_tps(consumer.assignment())
    consumer.pause_partitions(consumer.assignment())
    consumer.app.in_recovery = True
    consumer.resume_partitions(_CHANGELOG)
    flow.resume()
    with contextlib.suppress(TimeoutError):  # the agent waits on its empty queue
        await asyncio.wait_for(queue.get(), 0.05)
    assert not _COMMANDS & consumer._get_active_partitions()
    # Recovery done: Faust resumes them, and back-pressure works as before.
    consumer.app.in_recovery = False
    consumer.resume_partitions(_COMMANDS)
    assert consumer._get_active_partitions() >= _COMMANDS
    assert not consumer._buffered_partitions
