"""Per-call deadlines on one shared timer, and the call policy's time limit built on them."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from paystream import metrics
from paystream.gateways.deadlines import CallDeadlines
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.retry import RetriesExhausted
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy

TICK = 0.01


async def test_a_call_within_its_limit_is_untouched_and_the_timer_stops() -> None:
    deadlines = CallDeadlines(tick=TICK)
    with deadlines.limit(1.0):
        assert deadlines.in_flight() == 1
        await asyncio.sleep(0.02)
    assert deadlines.in_flight() == 0
    await asyncio.sleep(TICK * 3)
    on_loop = deadlines._loops[asyncio.get_running_loop()]
    assert on_loop.timer is None  # nothing in flight: no timer runs


async def test_an_overdue_call_raises_timeout_error_within_a_tick() -> None:
    deadlines = CallDeadlines(tick=TICK)
    started = time.monotonic()
    with pytest.raises(TimeoutError), deadlines.limit(0.05):
        await asyncio.sleep(5)
    took = time.monotonic() - started
    assert 0.05 <= took < 0.05 + TICK + 0.5  # generous slack for a loaded CI host
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


def _tenant() -> Tenant:
    return Tenant(tenant_id="t-deadline", gateway="simulator")


async def test_policy_turns_a_slow_provider_into_a_retried_timeout() -> None:
    settings = load_settings(
        gateway_timeout_seconds=0.05, gateway_max_attempts=2, gateway_backoff_base_ms=1
    )
    call = call_policy(settings)(_tenant())
    attempts = 0

    async def slow() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(5)
        return "never"

    with pytest.raises(RetriesExhausted) as caught:
        await call(slow)
    assert attempts == 2
    assert caught.value.code is ErrorCode.TIMEOUT
    assert "no answer within 0.05s" in caught.value.message
    timeouts = metrics.GATEWAY_CALLS.labels("simulator", ErrorCode.TIMEOUT.value)
    assert timeouts._sum.get() > 0


async def test_policy_passes_answers_and_provider_errors_through() -> None:
    call = call_policy(load_settings(gateway_timeout_seconds=1.0))(_tenant())

    async def answers() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def declines() -> str:
        raise GatewayError(ErrorCode.CARD_DECLINED, "declined", provider="simulator")

    assert await call(answers) == "ok"
    with pytest.raises(GatewayError) as caught:
        await call(declines)
    assert caught.value.code is ErrorCode.CARD_DECLINED


async def test_policy_breaker_gauge_follows_the_circuit() -> None:
    settings = load_settings(
        gateway_timeout_seconds=1.0,
        gateway_max_attempts=1,
        breaker_failure_threshold=1,
        breaker_reset_seconds=60,
    )
    tenant = Tenant(tenant_id="t-gauge", gateway="simulator")
    call = call_policy(settings)(tenant)
    gauge = metrics.BREAKER_OPEN.labels("t-gauge", "simulator")

    async def ok() -> str:
        return "ok"

    async def down() -> str:
        raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")

    await call(ok)
    assert gauge._value.get() == 0
    with pytest.raises(RetriesExhausted):
        await call(down)
    assert gauge._value.get() == 1


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
