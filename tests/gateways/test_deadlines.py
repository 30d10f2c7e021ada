"""Per-call deadlines on one shared timer (the call policy's are in tenancy/test_policy.py)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from paystream.gateways.deadlines import CallDeadlines

TICK = 0.01


async def test_a_call_within_its_limit_is_untouched_and_the_timer_stops() -> None:
    deadlines = CallDeadlines(tick=TICK)
    with deadlines.limit(1.0):
        assert deadlines.in_flight() == 1
        await asyncio.sleep(0.02)
    assert deadlines.in_flight() == 0
    await asyncio.sleep(TICK * 3)
    on_loop = deadlines._loops[asyncio.get_running_loop()]
    assert not on_loop.armed  # nothing in flight: no timer runs


async def test_an_overdue_call_raises_timeout_error() -> None:
    deadlines = CallDeadlines(tick=TICK)
    started = time.monotonic()
    with pytest.raises(TimeoutError), deadlines.limit(0.05):
        await asyncio.sleep(5)
    # Never early; how soon after the limit it fires is the host's business (the sleep
    # not finishing is what pytest.raises already shows).
    assert time.monotonic() - started >= 0.05
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_only_the_overdue_calls_of_many_are_cancelled() -> None:
    deadlines = CallDeadlines(tick=TICK)

    async def call(limit: float, work: float) -> str:
        try:
            with deadlines.limit(limit):
                await asyncio.sleep(work)
        except TimeoutError:
            return "timeout"
        return "ok"

    got = await asyncio.gather(
        call(0.05, 0.0), call(0.05, 0.3), call(1.0, 0.1), call(0.03, 0.3), call(1.0, 0.0)
    )
    assert got == ["ok", "timeout", "ok", "timeout", "ok"]


async def test_a_cancel_from_elsewhere_propagates_as_a_cancel() -> None:
    deadlines = CallDeadlines(tick=TICK)
    entered = asyncio.Event()

    async def call() -> None:
        with deadlines.limit(10):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.in_flight() == 0


async def test_a_cancel_from_elsewhere_wins_over_an_expiry() -> None:
    deadlines = CallDeadlines(tick=TICK)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def call() -> None:
        with deadlines.limit(0.02):
            inside.set()
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                # The deadline cancelled us; a shutdown cancels too before we leave.
                release.set()
                await asyncio.sleep(0)
                raise

    task = asyncio.create_task(call())
    await inside.wait()
    await release.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_limits_on_two_loops_at_once_keep_to_their_own_loop() -> None:
    deadlines = CallDeadlines(tick=TICK)

    def run_elsewhere() -> str:
        async def slow() -> str:
            try:
                with deadlines.limit(0.05):
                    await asyncio.sleep(5)
            except TimeoutError:
                return "timeout"
            return "ok"

        return asyncio.run(slow())

    elsewhere = asyncio.get_running_loop().run_in_executor(None, run_elsewhere)
    with pytest.raises(TimeoutError), deadlines.limit(0.05):
        await asyncio.sleep(5)
    with deadlines.limit(1.0):
        await asyncio.sleep(0.01)
    assert await elsewhere == "timeout"


async def test_nested_limits_each_time_out_on_their_own() -> None:
    deadlines = CallDeadlines(tick=TICK)
    with deadlines.limit(1.0):
        with pytest.raises(TimeoutError), deadlines.limit(0.03):
            await asyncio.sleep(5)
        await asyncio.sleep(0.05)  # the outer limit still stands, and is not hit
    with pytest.raises(TimeoutError), deadlines.limit(0.03), deadlines.limit(1.0):
        await asyncio.sleep(5)


async def test_a_limit_cannot_be_entered_twice() -> None:
    limit = CallDeadlines(tick=TICK).limit(1.0)
    with limit:
        pass
    with pytest.raises(RuntimeError, match="twice"), limit:
        pass


def test_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick"):
        CallDeadlines(tick=0)


def test_a_finished_event_loop_is_let_go() -> None:
    deadlines = CallDeadlines(tick=TICK)

    async def call() -> None:
        with deadlines.limit(1.0):
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(call())
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None and len(deadlines._loops) == 0


def test_loops_one_after_another_each_get_their_own_timer() -> None:
    # The entry of the loop looked up last is kept at hand: a later loop must not use it.
    deadlines = CallDeadlines(tick=TICK)

    async def overdue() -> str:
        try:
            with deadlines.limit(0.03):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timeout"
        return "ok"

    assert [asyncio.run(overdue()) for _ in range(3)] == ["timeout"] * 3
