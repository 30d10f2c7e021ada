"""The ingress's flood guard and commands it never produced (review h59f)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.web.produce import NotProduced
from tests.web.ingress_app import ingress_app


async def test_a_command_never_produced_spends_no_token() -> None:
    """Burst 1: the broker unreachable (NotProduced, maybe_taken=False: "the command was
    not taken"), the sender is told 503 and to send it again. Sent again once the broker
    is back, it must go through, not be refused 429 for a command that never reached
    the topic."""
    key_id, key, kept = new_key()
    broker_up = [False]
    produced: list[Any] = []

    async def produce(rec: Any, tenant: str) -> None:
        if not broker_up[0]:
            raise NotProduced("no connection", maybe_taken=False)
        produced.append(rec)

    app, _, _ = ingress_app(
        Tenant(
            tenant_id="acme",
            ingress_keys={key_id: kept},
            limits=TenantLimits(commands_per_second=1, burst=1),
        ),
        produce=produce,
    )
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": "cmd-1",
            "source": "/t",
            "type": "com.paystream.command.customer.create",
            "tenantid": "acme",
            "data": {"email": "a@example.com"},
        }
    ).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"}
    async with TestClient(TestServer(app)) as client:
        first = await client.post("/v1/commands", data=body, headers=headers)
        assert first.status == 503 and "not taken" in (await first.json())["message"]
        broker_up[0] = True
        again = await client.post("/v1/commands", data=body, headers=headers)
        assert again.status == 202, (again.status, await again.json())


def test_a_token_given_back_fills_no_more_than_the_burst() -> None:
    from paystream.tenancy.token_bucket import TokenBucket

    bucket = TokenBucket(1, 2)
    bucket.take(0)
    bucket.give_back()
    bucket.give_back()
    assert bucket.tokens == bucket.capacity
