"""A Paddle ``subscription.resume`` whose answer was lost, parked and re-driven, through
the pipeline against the FAKE Paddle (tests/fixtures/paddle_fake.py; Paddle keeps no
idempotency keys): its new period is charged once at Paddle and counted once toward the
day's volume, whatever came in between (review h82re M4): nothing (a plain re-drive), a
refresh (a Paddle webhook's) that recorded it resumed, or a pause in Paddle's dashboard
after the resume (and its webhook's refresh)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from paystream.agents.pipeline import Inbound
from paystream.gateways.base import PauseSubscription
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle import PaddleGateway
from paystream.gateways.paddle.client import PaddleClient
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_let_through import _answer
from tests.agents.test_let_through import _command as _old_command
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.wire import effects

pytestmark = pytest.mark.asyncio

AMOUNT = 1200  # USD 12.00 a month


@pytest_asyncio.fixture
async def paddle_harness(redis_url: str, paddle_url: str) -> AsyncIterator[Harness]:
    """The harness with its tenants' Paddle calls going to the fake (every tenant's
    sealed API key opens to the fake's)."""
    async with running_harness(redis_url, paddle_api_base=paddle_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(FAKE_PADDLE_API_KEY)
        yield h


class _Cut(PaddleClient):
    """The gateway's client, every answer lost from the first resume's POST on (Paddle
    ran it; the worker sees timeouts until it parks the command) while ``cut``."""

    def __init__(self, inner: PaddleClient) -> None:
        self.__dict__.update(inner.__dict__)
        self.cut = False
        self.resumes = 0

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        settled: Any = None,
    ) -> dict[str, Any]:
        if self.cut:
            raise GatewayError(
                ErrorCode.TIMEOUT, "the answer was lost", provider="paddle", retryable=True
            )
        answer = await super().call(method, path, body=body, query=query, settled=settled)
        if method == "POST" and path.endswith("/resume"):
            self.resumes += 1
            if self.resumes > 1:  # (sent again: answered, for the test to see it)
                return answer
            self.cut = True
            raise GatewayError(
                ErrorCode.TIMEOUT, "the answer was lost", provider="paddle", retryable=True
            )
        return answer


def _command(tenant: str, command_type: str, body: dict[str, Any], command_id: str) -> Inbound:
    """A command record appended now (Paddle's gateway looks for an earlier try among
    what was made since its record's time)."""
    rec = _old_command(tenant, command_type, body, command_id)
    return dataclasses.replace(rec, timestamp_ms=int(time.time() * 1000))


async def _effects(paddle_url: str, effect: str, sub_id: str) -> list[dict[str, Any]]:
    return [e for e in await effects(paddle_url) if e["kind"] == effect and e["id"] == sub_id]


def _volume(h: Harness, t: str) -> tuple[int, int]:
    """The tenant's USD counted toward the day, and held awaiting answers."""
    state = h.processor.limits.stored(t) or {}
    used = int((state.get("volume") or {}).get("USD", 0))
    held = sum(int(hold[2]) for hold in (state.get("held") or {}).values())
    return used, held


async def _paused(h: Harness, paddle_url: str) -> tuple[str, PaddleGateway, str]:
    """A Paddle tenant's subscription s1 paid at checkout, then paused: (the tenant, its
    gateway, Paddle's subscription id)."""
    t = new_tenant_id()
    h.add_tenant(
        t,
        gateway="paddle",
        secrets={"api_key": "v1:sealed"},
        limits={"daily_payment_volume": {"USD": 100_000}},
    )
    cus = await h.send("customer.create", t, {"customer_id": "c1", "email": f"{t}@paddled.test"})
    assert kind(cus) == "customer.created", data(cus)
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_token": "checkout"}
    body |= {"amount": AMOUNT, "currency": "USD", "interval": "month"}
    made = await h.send("subscription.create", t, body)
    assert kind(made) == "subscription.requires_action", data(made)
    checkout = data(made)["object"]["provider_subscription_id"]
    await paddle_checkout(paddle_url, checkout)
    read = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(read)["object"]["status"] == "active", data(read)
    paused = await h.send("subscription.pause", t, {"subscription_id": "s1"})
    assert kind(paused) == "subscription.paused", data(paused)
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, PaddleGateway)
    subs = [e for e in await effects(paddle_url) if e["kind"] == "subscription"]
    sub_id = next(str(e["id"]) for e in subs if e["transaction"] == checkout)
    return t, gateway, sub_id


@pytest.mark.parametrize("between", ["nothing", "refresh", "paused-again"])
async def test_a_resume_re_driven_after_a_lost_answer_is_charged_and_counted_once(
    paddle_harness: Harness, paddle_url: str, between: str
) -> None:
    """Resumed at Paddle (a new period charged), its answer lost: parked with its charge
    held. Then ``between``; re-driven (`dlq replay`): Paddle is not asked to resume
    again (paused again in its dashboard, a second POST charged a second period), and
    the one charge is counted toward the day's volume, nothing left held (after a
    webhook's refresh recorded the invoice, the re-drive counted nothing: its outcome
    lists no invoice of its own)."""
    h = paddle_harness
    t, gateway, sub_id = await _paused(h, paddle_url)
    before, _ = _volume(h, t)
    client = _Cut(gateway._client)
    gateway._client = client
    resume = _command(t, "subscription.resume", {"subscription_id": "s1"}, "r1")
    emits = await h.processor.process(resume)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert client.resumes == 1 and _volume(h, t) == (before, AMOUNT)
    client.cut = False
    if between == "paused-again":  # (the dashboard's pause: not this command's to end)
        await gateway.pause_subscription(
            PauseSubscription(provider_subscription_id=_checkout(h, t)), idempotency_key="dash"
        )
    if between != "nothing":  # (the webhooks' refresh)
        read = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
        wanted = "active" if between == "refresh" else "paused"
        assert data(read)["object"]["status"] == wanted, data(read)
    out = await _answer(h, resume)
    assert kind(out) in ("subscription.resumed", "subscription.updated"), data(out)
    status = "paused" if between == "paused-again" else "active"
    assert data(out)["object"]["status"] == status, data(out)
    assert h.tables.subscriptions[f"{t}:s1"]["status"] == status
    assert len(await _effects(paddle_url, "subscription_resume", sub_id)) == 1
    assert client.resumes == 1
    assert _volume(h, t) == (before + AMOUNT, 0)
    again = await _answer(h, resume)  # (a redelivery: answered from its key)
    assert data(again)["object"]["status"] == status
    assert len(await _effects(paddle_url, "subscription_resume", sub_id)) == 1
    assert _volume(h, t) == (before + AMOUNT, 0)


def _checkout(h: Harness, t: str) -> str:
    return str(h.tables.subscriptions[f"{t}:s1"]["provider_subscription_id"])
