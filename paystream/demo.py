"""Demo traffic: realistic payment flows across tenants at a steady offered rate."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from paystream.client import OutcomeTimeout, PaystreamClient, build_command
from paystream.http_client import Accepted, IngressClient

__all__ = ["DEMO_TOKENS", "SUBSCRIPTION_TOKENS", "demo_progress", "demo_summary", "run_demo"]

# Simulator tokens with Stripe's test-card semantics, weighted toward success.
DEMO_TOKENS = [
    *["pm_card_visa"] * 12,
    *["pm_card_mastercard"] * 4,
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedExpiredCard",
    "pm_card_authenticationRequired",
    "pm_card_refundFail",  # its refunds fail after they succeeded (read back: refund.failed)
]

# Share of demo refunds read back later (`refund.refresh`), as a provider's webhook
# would have them read.
REFRESH_REFUNDS = 0.5


# The customer's 3-D Secure step at the provider: (tenant, provider payment id, passed).
Authenticate = Callable[[str, str, bool], Awaitable[None]]
# Share of customers asked for 3-D Secure who pass it (the rest fail it).
PASS_3DS = 0.8

# Share of demo customers who are card testers, and the tokens they try.
CARD_TESTERS = 0.03
DECLINING_TOKENS = [
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedExpiredCard",
    "pm_card_chargeDeclinedIncorrectCvc",
]


# Share of demo flows sent over the HTTP ingress (when the demo is given one).
HTTP_SHARE = 0.25

# Share of demo customers (card testers apart) who subscribe instead of paying once, the
# cards they save for it (one saves, then declines every charge: its renewals are
# declined, past_due), and the share of them who start with a free trial (a day; the
# declining card always does, so that it is its renewal that declines).
SUBSCRIBERS = 0.05
RENEWALS_DECLINED = "pm_card_chargeCustomerFail"
SUBSCRIPTION_TOKENS = [*["pm_card_visa"] * 5, *["pm_card_mastercard"] * 2, RENEWALS_DECLINED]
TRIALS = 0.3
# Share of the renewed subscriptions then canceled at the end of their (next) period.
CANCELS_AT_PERIOD_END = 0.3
# Seconds a subscription is left as it is before its day passes (so the dashboard shows
# it trialing or active for a while first): a random pause in this range.
SUBSCRIPTION_PAUSE = (1.0, 4.0)
# Demo subscriptions bill daily; a day passes at the simulator when the demo moves the
# tenant's clock (its test clock, as `paystream simulator advance` does).
DAY = 24 * 3600
# Move a tenant's simulator clock forward: (tenant, seconds).
Advance = Callable[[str, int], Awaitable[None]]


async def _flow(
    client: PaystreamClient,
    tenant: str,
    rng: random.Random,
    seen: Counter[str],
    authenticate: Authenticate | None = None,
    http: IngressClient | None = None,
    advance: Advance | None = None,
) -> None:
    """customer → attach card → pay (auto or manual capture; a card asking for 3-D Secure:
    the customer's step at the provider, then `payment.refresh`) → maybe refund; now and
    then a card tester instead, or a subscriber (`_subscribe`: its renewals need
    ``advance``). With ``http``, a share of flows go over HTTP."""
    over_http = http is not None and rng.random() < HTTP_SHARE

    async def send(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        command = build_command(kind, tenant, data)
        if over_http and http is not None:
            answer = await http.send(command, wait=30)
            if isinstance(answer, Accepted):  # taken, its outcome not within the wait
                raise OutcomeTimeout(f"no outcome for command {command.get_id()} over HTTP")
            event = answer
        else:
            event = await client.send(command, timeout=30)
        seen[event.get_type().removeprefix("com.paystream.")] += 1
        body = event.get_data()
        return body if isinstance(body, dict) else {}

    customer = await send("customer.create", {"email": f"demo{rng.randrange(10**6)}@example.com"})
    cid = customer.get("entity_id")
    if not cid:
        return
    if rng.random() < CARD_TESTERS:
        # A card tester: one-off tokens, declined one after another (the insights' fraud
        # rules raise a `subject_declines` alert for the customer).
        for _ in range(6):
            token = rng.choice(DECLINING_TOKENS)
            card = {"amount": rng.randrange(100, 900), "currency": "USD"}
            await send(
                "payment.create", {**card, "customer_id": cid, "payment_method_token": token}
            )
        return
    if rng.random() < SUBSCRIBERS:
        await _subscribe(send, tenant, cid, rng, advance)
        return
    pm = await send("payment_method.attach", {"customer_id": cid, "token": rng.choice(DEMO_TOKENS)})
    pmid = pm.get("entity_id")
    if not pmid or "failed" in str(pm.get("error", "")):
        return
    currency, amount = rng.choice(
        [("USD", rng.randrange(500, 50_000)), ("EUR", 1999), ("JPY", 3200)]
    )
    manual = rng.random() < 0.3
    payment = await send(
        "payment.create",
        {
            "amount": amount,
            "currency": currency,
            "customer_id": cid,
            "payment_method_id": pmid,
            "capture": "manual" if manual else "auto",
        },
    )
    pid = payment.get("entity_id")
    status = (payment.get("object") or {}).get("status")
    if status == "requires_action" and authenticate is not None:
        provider_id = str((payment.get("object") or {}).get("provider_payment_id"))
        await authenticate(tenant, provider_id, rng.random() < PASS_3DS)
        payment = await send("payment.refresh", {"payment_id": pid})
        status = (payment.get("object") or {}).get("status")
    if manual and status == "authorized":
        await send("payment.capture", {"payment_id": pid, "amount": amount - amount // 10})
        status = "succeeded"
    if status == "succeeded" and rng.random() < 0.25:
        refund = await send("refund.create", {"payment_id": pid, "amount": max(1, amount // 4)})
        rid = refund.get("entity_id")
        made = (refund.get("object") or {}).get("status") in ("succeeded", "pending")
        if rid and made and rng.random() < REFRESH_REFUNDS:
            await send("refund.refresh", {"refund_id": rid})


Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _subscribe(
    send: Send, tenant: str, cid: str, rng: random.Random, advance: Advance | None
) -> None:
    """attach card → `subscription.create` (daily; maybe a day's trial) → a day passes →
    `subscription.refresh` (the trial over, or a renewal: paid, or declined: past_due) →
    maybe a cancel at period end, another day, and the refresh that reads it canceled.
    Without ``advance`` (no simulator clock to move), the create alone."""
    token = rng.choice(SUBSCRIPTION_TOKENS)
    pm = await send("payment_method.attach", {"customer_id": cid, "token": token})
    pmid = pm.get("entity_id")
    if not pmid or "failed" in str(pm.get("error", "")):
        return
    trial = token == RENEWALS_DECLINED or rng.random() < TRIALS
    currency, amount = rng.choice([("USD", 1500), ("EUR", 900), ("JPY", 980)])
    sub = await send(
        "subscription.create",
        {
            "customer_id": cid,
            "payment_method_id": pmid,
            "amount": amount,
            "currency": currency,
            "interval": "day",
            "trial_days": 1 if trial else 0,
            "description": "demo plan",
        },
    )
    sid = sub.get("entity_id")
    status = (sub.get("object") or {}).get("status")
    if not sid or status not in ("active", "trialing") or advance is None:
        return

    async def next_day() -> dict[str, Any]:
        await asyncio.sleep(rng.uniform(*SUBSCRIPTION_PAUSE))
        await advance(tenant, DAY)
        return await send("subscription.refresh", {"subscription_id": sid})

    sub = await next_day()
    if (sub.get("object") or {}).get("status") != "canceled" and (
        rng.random() < CANCELS_AT_PERIOD_END
    ):
        await send("subscription.cancel", {"subscription_id": sid, "at_period_end": True})
        await next_day()


async def run_demo(
    client: PaystreamClient,
    tenants: list[str],
    rate: float,
    *,
    duration: float | None = None,
    on_progress: Callable[[Counter[str], float], None] | None = None,
    seed: int = 7,
    authenticate: Authenticate | None = None,
    http: IngressClient | None = None,
    seen: Counter[str] | None = None,
    advance: Advance | None = None,
) -> Counter[str]:
    """Start ``rate`` flows per second until cancelled (or ``duration`` seconds);
    ``authenticate`` plays the customers' 3-D Secure steps (none without it); ``advance``
    moves a tenant's simulator clock, a day for each renewal shown (none without it); ``http``
    takes a share of the flows (HTTP_SHARE) through the HTTP ingress. Outcomes are
    counted by type into ``seen`` as they come (the caller's, to report after a stop)."""
    rng = random.Random(seed)
    seen = Counter() if seen is None else seen
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    next_report = started + 2
    try:
        while duration is None or time.monotonic() - started < duration:
            task = asyncio.create_task(
                _flow(client, rng.choice(tenants), rng, seen, authenticate, http, advance)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda t: None if t.cancelled() else _count_timeouts(t, seen))
            await asyncio.sleep(1 / rate)
            if on_progress and time.monotonic() >= next_report:
                on_progress(seen, time.monotonic() - started)
                next_report += 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def _count_timeouts(task: asyncio.Task[None], seen: Counter[str]) -> None:
    exc = task.exception()
    if isinstance(exc, OutcomeTimeout):
        seen["timeout"] += 1
    elif exc is not None:
        seen[f"error:{type(exc).__name__}"] += 1


def _trouble(kind: str) -> bool:
    """An outcome kind saying something went wrong: always named on the progress line."""
    return kind.endswith(("failed", ".rejected")) or kind.startswith(("timeout", "error:"))


def demo_progress(seen: Counter[str], shown: int = 6) -> str:
    """The most common outcome kinds, any sign of trouble among the rest too, and how
    many others: one line every two seconds."""
    named: list[tuple[str, int]] = []
    rest: list[int] = []
    for i, (kind, count) in enumerate(seen.most_common()):
        if i < shown or _trouble(kind):
            named.append((kind, count))
        else:
            rest.append(count)
    text = ", ".join(f"{k}={v}" for k, v in named)
    if rest:
        text += f", {len(rest)} other kind{'s' if len(rest) > 1 else ''}={sum(rest)}"
    return text


def demo_summary(title: str, seen: Counter[str], elapsed: float) -> str:
    """What came of the demo's commands: every outcome kind with its count."""
    total = sum(seen.values())
    head = f"{title}: {total} outcome{'s' if total != 1 else ''} in {elapsed:.0f} s"
    if not total:
        return head
    width = max(map(len, seen))
    lines = [f"  {kind:<{width}}  {count:>7,}" for kind, count in seen.most_common()]
    return "\n".join([f"{head} ({total / max(elapsed, 1e-9):.1f}/s):", *lines])
