"""How the client matches outcomes to the commands it waits for (no broker needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import PaystreamClient, _asks, build_command
from paystream.settings import load_settings

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

DATA = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _client() -> PaystreamClient:
    return PaystreamClient(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))


def _outcome(cause: str, key: str | None, kind: str = "payment.succeeded") -> CloudEvent:
    attrs: dict[str, Any] = {
        "id": f"out-{cause}-{kind}",
        "source": "/paystream/tenants/acme/payment",
        "type": f"com.paystream.{kind}",
        "specversion": "1.0",
        "tenantid": "acme",
        "causationid": cause,
    }
    if key is not None:
        attrs["idempotencykey"] = key
    return CloudEvent(attributes=attrs, data={})


def _waiting(client: PaystreamClient, command: CloudEvent) -> asyncio.Future[CloudEvent]:
    """Register a waiter as send() does, without a broker."""
    waiter: asyncio.Future[CloudEvent] = asyncio.get_running_loop().create_future()
    client._waiters[command.get_id()] = waiter
    key = (str(command.get_extension("tenantid")), str(command.get_extension("idempotencykey")))
    client._by_key.setdefault(key, []).append((waiter, _asks(command)))
    client._sent[command.get_id()] = _asks(command)
    return waiter


async def test_own_outcome_answers_its_command() -> None:
    client = _client()
    cmd = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    waiter = _waiting(client, cmd)
    client._dispatch(_outcome(cmd.get_id(), "k1"))
    assert waiter.done() and waiter.result().get_extension("causationid") == cmd.get_id()


async def test_a_retry_is_answered_by_the_first_commands_outcome() -> None:
    client = _client()
    retry = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    waiter = _waiting(client, retry)
    client._dispatch(_outcome("sent-by-someone-else", "k1"))
    assert waiter.done()


async def test_same_client_retry_matches_its_own_earlier_command() -> None:
    client = _client()
    first = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    client._sent[first.get_id()] = _asks(first)  # sent and answered earlier
    retry = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    waiter = _waiting(client, retry)
    client._dispatch(_outcome(first.get_id(), "k1"))
    assert waiter.done()


async def test_a_different_request_under_the_key_waits_for_its_own_outcome() -> None:
    client = _client()
    first = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    client._sent[first.get_id()] = _asks(first)
    other = build_command("payment.create", "acme", {**DATA, "amount": 101}, idempotency_key="k1")
    waiter = _waiting(client, other)
    client._dispatch(_outcome(first.get_id(), "k1"))  # a duplicate of the first's outcome
    assert not waiter.done()
    client._dispatch(_outcome(other.get_id(), "k1", "command.rejected"))
    assert waiter.done() and waiter.result().get_type().endswith("command.rejected")


async def test_a_rejection_never_answers_by_key() -> None:
    """e.g. an earlier send under the key was rate limited: not remembered, so this one
    runs afresh and gets its own outcome."""
    client = _client()
    retry = build_command("payment.create", "acme", DATA, idempotency_key="k1")
    waiter = _waiting(client, retry)
    client._dispatch(_outcome("earlier", "k1", "command.rejected"))
    assert not waiter.done()
    client._dispatch(_outcome("other-tenant-or-key", "k2"))
    assert not waiter.done()
