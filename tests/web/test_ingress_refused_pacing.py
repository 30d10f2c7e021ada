"""A tenant's rate limit (the ingress's flood guard) bounds what its key makes the
ingress do, refused requests included (review h67k): a command refused as sent spent no
token, and the limit was looked at only after the body was read, decoded, scanned and
validated, so a tenant limited to 1 command/s had every request it sent parsed in full."""

from __future__ import annotations

import json
from typing import Any

import aiohttp.web
import pytest
from aiohttp.test_utils import TestClient, TestServer

from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.web import ingress as ingress_module
from tests.web.ingress_app import ingress_app

pytestmark = pytest.mark.asyncio


def _event(command_id: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": command_id,
            "source": "/t",
            "type": "com.paystream.command.customer.create",
            "tenantid": "acme",
            "data": data,
        }
    ).encode()


# Refused 400 (metadata values are short), after a full parse and card-data scan.
_HEAVY_INVALID = _event("heavy", {"metadata": {"n": "1 " * 30_000}})


def _paced_ingress(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[aiohttp.web.Application, str, list[int]]:
    key_id, key, kept = new_key()
    parsed = [0]
    decoded = ingress_module._decoded

    def counted(request: Any, body: bytes) -> Any:
        parsed[0] += 1
        return decoded(request, body)

    monkeypatch.setattr(ingress_module, "_decoded", counted)
    app, _, _ = ingress_app(
        Tenant(
            tenant_id="acme",
            ingress_keys={key_id: kept},
            limits=TenantLimits(commands_per_second=1, burst=1),
        )
    )
    return app, key, parsed


async def test_a_tenant_over_its_rate_is_refused_before_its_body_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its one token spent, the tenant's next requests within the second are over its
    rate: refused 429 before their bodies are decoded, whatever they hold. (Now each is
    parsed and scanned in full and answered 400.)"""
    app, key, parsed = _paced_ingress(monkeypatch)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"}
    async with TestClient(TestServer(app)) as client:
        first = await client.post(
            "/v1/commands", data=_event("ok", {"email": "a@example.com"}), headers=headers
        )
        assert first.status == 202
        statuses = []
        for _ in range(10):
            resp = await client.post("/v1/commands", data=_HEAVY_INVALID, headers=headers)
            statuses.append(resp.status)
    assert statuses == [429] * 10, statuses
    assert parsed[0] == 1, f"{parsed[0]} bodies parsed for a tenant paced at 1/s"


async def test_refused_requests_count_against_the_rate_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of requests refused as sent is paced as one of commands: at most the burst
    of them is parsed before the tenant is over its rate. (Now all ten are parsed: the
    limit never sees a refused one.)"""
    app, key, parsed = _paced_ingress(monkeypatch)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"}
    async with TestClient(TestServer(app)) as client:
        statuses = []
        for _ in range(10):
            resp = await client.post("/v1/commands", data=_HEAVY_INVALID, headers=headers)
            statuses.append(resp.status)
    assert statuses[0] == 400 and set(statuses[1:]) == {429}, statuses
    assert parsed[0] == 1, f"{parsed[0]} bodies parsed for a tenant paced at 1/s"
