"""InsightsRunner.await_tenants: a batch is counted only once this worker's registry
knows every tenant registered when its outcomes were made (an outcome of a tenant it
does not know is skipped and committed past, for good: reviews h62a, h62d)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.agents import insights
from paystream.agents.insights import InsightsRunner
from paystream.settings import CloudEventsMode, Settings
from paystream.streams.outcomes import CommandRef, RejectReason, encode_outcome, rejection_data
from tests.insights.test_runner import _Event, _Msg

pytestmark = pytest.mark.asyncio

PAID = {"object": {"amount": 900, "amount_captured": 900, "currency": "USD"}}


def _outcome(
    tenant: str, kind: str = "payment.succeeded", data: Any = None, made: float | None = None
) -> _Event:
    cmd = CommandRef(tenant, "cmd-1", "payment.create", "cmd-1", datetime.now(UTC))
    rec = encode_outcome(cmd, kind, PAID if data is None else data, CloudEventsMode.BINARY)
    return _Event(_Msg(rec.key, rec.value, list(rec.headers), 0, 0, made))


def _refused(tenant: str, reason: RejectReason) -> _Event:
    return _outcome(tenant, "command.rejected", rejection_data("payment.create", reason, "no"))


def _runner(tenants: dict[str, Any], ready: asyncio.Event, asked: list[int]) -> InsightsRunner:
    async def caught_up() -> float:
        asked.append(1)
        tenants.setdefault("new", object())  # the registry read to its end: it was there
        return time.time()

    return InsightsRunner(
        Settings(cloudevents_mode=CloudEventsMode.BINARY),  # type: ignore[call-arg]
        tenants,
        None,
        None,
        tenants_ready=ready,
        registry_caught_up=caught_up,
    )


def _loaded() -> asyncio.Event:
    ready = asyncio.Event()
    ready.set()
    return ready


async def test_known_tenants_wait_for_nothing() -> None:
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    assert await runner.await_tenants([_outcome("acme"), _outcome("acme")]) is False
    assert asked == []


async def test_a_tenant_not_known_has_the_registry_read_to_its_end() -> None:
    asked: list[int] = []
    tenants: dict[str, Any] = {"acme": object()}
    runner = _runner(tenants, _loaded(), asked)
    assert await runner.await_tenants([_outcome("acme"), _outcome("new")]) is True
    assert asked == [1] and "new" in tenants
    # A refusal only a worker that found the tenant gives asks too.
    limited = _refused("other", RejectReason.RATE_LIMITED)
    assert await runner.await_tenants([limited]) is True
    assert asked == [1, 1]


async def test_a_made_up_tenants_unknown_tenant_refusal_asks_nothing() -> None:
    """The worker that answered did not know the tenant either (nor does a record that
    is no outcome name one)."""
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    made_up = [_refused(f"nosuch-{n}", RejectReason.UNKNOWN_TENANT) for n in range(3)]
    garbage = _Event(_Msg(b"nosuch", b"not an event", [], 0, 0))
    assert await runner.await_tenants([*made_up, garbage]) is False
    assert asked == []


@pytest.mark.parametrize(
    "reason",
    [
        RejectReason.VALIDATION_ERROR,
        RejectReason.UNKNOWN_COMMAND,
        RejectReason.TENANT_MISMATCH,
        RejectReason.UNSUPPORTED,
        RejectReason.CARD_DATA_FORBIDDEN,
    ],
)
async def test_a_refusal_anyone_may_be_given_asks_once_in_a_while(
    reason: RejectReason, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given before the tenant lookup to a made-up tenant's malformed commands, or after
    it to a real one's (review h62f): a stream of them costs the outcome agent a round
    trip (a second on the embedded broker) in REFUSAL_ASK_SECONDS, not one a batch
    (review h62e)."""
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    for n in range(3):
        await runner.await_tenants([_refused(f"nosuch-{n}", reason)])
    assert asked == [1]
    later = time.monotonic() + insights.REFUSAL_ASK_SECONDS
    monkeypatch.setattr(insights.time, "monotonic", lambda: later)
    assert await runner.await_tenants([_refused("nosuch-3", reason)]) is True
    assert asked == [1, 1]
    # A payment's outcome of a tenant not known asks whenever it comes.
    assert await runner.await_tenants([_outcome("other")]) is True
    assert asked == [1, 1, 1]


async def test_an_outcome_made_before_the_last_read_to_the_end_asks_nothing() -> None:
    """A backlog of a deleted tenant's outcomes asks once, not a batch."""
    asked: list[int] = []
    runner = _runner({"acme": object()}, _loaded(), asked)
    now = time.time()
    assert await runner.await_tenants([_outcome("gone", made=now - 120)]) is True
    assert await runner.await_tenants([_outcome("gone", made=now - 100)]) is False
    assert await runner.await_tenants([_outcome("gone", made=time.time())]) is True
    assert asked == [1, 1]


async def test_nothing_is_judged_before_the_registry_has_loaded() -> None:
    ready, asked = asyncio.Event(), []
    runner = _runner({"acme": object()}, ready, asked)
    waiting = asyncio.create_task(runner.await_tenants([_outcome("acme")]))
    for _ in range(3):  # (turns enough to get to its wait)
        await asyncio.sleep(0)
    assert not waiting.done()
    ready.set()
    assert await waiting is True and asked == []
