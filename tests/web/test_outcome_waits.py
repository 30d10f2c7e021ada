"""The ingress's outcome reader: started once, bounded in its start, never after stop.

The Kafka client is replaced by a stand-in here (its start slow, failing or fine): what
is held is OutcomeWaits's own bookkeeping around it. The real reader is exercised by
tests/e2e/test_http_ingress.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paystream.settings import load_settings
from paystream.web import outcome_waits
from paystream.web.outcome_waits import OutcomeWaits

pytestmark = pytest.mark.asyncio


SLOW_START = 2.0  # seconds: a start slower than the short waits below


class _Client:
    """A stand-in for PaystreamClient: ``behaviour`` says how its start goes."""

    behaviour = "ok"
    started = 0
    stopped = 0

    def __init__(self, settings: Any) -> None:
        self.awaited = 0
        self.reading = False

    async def start(self) -> None:
        type(self).started += 1
        if self.behaviour == "slow":
            await asyncio.sleep(SLOW_START)
        if self.behaviour == "stuck":
            await asyncio.sleep(3600)
        if self.behaviour == "fail":
            await asyncio.sleep(0.05)
            raise ConnectionError("no broker")
        self.reading = True

    async def stop(self) -> None:
        type(self).stopped += 1
        self.reading = False


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> type[_Client]:
    class Client(_Client):
        pass

    monkeypatch.setattr(outcome_waits, "PaystreamClient", Client)
    return Client


def _waits(clock: list[float]) -> OutcomeWaits:
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9")
    return OutcomeWaits(settings, clock=lambda: clock[0])


async def test_one_reader_for_concurrent_first_waits(client: type[_Client]) -> None:
    waits = _waits([0.0])
    readers = await asyncio.gather(*(waits.reader(within=1) for _ in range(5)))
    assert client.started == 1 and len({id(r) for r in readers}) == 1


async def test_a_short_wait_does_not_cancel_a_slow_start(client: type[_Client]) -> None:
    """A sender that gives up answers 202; the start goes on for the next ones (a start
    slower than every sender's wait would otherwise never finish)."""
    client.behaviour = "slow"
    waits = _waits([0.0])
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await waits.reader(within=0.1) is None
    # (Well before the start ends: a loaded host's loop runs late by a few hundred ms.)
    assert loop.time() - began < SLOW_START / 2
    assert await waits.reader(within=SLOW_START * 3) is not None
    assert client.started == 1


async def test_a_failed_start_is_not_retried_by_each_request(client: type[_Client]) -> None:
    client.behaviour = "fail"
    clock = [0.0]
    waits = _waits(clock)
    answers = await asyncio.gather(*(waits.reader(within=1) for _ in range(4)))
    assert answers == [None] * 4
    assert await waits.reader(within=1) is None
    assert client.started == 1
    clock[0] += OutcomeWaits.RETRY_START_SECONDS
    client.behaviour = "ok"
    assert await waits.reader(within=1) is not None
    assert client.started == 2


async def test_stopping_ends_a_start_under_way(client: type[_Client]) -> None:
    client.behaviour = "stuck"
    waits = _waits([0.0])
    assert await waits.reader(within=0.05) is None
    await asyncio.wait_for(waits.stop(), 5)
    assert await waits.reader(within=1) is None
    assert client.started == 1


async def test_no_reader_after_stop(client: type[_Client]) -> None:
    waits = _waits([0.0])
    assert await waits.reader(within=1) is not None
    await waits.stop()
    assert client.stopped == 1
    assert await waits.reader(within=1) is None
    assert client.started == 1


async def test_an_idle_reader_stops_and_a_busy_one_does_not(client: type[_Client]) -> None:
    clock = [0.0]
    waits = _waits(clock)
    reader = await waits.reader(within=1)
    assert reader is not None
    reader.awaited = 1
    clock[0] += 1000
    await waits.stop_if_idle(300)
    assert client.stopped == 0
    reader.awaited = 0
    await waits.stop_if_idle(300)
    assert client.stopped == 1
    assert await waits.reader(within=1) is not None  # started again at the next wait
    assert client.started == 2


async def test_a_sender_waiting_on_a_start_that_stop_ends_gets_none(client: type[_Client]) -> None:
    client.behaviour = "stuck"
    waits = _waits([0.0])
    waiting = asyncio.ensure_future(waits.reader(within=3))
    while not client.started:  # (until the start is under way)
        await asyncio.sleep(0)
    await waits.stop()
    assert await waiting is None  # (not CancelledError: its handler answers 202)


async def test_a_client_that_cannot_even_be_made_is_a_failed_start(
    client: type[_Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unmakeable(settings: Any) -> Any:
        raise FileNotFoundError("ca.crt")

    monkeypatch.setattr(outcome_waits, "PaystreamClient", unmakeable)
    waits = _waits([0.0])
    assert await waits.reader(within=1) is None
    assert await waits.reader(within=1) is None  # (not tried again at once)
