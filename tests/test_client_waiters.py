"""Callers awaiting one command's outcome (send, expect) do not disturb each other, and
those that gave up are forgotten (no broker needed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import OutcomeTimeout, PaystreamClient
from paystream.settings import load_settings

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


def _client() -> PaystreamClient:
    return PaystreamClient(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))


def _outcome(cause: str) -> CloudEvent:
    return CloudEvent(
        {"id": f"out-{cause}", "source": "/paystream/tenants/acme/payment",
         "type": "com.paystream.payment.succeeded", "specversion": "1.0",
         "tenantid": "acme", "causationid": cause},
        {},
    )  # fmt: skip


def _command(command_id: str) -> CloudEvent:
    return CloudEvent(
        {"id": command_id, "source": "/app", "type": "com.paystream.command.payment.create",
         "specversion": "1.0", "tenantid": "acme"},
        {},
    )  # fmt: skip


def _started(client: PaystreamClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    monkeypatch.setattr(client, "_enqueue", enqueue)
    client._reader = asyncio.create_task(asyncio.sleep(60))


async def test_an_expect_outlives_a_timed_out_send_of_the_same_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The documented flow for a parked command: `expect` its outcome, `send` it, the
    send gives up ("parked ... see `paystream dlq list`"), the operator replays it: the
    replay's outcome reaches the `expect` future (the send's clean-up took only its own)."""
    client = _client()
    _started(client, monkeypatch)
    waiter = client.expect("acme", "c1")
    with pytest.raises(OutcomeTimeout):
        await client.send(_command("c1"), timeout=0.05)
    client._dispatch(_outcome("c1"), None)  # the replayed command's outcome
    try:
        assert waiter.done(), "expect() future orphaned: the outcome arrived, nobody got it"
    finally:
        client._reader.cancel()


async def test_expect_futures_given_up_on_are_forgotten() -> None:
    """A long-lived client (a service) awaiting outcomes with expect() and wait_for()
    keeps no future for the commands whose outcome never came."""
    client = _client()
    for i in range(1000):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.expect("acme", f"c{i}"), 0)
    assert len(client._waiters) == 0, f"{len(client._waiters)} futures kept"


async def test_an_expect_caller_giving_up_leaves_a_concurrent_send_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One task waits for a command's outcome with `wait_for(client.expect(...), 0.05)`,
    as tests/test_cli.py does; another sends that command with a 5 s timeout. The first
    giving up cancels only its own future: the send gets the outcome arriving later."""
    client = _client()
    _started(client, monkeypatch)
    observer = asyncio.ensure_future(asyncio.wait_for(client.expect("acme", "c2"), 0.05))
    sender = asyncio.ensure_future(client.send(_command("c2"), timeout=5))
    with contextlib.suppress(TimeoutError):
        await observer
    for _ in range(1000):  # a few loop turns: the send registers its waiter
        if ("acme", "c2") in client._waiters:
            break
        await asyncio.sleep(0)
    assert ("acme", "c2") in client._waiters
    client._dispatch(_outcome("c2"), None)  # the outcome arrives within the send's 5 s
    try:
        result = await sender
    except asyncio.CancelledError:
        result = "CancelledError"
    finally:
        client._reader.cancel()
    assert not isinstance(result, str), "send() of c2 was cancelled by another task's wait_for"


async def test_a_reader_decodes_only_the_outcomes_that_may_answer_a_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ingress's reader follows every tenant's outcomes for the few it waits on: a
    binary-mode outcome whose tenant, cause and answered command no one awaits is passed
    over unread; one that may answer, and one whose headers cannot tell (structured
    mode), are decoded as before."""
    from types import SimpleNamespace

    from paystream import client as client_mod
    from paystream.settings import CloudEventsMode
    from paystream.streams.codec import encode_event
    from paystream.streams.outcomes import ANSWERS_HEADER

    client = _client()
    waiter = client.expect("acme", "c1")
    retried = client.expect("acme", "first")  # answered by a retry's outcome naming it
    decoded: list[str] = []
    real_decode = client_mod.decode_record

    def counting(key: Any, value: Any, headers: Any) -> Any:
        event = real_decode(key, value, headers)
        decoded.append(str(event.get_extension("causationid")))
        return event

    monkeypatch.setattr(client_mod, "decode_record", counting)

    def record(cause: str, mode: CloudEventsMode, *extra: tuple[str, bytes]) -> Any:
        rec = encode_event(_outcome(cause), b"acme", mode)
        return SimpleNamespace(key=rec.key, value=rec.value, headers=[*rec.headers, *extra])

    async def outcomes() -> Any:
        yield record("someone-else", CloudEventsMode.BINARY)
        yield record("retry", CloudEventsMode.BINARY, (ANSWERS_HEADER, b"first"))
        yield record("structured-other", CloudEventsMode.STRUCTURED)
        yield record("c1", CloudEventsMode.BINARY)

    monkeypatch.setattr(client, "_consumer", outcomes())
    await client._read()
    assert decoded == ["retry", "structured-other", "c1"]
    assert (await waiter).get_extension("causationid") == "c1"
    assert (await retried).get_extension("causationid") == "retry"
