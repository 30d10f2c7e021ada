"""Retry policy and circuit breaker, with an injected clock, sleep and jitter source."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.retry import (
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    RetriesExhausted,
    RetryPolicy,
)
from paystream.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(clock: Clock, *, attempts: int = 4, threshold: int = 3) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts,
        backoff_base_seconds=0.1,
        failure_threshold=threshold,
        reset_seconds=5.0,
        sleep=clock.sleep,
        rand=lambda: 1.0,  # the jitter's upper bound, so delays are exact
        clock=clock,
    )


def transient() -> GatewayError:
    return GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="sim")


class Flaky:
    def __init__(self, failures: int, error: GatewayError | None = None) -> None:
        self.failures, self.calls, self.error = failures, 0, error or transient()

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_from_settings() -> None:
    p = RetryPolicy.from_settings(load_settings(gateway_max_attempts=7, gateway_backoff_base_ms=20))
    assert (p.max_attempts, p.backoff_base_seconds) == (7, 0.02)


async def test_retries_with_exponential_backoff_then_succeeds() -> None:
    clock = Clock()
    fn = Flaky(failures=3)
    assert await policy(clock, threshold=10).call("t", "sim", fn) == "ok"
    assert fn.calls == 4
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4])


async def test_jitter_scales_the_delay() -> None:
    p = policy(Clock())
    p.rand = lambda: 0.25
    assert p.delay(3) == pytest.approx(0.1)


async def test_non_retryable_errors_are_not_retried() -> None:
    clock = Clock()
    decline = GatewayError(ErrorCode.CARD_DECLINED, "no", provider="sim")
    fn = Flaky(failures=1, error=decline)
    with pytest.raises(GatewayError) as info:
        await policy(clock).call("t", "sim", fn)
    assert info.value is decline and fn.calls == 1 and clock.slept == []


async def test_exhausted_retries_raise_typed_error() -> None:
    fn = Flaky(failures=99)
    with pytest.raises(RetriesExhausted) as info:
        await policy(Clock(), attempts=3, threshold=10).call("t", "sim", fn)
    assert info.value.attempts == 3 and info.value.retryable
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE and fn.calls == 3


async def test_circuit_opens_fails_fast_then_half_opens() -> None:
    clock = Clock()
    p = policy(clock, attempts=1, threshold=2)
    for _ in range(2):
        with pytest.raises(RetriesExhausted):
            await p.call("t", "sim", Flaky(failures=1))
    assert p.breaker("t", "sim").state is CircuitState.OPEN
    probe = Flaky(failures=0)
    with pytest.raises(CircuitOpen) as info:
        await p.call("t", "sim", probe)
    assert probe.calls == 0 and info.value.retry_after == pytest.approx(5.0)
    # Other tenants on the same provider are unaffected.
    assert await p.call("other", "sim", Flaky(failures=0)) == "ok"
    clock.now += 5.0
    assert await p.call("t", "sim", probe) == "ok"  # the half-open probe closes it
    assert p.breaker("t", "sim").state is CircuitState.CLOSED


async def test_failed_probe_reopens_the_circuit() -> None:
    clock = Clock()
    p = policy(clock, attempts=1, threshold=1)
    with pytest.raises(RetriesExhausted):
        await p.call("t", "sim", Flaky(failures=1))
    clock.now += 5.0
    with pytest.raises(RetriesExhausted):
        await p.call("t", "sim", Flaky(failures=1))
    assert p.breaker("t", "sim").state is CircuitState.OPEN
    with pytest.raises(CircuitOpen):
        await p.call("t", "sim", Flaky(failures=0))


@pytest.mark.parametrize("unexpected", [RuntimeError("a bug"), asyncio.CancelledError()])
async def test_a_probe_ending_without_an_answer_never_wedges_the_circuit(
    unexpected: BaseException,
) -> None:
    """A half-open circuit lets one probe through. A probe that raised something other
    than a GatewayError (an unmapped client error) or was cancelled used to hold that
    slot for good: every later command of the tenant met CircuitOpen until a restart."""
    clock = Clock()
    p = policy(clock, attempts=1, threshold=1)
    with pytest.raises(RetriesExhausted):
        await p.call("t", "sim", Flaky(failures=1))
    clock.now += 5.0

    async def probe() -> str:
        raise unexpected

    with pytest.raises(type(unexpected)):
        await p.call("t", "sim", probe)
    if isinstance(unexpected, asyncio.CancelledError):
        assert await p.call("t", "sim", Flaky(failures=0)) == "ok"  # no verdict: probe again
    else:
        assert p.breaker("t", "sim").state is CircuitState.OPEN  # a failure: open again
        clock.now += 5.0
        assert await p.call("t", "sim", Flaky(failures=0)) == "ok"
    assert p.breaker("t", "sim").state is CircuitState.CLOSED


async def test_a_providers_retry_after_hint_sets_the_least_wait() -> None:
    """Stripe's 409 idempotency_key_in_use frees up only when the other request ends:
    retried after our 0.1 s backoff, every attempt was spent before it did."""
    clock = Clock()
    busy = GatewayError(ErrorCode.RATE_LIMITED, "key in use", provider="sim", retry_after=1.0)
    flaky = Flaky(2, busy)
    assert await policy(clock).call("t1", "sim", flaky) == "ok"
    assert clock.slept == [1.0, 1.0]
    huge = GatewayError(ErrorCode.RATE_LIMITED, "slow down", provider="sim", retry_after=3600.0)
    clock.slept.clear()
    assert await policy(clock).call("t1", "sim", Flaky(1, huge)) == "ok"
    assert clock.slept == [30.0]  # a hint is capped too


async def test_backoff_is_capped() -> None:
    clock = Clock()
    p = policy(clock, attempts=12, threshold=100)
    assert await p.call("t1", "sim", Flaky(11)) == "ok"
    assert max(clock.slept) == 5.0 and clock.slept[:3] == [0.1, 0.2, 0.4]


async def test_declines_are_answers_and_never_open_the_circuit() -> None:
    clock = Clock()
    p = policy(clock, threshold=2)
    declined = GatewayError(ErrorCode.CARD_DECLINED, "declined", provider="sim")
    for _ in range(5):
        with pytest.raises(GatewayError):
            await p.call("t1", "sim", Flaky(1, declined))
    assert p.breaker("t1", "sim").state is CircuitState.CLOSED


async def test_a_half_open_circuit_lets_one_probe_through_at_a_time() -> None:
    clock = Clock()
    p = policy(clock, attempts=1, threshold=1)
    p.trial_wait_seconds = 0.05  # (the second caller waits for the probe, then gives up)
    with pytest.raises(RetriesExhausted):
        await p.call("t1", "sim", Flaky(1))
    clock.now += 5.0  # the reset delay: half-open
    release = asyncio.Event()

    async def slow_probe() -> str:
        await release.wait()
        return "ok"

    probe = asyncio.ensure_future(p.call("t1", "sim", slow_probe))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen):  # a second caller while the probe is out
        await p.call("t1", "sim", Flaky(0))
    release.set()
    assert await probe == "ok"
    assert await p.call("t1", "sim", Flaky(0)) == "ok"  # closed again


async def test_a_refusal_made_before_any_request_says_nothing_of_the_provider() -> None:
    """An unsupported operation or an amount the provider's rules refuse is answered here,
    without a request: as a half-open probe it used to close a circuit whose provider was
    still down, and between real failures it reset their count."""
    clock = Clock()
    p = policy(clock, attempts=1, threshold=2)
    local = UnsupportedOperation("sim", "capture_payment(amount=...)")
    with pytest.raises(RetriesExhausted):
        await p.call("t1", "sim", Flaky(1))
    with pytest.raises(UnsupportedOperation):
        await p.call("t1", "sim", Flaky(1, local))
    with pytest.raises(RetriesExhausted):
        await p.call("t1", "sim", Flaky(1))
    assert p.breaker("t1", "sim").state is CircuitState.OPEN  # two failures in a row
    clock.now += 5.0  # half-open
    with pytest.raises(UnsupportedOperation):
        await p.call("t1", "sim", Flaky(1, local))
    assert p.breaker("t1", "sim").state is CircuitState.HALF_OPEN  # still to be probed
    with pytest.raises(RetriesExhausted):  # the real probe: the provider is still down
        await p.call("t1", "sim", Flaky(1))
    assert p.breaker("t1", "sim").state is CircuitState.OPEN


async def test_an_unreadable_answer_is_not_retried_nor_held_against_the_provider() -> None:
    """A status added by the provider since: retried under the same key it only comes
    back, and each attempt counted against the breaker, whose opening parked every other
    command of the tenant."""
    from paystream.gateways.stripe import mapping

    clock = Clock()
    p = policy(clock, attempts=4, threshold=3)
    calls = 0

    async def new_status() -> object:
        nonlocal calls
        calls += 1
        return mapping.payment({"id": "pi_1", "status": "requires_reauthorization",
                                "amount": 1000, "currency": "usd"})  # fmt: skip

    for _ in range(5):
        with pytest.raises(RetriesExhausted) as info:
            await p.call("t", "stripe", new_status)
        assert info.value.__cause__ is not None
    assert calls == 5 and clock.slept == []  # one attempt each, no waiting
    assert p.breaker("t", "stripe").state is CircuitState.CLOSED

    async def healthy() -> str:
        return "ok"

    assert await p.call("t", "stripe", healthy) == "ok"


def _lost_answer() -> GatewayError:
    return GatewayError(ErrorCode.TIMEOUT, "read timed out", provider="sim")


class AfterLostAnswer:
    """Attempt 1's answer is lost (the provider may have acted); attempt 2 gets ``then``."""

    def __init__(self, then: GatewayError, first: GatewayError | None = None) -> None:
        self.then, self.first, self.calls = then, first or _lost_answer(), 0

    async def __call__(self) -> str:
        self.calls += 1
        raise self.first if self.calls == 1 else self.then


@pytest.mark.parametrize(
    "then",
    [
        GatewayError(ErrorCode.AUTHENTICATION_FAILED, "key rolled", provider="sim"),
        GatewayError(ErrorCode.PERMISSION_DENIED, "account disconnected", provider="sim"),
        GatewayError(
            ErrorCode.PROVIDER_UNAVAILABLE, "no way through", provider="sim", retryable=False
        ),
        UnsupportedOperation("sim", "refund"),  # refused before sending
    ],
    ids=["401", "403", "unreachable", "not-sent"],
)
async def test_a_refusal_that_is_no_answer_after_a_lost_one_parks(then: GatewayError) -> None:
    """Attempt 1 may have charged; attempt 2 is refused before the provider reads the
    request (its key rolled meanwhile: Stripe checks credentials before the idempotency
    key). Ending the command with that refusal would say nothing happened: it is parked
    with the lost answer instead (review finding)."""
    fn = AfterLostAnswer(then)
    with pytest.raises(RetriesExhausted) as info:
        await policy(Clock(), threshold=10).call("t", "sim", fn)
    assert info.value.last.code is ErrorCode.TIMEOUT and info.value.attempts == 2
    assert info.value.__cause__ is then and fn.calls == 2


async def test_an_answer_to_the_request_after_a_lost_one_stands() -> None:
    """A decline on the retry is the provider's answer for the key (it replays what the
    first attempt got, or it ran now): final, as on a first attempt."""
    decline = GatewayError(ErrorCode.CARD_DECLINED, "no", provider="sim", http_status=402)
    with pytest.raises(GatewayError) as info:
        await policy(Clock(), threshold=10).call("t", "sim", AfterLostAnswer(decline))
    assert info.value is decline


async def test_a_refusal_after_a_rate_limit_is_not_held_back() -> None:
    """A 429 ran nothing: a credentials refusal after it is the answer, as on a first try."""
    limited = GatewayError(ErrorCode.RATE_LIMITED, "slow down", provider="sim")
    denied = GatewayError(ErrorCode.AUTHENTICATION_FAILED, "bad key", provider="sim")
    with pytest.raises(GatewayError) as info:
        await policy(Clock(), threshold=10).call("t", "sim", AfterLostAnswer(denied, limited))
    assert info.value is denied


def test_a_closed_circuit_lets_every_call_through_and_records_it() -> None:
    # `before_call` answers a closed circuit at once (no open or half-open checks): the
    # call goes ahead, is recorded as the last one, and nothing else changes.
    clock = Clock()
    breaker = policy(clock).breaker("t1", "sim")
    for now in (1.0, 2.5, 2.5):
        clock.now = now
        assert breaker.before_call() is None
        assert breaker.last_call == now
        assert breaker.state is CircuitState.CLOSED
        assert (breaker.failures, breaker._trial) == (0, None)
    breaker.on_failure()
    breaker.on_failure()  # below the threshold: still closed, failures counted
    assert breaker.before_call() is None and breaker.failures == 2
    breaker.on_failure()  # the threshold: open, then half-open after the reset delay
    assert breaker.state is CircuitState.OPEN
    assert breaker.before_call() == 5.0
    clock.now += 5.0
    assert breaker.before_call() is None and breaker.state is CircuitState.HALF_OPEN
    assert breaker.before_call() == 5.0  # one probe at a time
    breaker.on_success()
    assert breaker.state is CircuitState.CLOSED and breaker.before_call() is None


async def test_a_key_held_by_another_request_never_opens_the_circuit() -> None:
    """Stripe's 409 idempotency_key_in_use says the provider is up and one key is busy
    (a crashed worker's request still holds it): counted as failures, a few such commands
    opened the tenant's circuit and parked every other command of the tenant."""
    clock = Clock()
    p = policy(clock, attempts=2, threshold=2)
    in_use = GatewayError(ErrorCode.IDEMPOTENCY_ERROR, "key in use", provider="sim", retryable=True)
    for _ in range(3):
        with pytest.raises(RetriesExhausted):
            await p.call("t", "sim", Flaky(failures=99, error=in_use))
    assert p.breaker("t", "sim").state is CircuitState.CLOSED
    assert await p.call("t", "sim", Flaky(failures=0)) == "ok"


async def test_a_refusal_of_the_gateways_own_store_is_no_verdict_on_the_provider() -> None:
    """Paddle's in-flight store (Redis) down refuses its creates provider_unavailable,
    retried and parked alike; counted as the provider's failures, it opened the tenant's
    circuit and parked its reads and cancels, which need no such store (review h77g F5).
    As a half-open probe it neither closes nor reopens the circuit."""
    clock = Clock()
    p = policy(clock, attempts=2, threshold=2)
    store_down = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE, "redis down", provider="sim", reached_provider=False
    )
    store_down.local_dependency = True
    for _ in range(3):
        with pytest.raises(RetriesExhausted):
            await p.call("t", "sim", Flaky(failures=99, error=store_down))
    assert p.breaker("t", "sim").state is CircuitState.CLOSED
    with pytest.raises(RetriesExhausted):  # the provider itself failing still counts
        await p.call("t", "sim", Flaky(failures=99))
    assert p.breaker("t", "sim").state is CircuitState.OPEN
    clock.now += 5.0
    with pytest.raises(RetriesExhausted):
        await p.call("t", "sim", Flaky(failures=99, error=store_down))
    breaker = p.breaker("t", "sim")
    assert breaker.state is CircuitState.HALF_OPEN and not breaker.trial_running()
    assert await p.call("t", "sim", Flaky(failures=0)) == "ok"
    assert breaker.state is CircuitState.CLOSED


async def test_a_key_in_use_after_a_timeout_does_not_erase_the_timeout() -> None:
    """A slow provider: our attempt times out, its retry meets the key the provider is
    still running (409). Taken for a success, the 409 reset the count and the circuit
    never opened (review finding)."""
    p = policy(Clock(), attempts=2, threshold=3)
    timeout = GatewayError(ErrorCode.TIMEOUT, "read timed out", provider="sim")
    in_use = GatewayError(ErrorCode.IDEMPOTENCY_ERROR, "key in use", provider="sim", retryable=True)

    class SlowThenBusy:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self) -> str:
            self.calls += 1
            raise timeout if self.calls == 1 else in_use

    for _ in range(3):  # (the third's retry finds the circuit open)
        with pytest.raises((RetriesExhausted, CircuitOpen)):
            await p.call("t", "sim", SlowThenBusy())
    assert p.breaker("t", "sim").state is CircuitState.OPEN


# A call let through before the circuit opened, ending late (cancelled or failed), freed
# the half-open trial's slot: a second probe went to a provider still thought down
# (review h68c).
async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("late", ["cancelled", "failed"])
async def test_a_late_non_trial_call_does_not_let_a_second_probe_out(late: str) -> None:
    now = [0.0]
    policy = RetryPolicy(
        max_attempts=1, backoff_base_seconds=0, failure_threshold=1, reset_seconds=5.0,
        sleep=_no_sleep, clock=lambda: now[0],
    )  # fmt: skip
    slow_x, slow_t = asyncio.Event(), asyncio.Event()
    calls = {"probes": 0}

    async def x() -> str:  # started while the circuit was closed; answers late
        await slow_x.wait()
        raise GatewayError(ErrorCode.TIMEOUT, "no answer", provider="simulator")

    async def down() -> str:
        raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")

    async def trial() -> str:  # the half-open probe, in flight
        calls["probes"] += 1
        await slow_t.wait()
        return "ok"

    task_x = asyncio.create_task(policy.call("t1", "simulator", x))
    await asyncio.sleep(0)
    # (Two calls under way: the threshold is one failure for each.)
    for _ in range(2):
        with pytest.raises(GatewayError):
            await policy.call("t1", "simulator", down)  # opens the circuit
    assert policy.breaker("t1", "simulator").state is CircuitState.OPEN
    now[0] = 10.0
    task_t = asyncio.create_task(policy.call("t1", "simulator", trial))
    await asyncio.sleep(0)
    assert calls["probes"] == 1
    if late == "cancelled":
        task_x.cancel()
    else:
        slow_x.set()
    with pytest.raises((asyncio.CancelledError, RetriesExhausted)):
        await task_x
    now[0] = 20.0  # (past a reset delay again, for the "failed" case)
    # T's probe is still in flight: another call must be held back, not sent beside it.
    # (On the bug it went out as a second probe.) It waits for the probe's verdict, then
    # goes: the probe succeeded.
    third = asyncio.create_task(policy.call("t1", "simulator", trial))
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls["probes"] == 1 and not third.done()
    finally:
        slow_t.set()
    await task_t
    assert await third == "ok"
    assert calls["probes"] == 2


def test_a_former_trials_late_end_does_not_free_the_current_trials_slot() -> None:
    """A plain flag let a former probe, ending late, free the current probe's slot: a
    second probe went out to a provider still thought down (review h68v)."""
    now = [0.0]
    b = CircuitBreaker(failure_threshold=1, reset_seconds=10, clock=lambda: now[0])
    assert b.before_call() is None  # X: let through while closed (slow)
    b.on_failure(None)  # another call fails: open
    now[0] = 10
    assert b.before_call() is None and b.state is CircuitState.HALF_OPEN  # A: the probe
    former = b.trial()
    assert former is not None
    b.on_success()  # X ends late with an answer: closed
    assert b.before_call() is None and b.trial() is None
    b.on_failure(None)  # a closed-circuit call fails: open again
    now[0] = 20
    assert b.before_call() is None  # D: the new probe, in flight
    b.release(former)  # A is cancelled at last
    assert b.before_call() is not None, "a second probe went out while D is in flight"


async def test_calls_side_by_side_meeting_one_blip_do_not_open_the_circuit() -> None:
    """A tenant's commands on different payments run side by side (agents/tenant_chains.py):
    four calls failing twice each before any succeeds were 8 failures in a row, over a
    threshold of 5, where one at a time each success reset the count (review h69d)."""
    policy = RetryPolicy(
        max_attempts=3, backoff_base_seconds=0, failure_threshold=5, reset_seconds=30.0,
        sleep=_no_sleep,
    )  # fmt: skip
    tries: dict[int, int] = {}

    def blip(n: int) -> Any:
        async def fn() -> str:
            tries[n] = tries.get(n, 0) + 1
            await asyncio.sleep(0)
            if tries[n] <= 2:
                raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")
            return "ok"

        return fn

    got = await asyncio.gather(*(policy.call("t1", "simulator", blip(n)) for n in range(4)))
    assert got == ["ok"] * 4
    assert policy.breaker("t1", "simulator").state is CircuitState.CLOSED


async def test_calls_side_by_side_on_a_provider_down_still_open_it() -> None:
    policy = RetryPolicy(
        max_attempts=3, backoff_base_seconds=0, failure_threshold=2, reset_seconds=30.0,
        sleep=_no_sleep,
    )  # fmt: skip

    async def down() -> str:
        await asyncio.sleep(0)
        raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")

    results = await asyncio.gather(
        *(policy.call("t1", "simulator", down) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, (RetriesExhausted, CircuitOpen)) for r in results), results
    assert policy.breaker("t1", "simulator").state is CircuitState.OPEN
    assert policy.breaker("t1", "simulator").in_flight == 0


async def test_a_call_beside_a_failing_probe_waits_for_it_then_is_turned_away() -> None:
    now = [0.0]
    policy = RetryPolicy(
        max_attempts=1, backoff_base_seconds=0, failure_threshold=1, reset_seconds=5.0,
        sleep=_no_sleep, clock=lambda: now[0],
    )  # fmt: skip
    breaker = policy.breaker("t1", "simulator")
    breaker.on_failure(None)  # opened
    now[0] = 10.0
    release = asyncio.Event()
    sent: list[str] = []

    async def probe() -> str:
        sent.append("probe")
        await release.wait()
        raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")

    async def other() -> str:
        sent.append("other")
        return "ok"

    first = asyncio.create_task(policy.call("t1", "simulator", probe))
    await asyncio.sleep(0)
    second = asyncio.create_task(policy.call("t1", "simulator", other))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == ["probe"] and not second.done()  # held back, not a second probe
    release.set()
    with pytest.raises(RetriesExhausted):
        await first
    with pytest.raises(CircuitOpen):  # the probe failed: the circuit is open again
        await second
    assert sent == ["probe"]


def _opened(reset: float, attempts: int = 1) -> tuple[RetryPolicy, list[float]]:
    now = [0.0]
    policy = RetryPolicy(
        max_attempts=attempts, backoff_base_seconds=0, failure_threshold=1,
        reset_seconds=reset, sleep=_no_sleep, clock=lambda: now[0],
    )  # fmt: skip
    policy.breaker("t1", "simulator").on_failure(None)  # opened
    now[0] = 1000.0  # past the reset delay: the next call is the half-open probe
    return policy, now


async def test_a_call_waits_for_a_probe_that_answers_within_the_call_timeout() -> None:
    """The wait was bounded by ``reset_seconds`` (what before_call returns while a probe is
    in flight: 5 s by default), not by the trial wait (10 s) nor by the probe's own limit
    (PAYSTREAM_GATEWAY_TIMEOUT_SECONDS, 10 s): a probe answering after reset_seconds left
    every call waiting on it parked although the provider answered (review h69f). Scaled
    down: reset 0.2 s, the probe answers at 0.4 s."""
    policy, _ = _opened(reset=0.2)

    async def slow_probe() -> str:
        await asyncio.sleep(0.4)  # a recovering provider answers slowly
        return "ok"

    async def other() -> str:
        return "ok"

    probe = asyncio.create_task(policy.call("t1", "simulator", slow_probe))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(policy.call("t1", "simulator", other))
    assert await probe == "ok"
    assert policy.breaker("t1", "simulator").state is CircuitState.CLOSED
    # On the bug: CircuitOpen after 0.2 s; the command is parked for `dlq replay`.
    assert await waiter == "ok"


@pytest.mark.parametrize("ending", ["409", "cancelled"])
async def test_calls_woken_by_a_probe_without_a_verdict_wait_for_the_next_probe(
    ending: str,
) -> None:
    """A probe that ends with no verdict (a 409 on its key, refused before sending,
    cancelled) frees the slot and wakes every waiter: the first becomes the next probe,
    and every other was turned away at once (parked) instead of waiting for that next
    probe, which then succeeded (review h69f)."""
    policy, _ = _opened(reset=5.0)
    go = asyncio.Event()
    sent: list[str] = []

    async def first_probe() -> str:
        sent.append("p")
        await go.wait()
        if ending == "409":
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR, "409", provider="simulator", retryable=True
            )
        raise asyncio.CancelledError

    async def other() -> str:
        sent.append("o")
        await asyncio.sleep(0.05)  # the provider is back: it answers
        return "ok"

    probe = asyncio.create_task(policy.call("t1", "simulator", first_probe))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(policy.call("t1", "simulator", other)) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == ["p"]  # held back behind the probe
    go.set()
    await asyncio.gather(probe, return_exceptions=True)
    got = await asyncio.gather(*waiters, return_exceptions=True)
    assert policy.breaker("t1", "simulator").state is CircuitState.CLOSED
    # On the bug: ["ok", CircuitOpen, CircuitOpen]: two commands parked for nothing.
    assert got == ["ok", "ok", "ok"], got
    assert not any(isinstance(g, CircuitOpen) for g in got)


async def test_a_call_cancelled_as_the_probe_succeeds_does_not_call_the_provider() -> None:
    """On Python 3.11 asyncio.wait_for returns the inner result when the waiting task is
    cancelled in the loop turn the inner wait ends (CPython gh-86296): a call cancelled
    while it waited for the probe's verdict went on to call the provider (review h69f)."""
    now = [0.0]
    policy = RetryPolicy(
        max_attempts=1, backoff_base_seconds=0, failure_threshold=1, reset_seconds=5.0,
        sleep=_no_sleep, clock=lambda: now[0],
    )  # fmt: skip
    breaker = policy.breaker("t1", "simulator")
    breaker.on_failure(None)
    now[0] = 10.0
    go = asyncio.Event()
    sent: list[str] = []

    async def probe() -> str:
        await go.wait()
        return "ok"

    async def charge() -> str:
        sent.append("charge")
        return "ok"

    first = asyncio.create_task(policy.call("t1", "simulator", probe))
    await asyncio.sleep(0)
    second = asyncio.create_task(policy.call("t1", "simulator", charge))
    for _ in range(3):
        await asyncio.sleep(0)
    go.set()
    # Let the probe end (it sets the breaker's event), then cancel the waiter in the
    # same turn as its inner wait completes.
    while breaker.state is not CircuitState.CLOSED:
        await asyncio.sleep(0)
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert second.cancelled(), "the cancel was swallowed"
    assert sent == [], "a cancelled call went on to the provider"
