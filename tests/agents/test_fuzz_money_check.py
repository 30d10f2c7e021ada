"""The fuzz test's money check (tests/agents/test_fuzz_commands.py, Run.check_state) counted
the simulator's effects by the provider's object id, which the simulator mints afresh for
every create: a payment charged twice at the provider was two objects, each counted once,
and the check could not fail (review h68y). Here a real double charge is made through the
real processor (the bug the chosen-id create key exists for, put back by a monkeypatch)
and check_state must see it."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from paystream.agents.handlers import HandlerContext
from paystream.gateways.simulator.store import SimulatorStore
from paystream.settings import load_settings
from tests.agents import test_fuzz_commands as fz
from tests.agents.harness import Harness

pytestmark = pytest.mark.asyncio


async def test_the_fuzz_money_check_sees_a_payment_charged_twice(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _charged_twice_then_checked(redis_url, monkeypatch, fz.Run.check_state)


async def _charged_twice_then_checked(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, check_state: Any
) -> None:
    client = aioredis.from_url(redis_url)
    h = Harness(
        settings=load_settings(
            redis_url=redis_url,
            gateway_backoff_base_ms=1,
            gateway_max_attempts=2,
            breaker_failure_threshold=10**6,
        ),
        redis=client,
    )
    try:
        run = fz.Run(h)
        # The mutation: a create's provider key is its command's, not its chosen id's.
        monkeypatch.setattr(HandlerContext, "create_key", lambda self, kind, chosen: self.idem)
        b = run.names["b"]  # (tenant "b": no daily volume to count, only the money check)
        h.tenants[b] = {
            **h.tenants[b],
            "gateway_options": {"lose_response_first": {f"ps:{b}:c1": 2}},
        }
        body = {"payment_id": "p9", "amount": 700, "currency": "USD",
                "payment_method_token": "tok_visa"}  # fmt: skip
        # c1: the provider charges, both answers are lost: parked.
        await run.step(fz.Step("payment.create", "b", body, "c1", None, False, None, False))
        assert len(run.parked) == 1
        # The merchant, answered nothing, sends the payment again under a new command id.
        await run.step(fz.Step("payment.create", "b", body, "c2", None, False, None, False))
        while run.parked:  # `dlq replay` of c1
            await run.replay_parked()
        store = SimulatorStore(h.redis, b, record_ttl_seconds=60)
        charges = [e for e in await store.effects() if e.kind == "charge"]
        assert len(charges) == 2, charges  # p9 really was charged twice
        with pytest.raises(AssertionError):
            await check_state(run)
    finally:
        await h.pool.aclose()
        await client.aclose()
