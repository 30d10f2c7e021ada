"""An outcome read while the command's delivery acknowledgement is still pending (a lost or
late produce response) was thrown away (review h67p): send() reported "no outcome, it may
still be sent and run" although the outcome was in hand (no broker needed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import RequestTimedOutError
from cloudevents.core.v1.event import CloudEvent

from paystream.client import PaystreamClient, build_command
from paystream.settings import CloudEventsMode, load_settings
from paystream.streams.codec import encode_event
from paystream.streams.outcomes import REQUEST_HEADER

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class _Records:
    """The outcome reader's consumer: records put on a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> _Records:
        return self

    async def __anext__(self) -> Any:
        return await self.queue.get()

    async def stop(self) -> None:
        pass


def _outcome_record(tenant: str, cause: str, request: str) -> Any:
    event = CloudEvent(
        {"id": f"out-{cause}", "source": f"/paystream/tenants/{tenant}/payment",
         "type": "com.paystream.payment.succeeded", "specversion": "1.0",
         "tenantid": tenant, "causationid": cause},
        {"tenant_id": tenant, "command_id": cause},
    )  # fmt: skip
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    headers = (*rec.headers, (REQUEST_HEADER, request.encode()))
    return SimpleNamespace(key=rec.key, value=rec.value, headers=headers)


async def _client_with_pending_delivery() -> tuple[PaystreamClient, list[Any]]:
    client = PaystreamClient(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    client._consumer = _Records()  # type: ignore[assignment]
    sent: list[Any] = []

    async def enqueue(command: CloudEvent, request: str | None = None) -> Any:
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent.append((command, request, delivery))
        return delivery  # handed over; the broker's acknowledgement has not come (yet)

    async def no_producer() -> None:
        pass

    client._enqueue = enqueue  # type: ignore[method-assign]
    client._producer = SimpleNamespace(stop=no_producer)  # type: ignore[assignment]
    client._reader = asyncio.create_task(client._read())
    return client, sent


async def test_an_outcome_read_before_the_acknowledgement_is_the_answer() -> None:
    """The produce response is late (the broker appended the command, the worker ran it,
    its outcome was read): send() must return that outcome, not OutcomeTimeout."""
    client, sent = await _client_with_pending_delivery()
    cmd = build_command("payment.create", "acme", {})
    task = asyncio.create_task(client.send(cmd, timeout=0.5))
    while not sent:
        await asyncio.sleep(0.01)
    await client._consumer.queue.put(_outcome_record("acme", cmd.get_id(), sent[0][1]))
    (result,) = await asyncio.gather(task, return_exceptions=True)
    await client.stop()
    assert isinstance(result, CloudEvent), f"the outcome was read, yet: {result!r}"


async def test_an_outcome_read_before_a_failed_acknowledgement_is_the_answer() -> None:
    """The produce response is lost (RequestTimedOut) after the broker appended it and
    the outcome was read: "the broker failed ... retry" is not the answer."""
    client, sent = await _client_with_pending_delivery()
    cmd = build_command("payment.create", "acme", {})
    task = asyncio.create_task(client.send(cmd, timeout=5))
    while not sent:
        await asyncio.sleep(0.01)
    await client._consumer.queue.put(_outcome_record("acme", cmd.get_id(), sent[0][1]))
    for _ in range(100):  # the reader resolves the send's future
        await asyncio.sleep(0.01)
        if not client._waiters:
            break
    sent[0][2].set_exception(RequestTimedOutError())
    (result,) = await asyncio.gather(task, return_exceptions=True)
    await client.stop()
    assert isinstance(result, CloudEvent), f"the outcome was read, yet: {result!r}"
