"""The ingress's flood guard and commands it never produced (review h59f)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp.web
from aiohttp.test_utils import TestClient, TestServer

from paystream.settings import load_settings
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant
from paystream.web.ingress import CommandIngress
from paystream.web.produce import NotProduced
from paystream.web.route_errors import json_route_errors


class _NoWaits:
    closed = False

    async def reader(self, within: float) -> None:
        return None


async def test_a_command_never_produced_spends_no_token() -> None:
    """Burst 1: the broker unreachable (NotProduced, maybe_taken=False: "the command was
    not taken"), the sender is told 503 and to send it again. Sent again once the broker
    is back, it must go through, not be refused 429 for a command that never reached
    the topic."""
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9")
    registry = RegistryMirror(settings)
    key_id, key, kept = new_key()
    registry.tenants["acme"] = Tenant(
        tenant_id="acme",
        ingress_keys={key_id: kept},
        limits=TenantLimits(commands_per_second=1, burst=1),
    )
    registry.ready.set()
    broker_up = [False]
    produced: list[Any] = []

    async def produce(rec: Any, tenant: str) -> None:
        if not broker_up[0]:
            raise NotProduced("no connection", maybe_taken=False)
        produced.append(rec)

    ingress = CommandIngress(settings, registry, produce, _NoWaits())
    app = aiohttp.web.Application(middlewares=[json_route_errors])
    app.router.add_post("/v1/commands", ingress.handle, expect_handler=ingress.expect)
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
