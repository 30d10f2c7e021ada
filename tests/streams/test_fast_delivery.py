"""The consumer's delivery ``wait_first`` with a fast path: same outcomes as mode's own.

Faust calls ``consumer.wait_first(callback(message), suspend_flow.wait())`` per record.
These tests make that call on a real mode Service, as Faust's consumer would, and check
each way a delivery can go: done at once, waiting then done, abandoned because flow was
suspended meanwhile, failing; and that other calls are left alone. The worker e2e tests
run the real thing (PAYSTREAM_FAST_DELIVERY defaults to on).
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from mode import Service

from paystream.streams import fast_delivery

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Consumer(Service):
    def __init__(self, backlog: bool = False) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.slow_calls = 0
        original = self.wait_first

        async def counting(*coros: Any, timeout: Any = None) -> Any:
            self.slow_calls += 1
            return await original(*coros, timeout=timeout)

        self.wait_first = counting  # type: ignore[method-assign]
        fast_delivery.install(self, self.suspend_flow, backlog=lambda: backlog)


async def start_delivery(consumer: Consumer, callback: Any) -> asyncio.Future[Any]:
    """Faust's delivery call for one record, run until the callback first waits."""
    delivery = asyncio.ensure_future(consumer.wait_first(callback, consumer.suspend_flow.wait()))
    await asyncio.sleep(0)
    return delivery


async def test_a_delivery_that_need_not_wait_takes_no_tasks() -> None:
    consumer, delivered = Consumer(), []

    async def callback(n: int) -> None:
        delivered.append(n)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unawaited suspension coroutine would warn
        for n in range(3):
            await consumer.wait_first(callback(n), consumer.suspend_flow.wait())
    assert delivered == [0, 1, 2]
    assert consumer.slow_calls == 0


async def test_a_delivery_that_waits_is_continued_where_it_stopped() -> None:
    consumer, seen = Consumer(), []
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback() -> None:
        seen.append("started")
        seen.append(await room)  # e.g. a full queue
        await asyncio.sleep(0)
        seen.append("delivered")

    delivery = await start_delivery(consumer, callback())
    assert seen == ["started"] and not delivery.done()
    room.set_result("room")
    await asyncio.wait_for(delivery, 1)
    assert seen == ["started", "room", "delivered"]
    assert consumer.slow_calls == 1


async def test_a_waiting_delivery_is_abandoned_when_flow_is_suspended() -> None:
    consumer, seen = Consumer(), []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def callback() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("abandoned")
            raise

    delivery = await start_delivery(consumer, callback())
    consumer.suspend_flow.set()  # a rebalance: Faust gives up on this record
    await asyncio.wait_for(delivery, 1)
    for _ in range(3):  # the callback's task unwinds on the next turns
        await asyncio.sleep(0)
    assert seen == ["abandoned"] and never.cancelled()


async def test_a_waiting_delivery_sees_the_error_of_what_it_waited_for() -> None:
    consumer, seen = Consumer(), []
    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def callback() -> None:
        try:
            await room
        except KeyError as exc:
            seen.append(repr(exc))

    delivery = await start_delivery(consumer, callback())
    room.set_exception(KeyError("gone"))
    await asyncio.wait_for(delivery, 1)
    assert seen == ["KeyError('gone')"]


async def test_a_failing_delivery_raises_as_before() -> None:
    consumer = Consumer()

    async def callback() -> None:
        raise ValueError("undecodable")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="undecodable"):
            await consumer.wait_first(callback(), consumer.suspend_flow.wait())


async def test_deliveries_while_suspended_and_other_calls_take_mode_s_path() -> None:
    consumer, delivered = Consumer(), []

    async def callback() -> None:
        delivered.append(1)

    other = asyncio.Event()
    other.set()
    await consumer.wait_first(callback(), other.wait())  # not the suspension event
    await consumer.wait_first(callback(), timeout=1)
    consumer.suspend_flow.set()
    await consumer.wait_first(callback(), consumer.suspend_flow.wait())
    assert consumer.slow_calls == 3


@pytest.mark.parametrize("backlog", [False, True])
async def test_the_loop_turn_after_a_delivery_is_skipped_only_with_a_backlog(
    backlog: bool,
) -> None:
    consumer = Consumer(backlog)
    delivered: list[int] = []
    ran: list[bool] = []

    async def callback(n: int) -> None:
        delivered.append(n)

    # A callback scheduled now runs at the next loop turn: only if the delivery gave one.
    asyncio.get_running_loop().call_soon(ran.append, True)
    await consumer.wait_first(callback(1), consumer.suspend_flow.wait())
    assert delivered == [1]
    assert ran == ([] if backlog else [True])
    assert consumer.slow_calls == 0
    await asyncio.sleep(0)
