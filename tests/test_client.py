"""How the client matches outcomes to the commands it waits for (no broker needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import PaystreamClient
from paystream.errors import ConfigurationError
from paystream.settings import load_settings

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


def _client() -> PaystreamClient:
    return PaystreamClient(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))


def _outcome(cause: str, kind: str = "payment.succeeded", tenant: str = "acme") -> CloudEvent:
    attrs: dict[str, Any] = {
        "id": f"out-{cause}-{kind}",
        "source": "/paystream/tenants/acme/payment",
        "type": f"com.paystream.{kind}",
        "specversion": "1.0",
        "tenantid": tenant,
        "causationid": cause,
    }
    return CloudEvent(attributes=attrs, data={})


def _waiting(client: PaystreamClient, command_id: str) -> asyncio.Future[CloudEvent]:
    return client.expect("acme", command_id)


async def test_an_outcome_answers_its_cause() -> None:
    client = _client()
    waiter = _waiting(client, "c1")
    client._dispatch(_outcome("c1"), None)
    assert waiter.done() and waiter.result().get_extension("causationid") == "c1"


async def test_a_replay_for_a_retry_answers_the_command_its_record_names() -> None:
    client = _client()
    retry = _waiting(client, "c2")
    client._dispatch(_outcome("c1"), "c2")  # the first command's event, re-emitted for c2
    assert retry.done() and retry.result().get_extension("causationid") == "c1"


async def test_nothing_else_answers_a_command() -> None:
    """Another command's outcome (e.g. under the same key, before this one ran: a rate
    limit, or a success this command conflicts with) is not this command's answer."""
    client = _client()
    waiter = _waiting(client, "c2")
    client._dispatch(_outcome("c1", "command.rejected"), None)
    client._dispatch(_outcome("c1"), None)
    client._dispatch(_outcome("c1"), "c3")
    assert not waiter.done()


async def test_another_tenants_outcome_for_the_same_command_id_is_not_the_answer() -> None:
    """Command ids are unique within a tenant only: globex's order-42 is not acme's."""
    client = _client()
    waiter = _waiting(client, "order-42")
    client._dispatch(_outcome("order-42", tenant="globex"), None)
    assert not waiter.done()
    client._dispatch(_outcome("order-42"), None)
    assert waiter.done() and waiter.result().get_extension("tenantid") == "acme"


async def test_concurrent_sends_of_one_command_share_its_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An application retrying a command while the first send still waits: both get the
    outcome (the second used to replace the first's waiter, and the first's clean-up
    then dropped the second's)."""
    client = _client()
    sent: list[str] = []

    async def publish(command: CloudEvent) -> None:
        sent.append(command.get_id())

    monkeypatch.setattr(client, "publish", publish)
    command = CloudEvent(
        {
            "id": "c9",
            "source": "/app",
            "type": "com.paystream.command.customer.create",
            "specversion": "1.0",
            "tenantid": "acme",
        },
        {},
    )
    first = asyncio.ensure_future(client.send(command, timeout=5))
    second = asyncio.ensure_future(client.send(command, timeout=5))
    while len(sent) < 2:
        await asyncio.sleep(0)
    client._dispatch(_outcome("c9"), None)
    assert (await first).get_id() == (await second).get_id() == "out-c9-payment.succeeded"
    assert client._waiters == {} and not client._senders


async def test_a_missing_events_topic_is_a_clear_error(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    absent = dep.settings.model_copy(update={"events_topic": f"{dep.settings.app_id}.none"})
    with pytest.raises(ConfigurationError, match="run `paystream topics`"):
        async with PaystreamClient(absent):
            pass
