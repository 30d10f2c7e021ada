"""The ledger keeps no connected accounts yet (no table): their outcomes, from a real
harness, are skipped and counted, never refused and dead-lettered; an onboarding link's
outcome carries no entity (and its URL is stored nowhere)."""

from __future__ import annotations

import pytest

from paystream.ledger.outcomes import OUTCOMES_SKIPPED
from paystream.ledger.sink import outcome_to_ledger_events
from tests.agents.conftest import running_harness
from tests.agents.harness import kind

pytestmark = pytest.mark.asyncio
LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}


def _skipped(label: str) -> float:
    return OUTCOMES_SKIPPED.labels(label)._value.get()


async def test_connected_account_outcomes_are_skipped_not_dead_lettered(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        body = {"connected_account_id": "ca1", "country": "US", "email": "a+enabled@example.com"}
        outcomes = [
            await h.send("connected_account.create", t, body),
            await h.send(
                "connected_account.onboarding_link", t, {"connected_account_id": "ca1", **LINK}
            ),
            await h.send("connected_account.refresh", t, {"connected_account_id": "ca1"}),
        ]
    types = [kind(o) for o in outcomes]
    assert types == [
        "connected_account.created",
        "connected_account.onboarding_link_created",
        "connected_account.updated",
    ]
    before = {t: _skipped(f"com.paystream.{t}") for t in types}
    for outcome in outcomes:
        assert outcome_to_ledger_events(outcome) == []  # (raises for what it refuses)
    assert {t: _skipped(f"com.paystream.{t}") - before[t] for t in types} == dict.fromkeys(types, 1)
