"""The demo's subscribers: a customer saves a card and subscribes (daily, some with a
day's trial, some of those ended at once: `trial_end: "now"`, charged); the demo moves
its tenant's simulator clock a day and reads the subscription back (the trial over or a
renewal paid; a card declining renewals: past_due); some then cancel at period end, read
back canceled a day later, some pause and resume after another day. Through the real
command processor and the simulator on Redis, as the 3-D Secure flow's test."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from paystream import demo
from paystream.cli import demo as demo_cli
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import load_settings
from tests.agents.conftest import running_harness
from tests.agents.harness import ThroughTheProcessor, simulator_of


@pytest.mark.parametrize(
    ("token", "trial", "ended_now", "cancel", "pause", "status", "invoices", "seen_kinds"),
    [
        # Charged at once, renewed a day later.
        (
            "pm_card_visa",
            0.0,
            0.0,
            0.0,
            0.0,
            "active",
            ["paid", "paid"],
            {"subscription.created": 1, "subscription.updated": 1},
        ),
        # A day's trial, then its first invoice paid.
        (
            "pm_card_mastercard",
            1.0,
            0.0,
            0.0,
            0.0,
            "active",
            ["paid"],
            {"subscription.created": 1, "subscription.updated": 1},
        ),
        # A day's trial ended at once (`trial_end: "now"`: its first period charged then,
        # counted subscription.updated[trial_end]), renewed a day later.
        (
            "pm_card_mastercard",
            1.0,
            1.0,
            0.0,
            0.0,
            "active",
            ["paid", "paid"],
            {
                "subscription.created": 1,
                "subscription.updated[trial_end]": 1,
                "subscription.updated": 1,
            },
        ),
        # Renewed, then paused; a day later resumed (billing again, the period begun
        # while paused not billed).
        (
            "pm_card_visa",
            0.0,
            0.0,
            0.0,
            1.0,
            "active",
            ["paid", "paid"],
            {
                "subscription.created": 1,
                "subscription.updated": 1,
                "subscription.paused": 1,
                "subscription.resumed": 1,
            },
        ),
        # Renewed, then canceled at the end of that period: nothing more billed.
        (
            "pm_card_visa",
            0.0,
            0.0,
            1.0,
            0.0,
            "canceled",
            ["paid", "paid"],
            {"subscription.created": 1, "subscription.updated": 2, "subscription.canceled": 1},
        ),
        # The card that declines renewals: always a trial (never an incomplete create),
        # its first charge declined at the trial's end: past_due, the invoice open. Its
        # trial is never ended at once (it is its renewal that declines), nor is it
        # paused (past_due: nothing to pause).
        (
            "pm_card_chargeCustomerFail",
            0.0,
            1.0,
            0.0,
            1.0,
            "past_due",
            ["open"],
            {"subscription.created": 1, "subscription.updated": 1},
        ),
    ],
)
async def test_a_demo_subscriber_is_renewed_on_the_simulators_clock(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    token: str,
    trial: float,
    ended_now: float,
    cancel: float,
    pause: float,
    status: str,
    invoices: list[str],
    seen_kinds: dict[str, int],
) -> None:
    monkeypatch.setattr(demo, "CARD_TESTERS", 0.0)
    monkeypatch.setattr(demo, "SUBSCRIBERS", 1.0)
    monkeypatch.setattr(demo, "SUBSCRIPTION_TOKENS", [token])
    monkeypatch.setattr(demo, "TRIALS", trial)
    monkeypatch.setattr(demo, "TRIALS_ENDED_NOW", ended_now)
    monkeypatch.setattr(demo, "CANCELS_AT_PERIOD_END", cancel)
    monkeypatch.setattr(demo, "PAUSES", pause)
    monkeypatch.setattr(demo, "SUBSCRIPTION_PAUSE", (0.0, 0.0))
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        moved: list[tuple[str, int]] = []

        async def advance(tenant: str, seconds: int) -> None:
            moved.append((tenant, seconds))
            await simulator_of(h, tenant).advance_clock(seconds)

        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen, advance=advance)

        days = 2 if cancel or "subscription.paused" in seen_kinds else 1
        assert moved == [(t, demo.DAY)] * days, moved
        assert {k: v for k, v in seen.items() if k.startswith("subscription.")} == seen_kinds
        assert seen["payment_method.attached"] == 1 and not seen["payment.succeeded"], seen
        [sub] = h.tables.subscriptions.values()
        assert sub["status"] == status, sub
        assert sub["interval"] == "day", sub
        assert sub["cancel_at_period_end"] is bool(cancel), sub
        billed = sorted(h.tables.invoices.values(), key=lambda i: i["period_start"])
        assert [i["status"] for i in billed] == invoices, billed
        if status == "past_due":
            assert billed[0]["failure_code"], billed


async def test_without_a_clock_to_move_the_demo_subscriber_only_subscribes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`paystream demo` without REDIS_URL: no simulator clock to move, no renewal shown."""
    monkeypatch.setattr(demo, "CARD_TESTERS", 0.0)
    monkeypatch.setattr(demo, "SUBSCRIBERS", 1.0)
    monkeypatch.setattr(demo, "SUBSCRIPTION_TOKENS", ["pm_card_visa"])
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen)
        assert seen["subscription.created"] == 1 and not seen["subscription.updated"], seen


async def test_the_demo_moves_its_tenants_simulator_clocks(redis_url: str) -> None:
    """What `paystream demo` and `dev --demo` give the flows: a day passes at the demo
    tenant's simulator (its test clock in Redis), not at another tenant's."""
    client = aioredis.from_url(redis_url)
    try:
        acme, other = (
            SimulatorGateway(client, tid, record_ttl_seconds=60) for tid in ("acme", "globex2")
        )
        acme_before = (await acme.advance_clock(0))["offset"]
        other_before = (await other.advance_clock(0))["offset"]
        async with demo_cli._demo_customers(load_settings(redis_url=redis_url)) as (
            authenticate,
            advance,
        ):
            assert authenticate is not None and advance is not None
            await advance("acme", demo.DAY)
        assert (await acme.advance_clock(0))["offset"] == acme_before + demo.DAY
        assert (await other.advance_clock(0))["offset"] == other_before
    finally:
        await client.aclose()
    async with demo_cli._demo_customers(load_settings(redis_url=None)) as nothing:
        assert nothing == (None, None)


def test_the_demo_subscribes_a_small_share_with_its_own_cards() -> None:
    """Subscribers are a small share of the flows, as 3-D Secure's; one card of theirs
    declines its renewals."""
    assert 0 < demo.SUBSCRIBERS <= 0.1
    assert demo.RENEWALS_DECLINED in demo.SUBSCRIPTION_TOKENS
    assert demo.SUBSCRIPTION_TOKENS.count(demo.RENEWALS_DECLINED) < len(demo.SUBSCRIPTION_TOKENS)
    # Some trials end at once and some active ones pause; the cancels' share stays theirs.
    assert 0 < demo.TRIALS_ENDED_NOW < 1 and 0 < demo.PAUSES < 1
    assert demo.CANCELS_AT_PERIOD_END + demo.PAUSES < 1
