"""Refusals a worker gives after it found the tenant registered (review h62f: by their
reasons the insights could not tell them from a made-up tenant's). Produced by the real
pipeline for a registered tenant, then read by an insights runner whose registry lags
(has not read the new tenant yet): it reads the registry to its end before it would skip
the outcome as unregistered (skipped, it is committed past: lost to the analytics counts
for good)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from paystream.agents.insights import InsightsRunner
from paystream.client import build_command
from paystream.settings import CloudEventsMode, Settings
from tests.agents.harness import Harness, data

pytestmark = pytest.mark.asyncio


@dataclass
class _Msg:
    key: bytes | None
    value: bytes | None
    headers: Any
    timestamp: float | None = None


@dataclass
class _Event:
    message: _Msg


def _outcome_event(h: Harness, emits: list[Any]) -> _Event:
    [rec] = [e.record for e in emits if e.topic == h.settings.events_topic]
    return _Event(_Msg(rec.key, rec.value, list(rec.headers), time.time()))


def _lagging_runner(tenant: str, asked: list[int]) -> InsightsRunner:
    tenants: dict[str, Any] = {}  # the insights worker has not read `tenant` yet

    async def caught_up() -> float:
        asked.append(1)
        tenants[tenant] = object()  # read to its end: it was there
        return time.time()

    ready = asyncio.Event()
    ready.set()
    return InsightsRunner(
        Settings(cloudevents_mode=CloudEventsMode.BINARY),  # type: ignore[call-arg]
        tenants, None, None, tenants_ready=ready, registry_caught_up=caught_up,
    )  # fmt: skip


async def _found_refusal(h: Harness, case: str) -> tuple[str, Any]:
    if case == "invalid_data":  # pipeline.py: model_validate after the tenant lookup
        t = h.add_tenant()
        command = build_command("payment.create", t, {"amount": "lots", "currency": "USD"})
    elif case == "capture_over_authorised":  # handlers.py capture_payment
        t = h.add_tenant()
        body = {"payment_id": "p1", "amount": 1000, "currency": "USD",
                "payment_method_token": "pm_card_visa", "capture": "manual"}  # fmt: skip
        await h.send("payment.create", t, body)
        command = build_command("payment.capture", t, {"payment_id": "p1", "amount": 1001})
    else:  # "unsupported_capability": handlers.py _gateway, the tenant's provider setup
        t = h.add_tenant(gateway_options={"capabilities": ["customers", "payments"]})
        cus = await h.send("customer.create", t, {})
        command = build_command(
            "payment_method.attach", t,
            {"customer_id": data(cus)["entity_id"], "token": "pm_card_visa"},
        )  # fmt: skip
    emits, out = await h.send_event(command)
    assert out is not None and out.get_type() == "com.paystream.command.rejected"
    return t, (emits, data(out)["reason"])


@pytest.mark.parametrize(
    "case", ["invalid_data", "capture_over_authorised", "unsupported_capability"]
)
async def test_a_refusal_given_after_the_tenant_was_found_has_the_registry_read(
    harness: Harness, case: str
) -> None:
    tenant, (emits, reason) = await _found_refusal(harness, case)
    assert reason in ("validation_error", "unsupported")
    asked: list[int] = []
    runner = _lagging_runner(tenant, asked)
    # Skipped as unregistered otherwise (and committed past): a rejection lost to the
    # tenant's analytics window ("rejections" by reason, "events", "outcomes").
    assert await runner.await_tenants([_outcome_event(harness, emits)]) is True, reason
    assert asked == [1]


async def test_a_made_up_tenants_refusals_ask_at_most_once_in_a_while(harness: Harness) -> None:
    """Its `unknown_tenant` refusals never (the worker that answered did not know it
    either); refusals made before the lookup (an unknown command) once in
    REFUSAL_ASK_SECONDS, not a batch (a second each on the embedded broker: review h62e)."""
    asked: list[int] = []
    runner = _lagging_runner("nosuch-tenant", asked)
    unknown = build_command("payment.create", "nosuch-tenant", {"amount": 1, "currency": "USD"})
    emits, out = await harness.send_event(unknown)
    assert out is not None and data(out)["reason"] == "unknown_tenant"
    assert await runner.await_tenants([_outcome_event(harness, emits)]) is False
    for n in range(3):
        emits, out = await harness.send_event(
            build_command("payment.refund_all", f"nosuch-{n}", {})
        )
        assert out is not None and data(out)["reason"] == "unknown_command"
        await runner.await_tenants([_outcome_event(harness, emits)])
    assert asked == [1]
