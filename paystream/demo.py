"""Demo traffic: realistic payment flows across tenants at a steady offered rate."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from cloudevents.core.v1.event import CloudEvent

from paystream.client import OutcomeTimeout, PaystreamClient, build_command
from paystream.http_client import Accepted, IngressClient

__all__ = [
    "DEMO_TOKENS",
    "SUBSCRIPTION_TOKENS",
    "Platform",
    "demo_progress",
    "demo_summary",
    "make_tax_rates",
    "run_demo",
]

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
# Share of the trials (the declining card's apart: it is its renewal that declines)
# ended at once (`subscription.update` `trial_end: "now"`: the first period charged).
TRIALS_ENDED_NOW = 0.5
# Shares of the renewed subscriptions then canceled at the end of their (next) period,
# and (of those still active) paused instead (`subscription.pause`), resumed a day later.
CANCELS_AT_PERIOD_END = 0.3
PAUSES = 0.3
# Seconds a subscription is left as it is before its day passes (so the dashboard shows
# it trialing or active for a while first): a random pause in this range.
SUBSCRIPTION_PAUSE = (1.0, 4.0)
# Demo subscriptions bill daily; a day passes at the simulator when the demo moves the
# tenant's clock (its test clock, as `paystream simulator advance` does).
DAY = 24 * 3600
# Move a tenant's simulator clock forward: (tenant, seconds).
Advance = Callable[[str, int], Awaitable[None]]

# Share of one-off payments whose amount is taxed first (`tax.calculate` by the tenant's
# rates, then `payment.create` of its total naming the calculation), and of subscriptions
# carrying the tenant's rates (each invoice taxed), where the tenant has rates (made at
# the start: `make_tax_rates`).
TAXED_PAYMENTS = 0.1
TAXED_SUBSCRIPTIONS = 0.3
# Share of demo flows that are the tenant, not a customer: it reads its balance and pays
# out part of what is available in one currency (PAYOUT_SHARE_PERCENT of it, integer
# arithmetic: money is never a float); with ``advance``,
# a day passes while nothing is available yet (the simulator's settlement delay: 2 days
# by default, on the tenant's clock), and before each `payout.refresh`, until it is paid
# (or failed: a demo tenant's bank account may be closed), at most PAYOUT_DAYS days.
PAYOUTS = 0.03
SETTLEMENT_DAYS = 2
PAYOUT_SHARE_PERCENT = 50
PAYOUT_DAYS = 3

# Share of a platform tenant's flows (one given a `Platform`) that are Stripe Connect
# money flows, once its connected account is enabled: a destination charge (the platform
# keeps DESTINATION_FEE_PERCENT of it), or a separate charge then `transfer.create` of
# the seller's TRANSFER_SHARE_PERCENT of it (whole percentages: money stays integer),
# REVERSALS of those then reversed in part (a quarter: `transfer.reverse`). In the
# platform's currency, which its transfer cap names.
CONNECT = 0.1
DESTINATION_FEE_PERCENT = 10
TRANSFER_SHARE_PERCENT = 80
REVERSALS = 0.3


class Platform(NamedTuple):
    """A demo tenant acting as a Connect platform: its connected account
    (``connected_account.create`` data naming its ``connected_account_id``; its email's
    ``+enabled`` tag has the simulator enable it once onboarded), the ``currency`` of its
    Connect flows, and the tenant's ``daily_transfer_volume`` in it, which one transfer
    of the demo's start goes over (refused ``quota_exceeded``, so the refusal shows from
    the start)."""

    account: Mapping[str, Any]
    currency: str
    daily_transfer_volume: int


class Send(Protocol):
    """Send one command of the flow's tenant and wait for its outcome's data (counted in
    ``seen`` by type, ``[tag]`` appended when given, a refusal by a tenant limit with the
    limit's name instead, whatever the tag: ``command.rejected[daily_transfer_volume]``)."""

    def __call__(
        self, kind: str, data: dict[str, Any], tag: str = "", command_id: str | None = None
    ) -> Awaitable[dict[str, Any]]:
        pass


def _sender(
    client: PaystreamClient,
    tenant: str,
    seen: Counter[str],
    http: IngressClient | None = None,
) -> Send:
    """A :class:`Send` for ``tenant``, over ``http`` when given, else through Kafka."""

    async def send(
        kind: str, data: dict[str, Any], tag: str = "", command_id: str | None = None
    ) -> dict[str, Any]:
        command = build_command(kind, tenant, data, command_id=command_id)
        if http is not None:
            answer = await http.send(command, wait=30)
            if isinstance(answer, Accepted):  # taken, its outcome not within the wait
                raise OutcomeTimeout(f"no outcome for command {command.get_id()} over HTTP")
            event = answer
        else:
            event = await client.send(command, timeout=30)
        body = event.get_data()
        body = body if isinstance(body, dict) else {}
        label = event.get_type().removeprefix("com.paystream.")
        limit = body.get("limit") if label == "command.rejected" else None
        # (A limit's name before the flow's tag: a destination charge refused by the
        # rate limit is command.rejected[commands_per_second], not [destination].)
        tag = limit if isinstance(limit, str) else tag
        seen[f"{label}[{tag}]" if tag else label] += 1
        return body

    return send


async def _flow(
    client: PaystreamClient,
    tenant: str,
    rng: random.Random,
    seen: Counter[str],
    authenticate: Authenticate | None = None,
    http: IngressClient | None = None,
    advance: Advance | None = None,
    tax_rate_ids: Sequence[str] = (),
    account: tuple[str, str] | None = None,
) -> None:
    """customer → attach card → pay (auto or manual capture; some taxed first by the
    tenant's ``tax_rate_ids``; a card asking for 3-D Secure: the customer's step at the
    provider, then `payment.refresh`) → maybe refund; now and then a card tester instead,
    or a subscriber (`_subscribe`: its renewals need ``advance``), or the tenant paying
    out (`_pay_out`), or, a platform's with its connected ``account`` enabled, a Connect
    money flow (`_connect`). With ``http``, a share of flows go over HTTP."""
    over_http = http is not None and rng.random() < HTTP_SHARE
    send = _sender(client, tenant, seen, http if over_http else None)

    if account is not None and rng.random() < CONNECT:
        await _connect(send, *account, rng)
        return
    if rng.random() < PAYOUTS:
        await _pay_out(send, tenant, rng, advance)
        return
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
        await _subscribe(send, tenant, cid, rng, advance, tax_rate_ids)
        return
    pm = await send("payment_method.attach", {"customer_id": cid, "token": rng.choice(DEMO_TOKENS)})
    pmid = pm.get("entity_id")
    if not pmid or "failed" in str(pm.get("error", "")):
        return
    currency, amount = rng.choice(
        [("USD", rng.randrange(500, 50_000)), ("EUR", 1999), ("JPY", 3200)]
    )
    taxed: dict[str, Any] = {}
    if tax_rate_ids and rng.random() < TAXED_PAYMENTS:
        # A checkout: the tax on the order first, then its total charged (captured at
        # once: the tax is the whole order's), the payment naming the calculation.
        calc = await send(
            "tax.calculate",
            {
                "currency": currency,
                "line_items": [{"amount": amount, "reference": "demo order"}],
                "tax_rate_ids": [rng.choice(tax_rate_ids)],
            },
        )
        total = (calc.get("object") or {}).get("amount_total")
        if not calc.get("entity_id") or not isinstance(total, int):
            return
        amount = total
        taxed = {"tax_calculation_id": calc["entity_id"]}
    manual = not taxed and rng.random() < 0.3
    payment = await send(
        "payment.create",
        {
            "amount": amount,
            "currency": currency,
            "customer_id": cid,
            "payment_method_id": pmid,
            "capture": "manual" if manual else "auto",
            **taxed,
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


async def _subscribe(
    send: Send,
    tenant: str,
    cid: str,
    rng: random.Random,
    advance: Advance | None,
    tax_rate_ids: Sequence[str] = (),
) -> None:
    """attach card → `subscription.create` (daily; maybe a day's trial; some carrying one
    of the tenant's ``tax_rate_ids``: each invoice taxed) → a day passes →
    `subscription.refresh` (the trial over, or a renewal: paid, or declined: past_due) →
    maybe a cancel at period end, another day, and the refresh that reads it canceled;
    or, still active, a pause, another day, and its resume. With ``advance``, some
    trials are ended at once first (`trial_end: "now"`: charged, counted
    ``subscription.updated[trial_end]``). Without ``advance``
    (no simulator clock to move: a demo tenant without a simulator), the create alone."""
    token = rng.choice(SUBSCRIPTION_TOKENS)
    pm = await send("payment_method.attach", {"customer_id": cid, "token": token})
    pmid = pm.get("entity_id")
    if not pmid or "failed" in str(pm.get("error", "")):
        return
    trial = token == RENEWALS_DECLINED or rng.random() < TRIALS
    currency, amount = rng.choice([("USD", 1500), ("EUR", 900), ("JPY", 980)])
    taxed = (
        {"tax_rate_ids": [rng.choice(tax_rate_ids)]}
        if tax_rate_ids and rng.random() < TAXED_SUBSCRIPTIONS
        else {}
    )
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
            **taxed,
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

    if status == "trialing" and token != RENEWALS_DECLINED and rng.random() < TRIALS_ENDED_NOW:
        # Tagged: counted apart from the refreshes' and cancels' subscription.updated.
        await send("subscription.update", {"subscription_id": sid, "trial_end": "now"}, "trial_end")
    sub = await next_day()
    status = (sub.get("object") or {}).get("status")
    if status == "canceled":
        return
    # One draw for both, so the share canceled at period end stays CANCELS_AT_PERIOD_END.
    choice = rng.random()
    if choice < CANCELS_AT_PERIOD_END:
        await send("subscription.cancel", {"subscription_id": sid, "at_period_end": True})
        await next_day()
    elif status == "active" and choice < CANCELS_AT_PERIOD_END + PAUSES:
        paused = await send("subscription.pause", {"subscription_id": sid})
        if (paused.get("object") or {}).get("status") == "paused":
            await asyncio.sleep(rng.uniform(*SUBSCRIPTION_PAUSE))
            await advance(tenant, DAY)
            await send("subscription.resume", {"subscription_id": sid})


async def _pay_out(send: Send, tenant: str, rng: random.Random, advance: Advance | None) -> None:
    """`balance.retrieve` (nothing available yet but something pending: a day passes and
    it is read again, up to SETTLEMENT_DAYS) → `payout.create` of part of what is
    available in one currency → a day passes → `payout.refresh`, until it is paid or
    failed (pending, then in transit a day after, arrived the next). Without ``advance``
    (no simulator clock to move), the balance read and a create of what it shows."""
    for day in range(SETTLEMENT_DAYS + 1):
        balances = (await send("balance.retrieve", {})).get("balances") or ()
        available = sorted(
            (str(b["currency"]), b["available"])
            for b in balances
            if isinstance(b.get("available"), int) and b["available"] >= 2
        )
        if available:
            break
        pending = any(isinstance(b.get("pending"), int) and b["pending"] > 0 for b in balances)
        if advance is None or not pending or day == SETTLEMENT_DAYS:
            return
        await asyncio.sleep(rng.uniform(*SUBSCRIPTION_PAUSE))
        await advance(tenant, DAY)
    currency, held = rng.choice(available)
    payout = await send(
        "payout.create",
        {
            "amount": held * PAYOUT_SHARE_PERCENT // 100,
            "currency": currency,
            "description": "demo payout",
        },
    )
    poid = payout.get("entity_id")
    if not poid or advance is None:
        return
    for _ in range(PAYOUT_DAYS):
        if (payout.get("object") or {}).get("status") not in ("pending", "in_transit"):
            return
        await asyncio.sleep(rng.uniform(*SUBSCRIPTION_PAUSE))
        await advance(tenant, DAY)
        payout = await send("payout.refresh", {"payout_id": poid})


async def _connect(
    send: Send,
    account: str,
    currency: str,
    rng: random.Random,
    *,
    first: bool = False,
    over: int = 0,
) -> None:
    """A platform's Connect money flow with its enabled connected ``account``: a
    destination charge (`payment.create` naming the account, the platform keeping a fee,
    counted ``[destination]``), or a separate charge then `transfer.create` of the
    seller's share from it (``transfer_group`` the order's), maybe reversed in part
    (`transfer.reverse`). ``first`` (the demo's start): both, the transfer reversed in
    part, and beside them a transfer of ``over`` (more than the tenant's daily transfer
    cap: refused ``quota_exceeded`` before any call, counted
    ``command.rejected[daily_transfer_volume]``; naming a smaller charge, it moves
    nothing on a tenant registered without the cap either: refused as more than is left
    of its payment)."""
    amount = rng.randrange(2_000, 15_000)
    card = {"currency": currency, "payment_method_token": "pm_card_visa"}
    destination = first or rng.random() < 0.5
    separate = first or not destination

    async def destination_charge() -> None:
        fee = amount * DESTINATION_FEE_PERCENT // 100
        await send(
            "payment.create",
            {**card, "amount": amount, "connected_account_id": account,
             "application_fee_amount": fee, "description": "demo marketplace order"},
            "destination",
        )  # fmt: skip

    async def transfer(share: int, reverse: bool) -> None:
        charged = await send(
            "payment.create", {**card, "amount": amount, "description": "demo marketplace order"}
        )
        pid = charged.get("entity_id")
        if not pid or (charged.get("object") or {}).get("status") != "succeeded":
            return
        made = await send(
            "transfer.create",
            {"connected_account_id": account, "amount": share, "currency": currency,
             "payment_id": pid, "transfer_group": f"order-{pid}", "description": "seller share"},
        )  # fmt: skip
        tid = made.get("entity_id")
        if tid and reverse and (made.get("object") or {}).get("status") == "created":
            await send("transfer.reverse", {"transfer_id": tid, "amount": max(1, share // 4)})

    flows = []
    if destination:
        flows.append(destination_charge())
    if separate:
        flows.append(
            transfer(amount * TRANSFER_SHARE_PERCENT // 100, first or rng.random() < REVERSALS)
        )
    if first and over:
        flows.append(transfer(over, False))
    await asyncio.gather(*flows)


async def onboard_platform(send: Send, tenant: str, platform: Platform) -> str | None:
    """The platform's connected account made (`connected_account.create` of its chosen
    id, under a command id of the tenant's and the account's: a demo started again on
    the same stack is answered from its record; past the idempotency window, refused
    `already exists`, it goes on with it), its onboarding link made (the simulator's
    holder visits, and the account's email tag enables it), then read back
    (`connected_account.refresh`); its id once enabled, else None (its Connect flows are
    not sent)."""
    aid = str(platform.account["connected_account_id"])
    made = await send(
        "connected_account.create",
        dict(platform.account),
        command_id=f"demo-connected-account-{tenant}-{aid}",
    )
    if not made.get("entity_id") and "already exists" not in str(made.get("message", "")):
        return None
    await send(
        "connected_account.onboarding_link",
        {"connected_account_id": aid, "refresh_url": "https://platform.example/reauth",
         "return_url": "https://platform.example/done"},
    )  # fmt: skip
    read = await send("connected_account.refresh", {"connected_account_id": aid})
    return aid if (read.get("object") or {}).get("status") == "enabled" else None


# A demo tenant's tax rates: ``tax_rate.create`` data, each naming its ``tax_rate_id``.
TaxRates = Mapping[str, Sequence[Mapping[str, Any]]]
# A demo rate found archived (an operator, the provider's dashboard then a refresh, a
# test) is passed over for its id with ``-2``, ``-3``, ... appended (made, or found as
# made by a start before), this many at most; past them the tenant is not taxed by it.
RATE_REMAKES = 3
RATE_PASSED_OVER = "tax_rate archived: next id tried"
RATE_NOT_TAXED_BY = "tax_rate archived: not taxed by"
RATE_CHECK = "demo rate check"  # (the reference of the line each rate is tried on)


async def make_tax_rates(
    client: PaystreamClient, rates: TaxRates, seen: Counter[str]
) -> dict[str, list[str]]:
    """Each tenant's ``rates`` made (`tax_rate.create`), under a command id of the
    tenant's and the rate's: a demo started again on the same stack is answered from the
    rate's record (``tax_rate.created`` as before), not refused as existing.

    That answer is the one first stored (its rate active), whatever became of the rate
    since: each rate answered so is tried with a `tax.calculate` of one small line (no
    provider is asked), which an archived rate is refused (the flows taxed by it were
    all refused, for the whole run: review h74q). One archived is passed over for its id
    with ``-2``, ``-3``, ... appended, made (or answered as made by a start before) and
    tried the same way, RATE_REMAKES at most; each passed over is counted in ``seen``
    (RATE_PASSED_OVER, or RATE_NOT_TAXED_BY when none is left: the tenant is not taxed
    by it, and the progress line names it). Returns the ids of the rates each tenant has
    (a tenant refused them, suspended say: none)."""

    async def answer(command: CloudEvent) -> tuple[str, dict[str, Any]] | None:
        try:
            event = await client.send(command, timeout=30)
        except OutcomeTimeout:
            seen["timeout"] += 1
            return None
        data = event.get_data()
        return event.get_type().removeprefix("com.paystream."), (
            data if isinstance(data, dict) else {}
        )

    async def archived(tenant: str, rid: str) -> bool:
        tried = await answer(
            build_command(
                "tax.calculate",
                tenant,
                {
                    "currency": "USD",
                    "line_items": [{"amount": 100, "reference": RATE_CHECK}],
                    "tax_rate_ids": [rid],
                },
            )
        )
        if tried is None or tried[0] == "tax.calculated":
            return False  # (not answered: taken as it was made)
        kind, data = tried
        reason = data.get("reason") or (data.get("error") or {}).get("code")
        if kind == "command.rejected" and reason == "invalid_state":
            return True
        seen[kind] += 1  # (refused otherwise: its flows will say the same)
        return False

    async def make(tenant: str, rate: Mapping[str, Any]) -> str | None:
        base = str(rate["tax_rate_id"])
        for generation in range(1, RATE_REMAKES + 2):
            rid = base if generation == 1 else f"{base}-{generation}"
            made = await answer(
                build_command(
                    "tax_rate.create",
                    tenant,
                    {**rate, "tax_rate_id": rid},
                    command_id=f"demo-tax-rate-{tenant}-{rid}",
                )
            )
            if made is None:
                return None
            seen[made[0]] += 1
            if made[0] != "tax_rate.created":
                return None
            if not await archived(tenant, rid):
                return rid
            seen[RATE_PASSED_OVER if generation <= RATE_REMAKES else RATE_NOT_TAXED_BY] += 1
        return None

    made = await asyncio.gather(
        *(make(tenant, rate) for tenant, specs in rates.items() for rate in specs)
    )
    pairs = [(tenant, rate) for tenant, specs in rates.items() for rate in specs]
    ids: dict[str, list[str]] = {tenant: [] for tenant in rates}
    for (tenant, _), rid in zip(pairs, made, strict=True):
        if rid is not None:
            ids[tenant].append(rid)
    return ids


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
    tax_rates: TaxRates | None = None,
    platforms: Mapping[str, Platform] | None = None,
) -> Counter[str]:
    """Start ``rate`` flows per second until cancelled (or ``duration`` seconds);
    ``authenticate`` plays the customers' 3-D Secure steps (none without it); ``advance``
    moves a tenant's simulator clock, a day for each renewal or payout day shown (none
    without it); ``http`` takes a share of the flows (HTTP_SHARE) through the HTTP
    ingress; ``tax_rates`` are made as the flows start (`make_tax_rates`), then a share
    of the tenant's payments and subscriptions are taxed by them; ``platforms``' connected
    accounts are onboarded as the flows start (`onboard_platform`), then one of each
    Connect flow is sent (`_connect`, ``first``) and a share of the tenant's flows are
    Connect flows. Outcomes are counted by type into ``seen`` as they come (the caller's,
    to report after a stop)."""
    rng = random.Random(seed)
    seen = Counter() if seen is None else seen
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    next_report = started + 2
    # The tenants' rates are made beside the first flows (those go untaxed), so that a
    # stack that does not answer holds the demo no longer than its duration.
    rate_ids: dict[str, list[str]] = {}

    async def make_rates() -> None:
        rate_ids.update(await make_tax_rates(client, tax_rates or {}, seen))

    # Likewise the platforms' connected accounts: their Connect flows start once enabled.
    accounts: dict[str, tuple[str, str]] = {}  # tenant: (its account, the currency)

    async def onboard(tenant: str, platform: Platform) -> None:
        send = _sender(client, tenant, seen)
        aid = await onboard_platform(send, tenant, platform)
        if aid is not None:
            accounts[tenant] = aid, platform.currency
            await _connect(
                send, aid, platform.currency, rng, first=True,
                over=platform.daily_transfer_volume + 1,
            )  # fmt: skip

    def start(setup: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(setup)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda t: None if t.cancelled() else _count_timeouts(t, seen))

    if tax_rates:
        start(make_rates())
    for tenant, platform in (platforms or {}).items():
        start(onboard(tenant, platform))
    try:
        while duration is None or time.monotonic() - started < duration:
            tenant = rng.choice(tenants)
            task = asyncio.create_task(
                _flow(
                    client,
                    tenant,
                    rng,
                    seen,
                    authenticate,
                    http,
                    advance,
                    rate_ids.get(tenant, ()),
                    accounts.get(tenant),
                )
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
    """An outcome kind saying something went wrong: always named on the progress line
    (whatever its ``[tag]``)."""
    kind = kind.split("[", 1)[0]
    return (
        kind.endswith(("failed", ".rejected"))
        or kind.startswith(("timeout", "error:"))
        or kind == RATE_NOT_TAXED_BY
    )


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
