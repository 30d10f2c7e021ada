"""The demo's customers take the 3-D Secure step a card asks for, at the simulator, and
the flow reads the payment back (`payment.refresh`) before capturing or refunding it."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from paystream import demo
from tests.agents.conftest import running_harness
from tests.agents.harness import ThroughTheProcessor, simulator_of

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("passed", [True, False])
async def test_a_demo_payment_asking_for_3ds_is_read_back_after_the_step(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, passed: bool
) -> None:
    monkeypatch.setattr(demo, "DEMO_TOKENS", ["pm_card_authenticationRequired"])
    monkeypatch.setattr(demo, "CARD_TESTERS", 0.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        steps: list[tuple[str, bool]] = []

        async def authenticate(tenant: str, provider_payment_id: str, ok: bool) -> None:
            gateway = simulator_of(h, tenant)
            steps.append((tenant, ok))
            await gateway.complete_authentication(provider_payment_id, succeed=passed)

        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen, authenticate)
        assert len(steps) == 1 and steps[0][0] == t, steps
        assert seen["payment.requires_action"] == 1, seen
        [payment] = h.tables.payments.values()
        if passed:
            assert payment["status"] == "succeeded", payment
            assert seen["payment.succeeded"] >= 1, seen
        else:
            assert payment["status"] == "failed", payment
            assert seen["payment.failed"] == 1, seen
