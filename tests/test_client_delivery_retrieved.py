"""send() waits on the delivery and the outcome together (asyncio.wait, which cancels
neither): a send that timed out (or was cancelled) there left the delivery future to fail
later with nobody retrieving it, an ERROR with a traceback per send (review h67q)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from paystream.client import OutcomeTimeout, build_command
from tests.test_client_outcome_before_ack import _client_with_pending_delivery

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize("how", ["timeout", "cancelled"])
async def test_a_delivery_failing_after_send_gave_up_is_retrieved(how: str) -> None:
    """The broker took the record and went away: send() gives up at its deadline (30 s by
    default; aiokafka's request timeout is 40 s), then aiokafka fails the delivery
    (KafkaTimeoutError, set as aiokafka does: only if not done). Before this change the
    awaited delivery was cancelled with the send; now nobody retrieves its exception and
    asyncio logs 'Future exception was never retrieved' (an ERROR with a traceback)."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        client, sent = await _client_with_pending_delivery()
        cmd = build_command("payment.create", "acme", {})
        task = asyncio.create_task(client.send(cmd, timeout=0.2 if how == "timeout" else 30))
        while not sent:
            await asyncio.sleep(0.01)
        if how == "cancelled":
            for _ in range(5):  # (the send, handed over, waits on delivery and outcome)
                await asyncio.sleep(0)
            task.cancel()
        (result,) = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(result, OutcomeTimeout | asyncio.CancelledError), result
        delivery = sent.pop()[2]
        if not delivery.done():  # (aiokafka's MessageBatch.failure)
            delivery.set_exception(KafkaTimeoutError())
        del delivery, task, result
        await client.stop()
        for _ in range(3):
            await asyncio.sleep(0)
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    never = [c for c in unretrieved if "never retrieved" in str(c.get("message"))]
    assert not never, never
