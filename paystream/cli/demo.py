"""`paystream demo`: demo tenants and traffic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import click

from paystream.settings import Settings
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant

if TYPE_CHECKING:
    from paystream.demo import Advance, Authenticate
from paystream.cli.base import _Finite, _run, _settings, cli

DEMO_TENANTS = ("acme", "globex")
# One demo tenant has limits, so the dashboard shows them at work: the demo's larger USD
# payments go over the per-payment cap (quota_exceeded); the rate limit leaves room. It
# is also a Connect platform (DEMO_PLATFORMS), its transfers capped per day: one of the
# demo's start goes over it (quota_exceeded), and its steady ones use it up in a while.
DEMO_LIMITS = {
    "globex": TenantLimits(
        commands_per_second=50,
        max_payment_amount={"USD": 40_000},
        daily_transfer_volume={"EUR": 500_000},
    )
}
# The demo's Connect platform and its connected account (`connected_account.create`
# data; the simulator enables a "+enabled" email's once onboarded): destination charges
# and separate charges with transfers (some reversed in part) to it, in EUR, which the
# platform's daily_transfer_volume names.
DEMO_PLATFORMS = {
    "globex": {
        "connected_account_id": "demo-seller",
        "country": "DE",
        "email": "seller+enabled@globex.example",
        "capabilities": ["card_payments", "transfers"],
    }
}
CONNECT_CURRENCY = "EUR"
# And one's bank account is closed (Stripe's test account number, as the simulator
# takes it): its payouts fail at arrival (payout.failed, account_closed), their amount
# available again.
DEMO_GATEWAY_OPTIONS = {"globex": {"payout_destination": "000111111113"}}
# The demo tenants' tax rates, made when the demo starts: a share of their payments and
# subscriptions are taxed by them. acme adds UK VAT to its prices; globex's prices
# contain German VAT (standard, and reduced).
DEMO_TAX_RATES = {
    "acme": [
        {
            "tax_rate_id": "demo-vat",
            "display_name": "VAT",
            "percentage": "20",
            "inclusive": False,
            "country": "GB",
            "tax_type": "vat",
        }
    ],
    "globex": [
        {
            "tax_rate_id": "demo-mwst",
            "display_name": "MwSt",
            "percentage": "19",
            "inclusive": True,
            "country": "DE",
            "tax_type": "vat",
        },
        {
            "tax_rate_id": "demo-mwst-reduced",
            "display_name": "MwSt",
            "description": "reduced rate",
            "percentage": "7",
            "inclusive": True,
            "country": "DE",
            "tax_type": "vat",
        },
    ],
}


def describe_demo_setup() -> list[str]:
    """What the demo tenants are given beyond limits, as `dev` lists it: their tax rates,
    a bank account whose payouts fail, and a Connect platform's connected account."""
    rates = " · ".join(
        f"{tid}: "
        + ", ".join(
            f"{r['display_name']} {r['percentage']}% "
            f"{'inclusive' if r['inclusive'] else 'exclusive'}"
            for r in specs
        )
        for tid, specs in DEMO_TAX_RATES.items()
    )
    lines = [f"tax rates  {rates}"]
    for tid, options in DEMO_GATEWAY_OPTIONS.items():
        lines.append(
            f"payouts    {tid}: to bank account {options['payout_destination']}, closed "
            "(its payouts fail: payout.failed)"
        )
    for tid, account in DEMO_PLATFORMS.items():
        lines.append(
            f"connect    {tid}: connected account {account['connected_account_id']} "
            f"(destination charges, transfers in {CONNECT_CURRENCY}; one transfer over the "
            "day's cap: command.rejected[daily_transfer_volume])"
        )
    return lines


_demo_rate = click.option(
    "--rate",
    type=_Finite(min=0, min_open=True, max=1000),
    default=5.0,
    show_default=True,
    help="demo payment flows per second",
)
_duration = click.option(
    "--duration", type=_Finite(min=0), default=None, help="stop after N seconds (default: Ctrl-C)"
)


@cli.command("demo")
@_demo_rate
@_duration
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help=f"register the demo tenants ({', '.join(DEMO_TENANTS)}) on the simulator where they "
    "are not registered (a registered one is only given the demo's limits an older demo's "
    "record leaves unset)",
)
def demo_command(rate: float, duration: float | None, register: bool) -> None:
    """Drive demo payment flows through a running fleet (the configured broker): what
    `paystream dev --demo` does on the embedded stack, for docker-compose and staging."""
    settings = _settings()

    async def run() -> None:
        if register:
            for tid, said in (await _register_demo_tenants(settings)).items():
                click.echo(f"{tid}: {said}")
        await _demo(settings, rate, duration)

    try:
        # (A broker or server down is said, no traceback: review h66e.)
        _run(run(), note_waiting=False)
    except KeyboardInterrupt:
        click.echo("\nstopped")


async def _register_demo_tenants(settings: Settings) -> dict[str, str]:
    """Register the demo tenants the registry does not hold, and give those it holds the
    limits the demo expects that their records leave unset; say what was done to each.

    Nothing else of a registered one is rewritten: a restart (compose restarts the demo;
    `dev` on an external broker) must not undo an operator's suspension, limits or
    provider. A limit an older demo's record leaves unset is filled in (a registry from a
    run before the demo had it: globex without its daily_transfer_volume never showed the
    cap's refusal), as `paystream tenants limits` writes it; limits an operator set (some
    other than the demo's, or none) are left whole, and said. Written only where the
    record is still what was read (base None loses to anyone registering the same tenant
    meanwhile)."""
    from paystream.tenancy.registry import list_tenants, put_tenants_unless_changed

    known = await list_tenants(settings)
    said: dict[str, str] = {}
    changes: list[tuple[Tenant | None, Tenant]] = []
    for tid in DEMO_TENANTS:
        expected = DEMO_LIMITS.get(tid, TenantLimits())
        base = known.get(tid)
        if base is None:
            tenant = Tenant(
                tenant_id=tid,
                name=tid.title(),
                limits=expected,
                gateway_options=DEMO_GATEWAY_OPTIONS.get(tid, {}),
            )
            changes.append((None, tenant))
            said[tid] = "registered"
            continue
        limits, filled, left = _limits_filled_in(base.limits, expected)
        notes = ["already registered, left as it is"]
        if filled:
            changes.append((base, base.model_copy(update={"limits": limits})))
            notes = [
                f"already registered; the demo's {', '.join(filled)} added ({limits.describe()})"
            ]
        if left:
            notes.append(
                f"{', '.join(left)} left as registered (the demo's: {expected.describe()}; "
                "`paystream tenants limits` sets them)"
            )
        said[tid] = "; ".join(notes)
    for tid in await put_tenants_unless_changed(settings, changes):
        said[tid] = "changed by someone else meanwhile, left as they wrote it"
    return said


def _limits_filled_in(
    registered: TenantLimits, expected: TenantLimits
) -> tuple[TenantLimits, list[str], list[str]]:
    """``registered`` with each limit ``expected`` sets that it leaves unset, where an
    older demo wrote it and nobody changed it since: (those limits, the names filled in,
    the names left otherwise). Such a record sets some of the demo's limits and nothing
    else. Any other was set by an operator (`paystream tenants limits` sets exactly the
    options given: a limit left out, or --clear, is removed on purpose; only listed
    currencies, where a cap filled in would allow or refuse a currency): left whole."""
    names = TenantLimits.model_fields
    ours = [n for n in names if getattr(registered, n) != names[n].default]
    by_an_older_demo = bool(ours) and all(
        getattr(registered, n) == getattr(expected, n) for n in ours
    )
    differ = [
        n
        for n in sorted(expected.model_fields_set)
        if getattr(registered, n) != getattr(expected, n)
    ]
    if not by_an_older_demo:
        return registered, [], differ
    filled = {n: getattr(expected, n) for n in differ}
    limits = TenantLimits.model_validate({**registered.model_dump(), **filled})
    return limits, list(filled), []


@contextlib.asynccontextmanager
async def _demo_customers(
    settings: Settings,
) -> AsyncIterator[tuple[Authenticate | None, Advance | None]]:
    """The demo customers' 3-D Secure steps, taken at the simulator (its state is in
    Redis), and the demo tenants' simulator clocks moved forward (a day for each renewal
    the demo shows: their subscriptions bill daily): None, None without Redis."""
    if not settings.redis_url:
        yield None, None
        return
    import redis.asyncio as aioredis

    from paystream.gateways.errors import GatewayError
    from paystream.gateways.simulator import SimulatorGateway

    redis_client = aioredis.from_url(settings.redis_url)

    def simulator(tenant: str) -> SimulatorGateway:
        return SimulatorGateway(
            redis_client, tenant, record_ttl_seconds=settings.idempotency_ttl_seconds
        )

    async def authenticate(tenant: str, provider_payment_id: str, passed: bool) -> None:
        with contextlib.suppress(GatewayError):  # (a tenant an operator moved off it)
            await simulator(tenant).complete_authentication(provider_payment_id, succeed=passed)

    async def advance(tenant: str, seconds: int) -> None:
        # Only the demo's own tenants (DEMO_TENANTS) come here: their simulator's test
        # clock (paystream's own clocks, and other tenants', are not moved).
        await simulator(tenant).advance_clock(seconds)

    try:
        yield authenticate, advance
    finally:
        await redis_client.aclose()


async def _demo(
    settings: Settings,
    rate: float,
    duration: float | None,
    gone: Callable[[], str | None] | None = None,
    *,
    http_base: str | None = None,
) -> None:
    """Demo flows until ``duration``; with ``gone``, stop when it says why (the worker or
    a server of the stack died); with ``http_base`` (a worker's URL) and an ingress
    token, a share of the flows go over the HTTP ingress. Ends with what came of them,
    after a stop (Ctrl-C) too."""
    from paystream.demo import demo_summary

    seen: Counter[str] = Counter()
    started = time.monotonic()
    try:
        await _demo_flows(settings, rate, duration, seen, gone, http_base)
    except (asyncio.CancelledError, click.ClickException):  # stopped, or the stack died
        click.echo("\n" + demo_summary("demo stopped", seen, time.monotonic() - started))
        raise
    click.echo(demo_summary("demo done", seen, time.monotonic() - started))


async def _demo_flows(
    settings: Settings,
    rate: float,
    duration: float | None,
    seen: Counter[str],
    gone: Callable[[], str | None] | None,
    http_base: str | None,
) -> None:
    from paystream.client import PaystreamClient
    from paystream.demo import Platform, demo_progress, run_demo
    from paystream.http_client import IngressClient

    why: str | None = None

    async def watch_worker() -> None:
        nonlocal why
        while gone is None or (why := gone()) is None:
            await asyncio.sleep(0.5)

    def progress(seen: Counter[str], elapsed: float) -> None:
        total = sum(seen.values())
        click.echo(
            f"[{elapsed:6.0f}s] outcomes {total} ({total / max(elapsed, 1e-9):.1f}/s): "
            f"{demo_progress(seen)}"
        )

    token = settings.ingress_token
    http = (
        IngressClient(http_base, token.get_secret_value())
        if http_base is not None and token is not None
        else None
    )
    async with (
        PaystreamClient(settings) as client,
        _demo_customers(settings) as (authenticate, advance),
        http or contextlib.nullcontext(),
    ):
        demo = asyncio.ensure_future(
            run_demo(
                client,
                list(DEMO_TENANTS),
                rate,
                duration=duration,
                on_progress=progress,
                authenticate=authenticate,
                advance=advance,
                http=http,
                seen=seen,
                tax_rates=DEMO_TAX_RATES,
                platforms={
                    tid: Platform(
                        account,
                        CONNECT_CURRENCY,
                        DEMO_LIMITS[tid].daily_transfer_volume[CONNECT_CURRENCY],
                    )
                    for tid, account in DEMO_PLATFORMS.items()
                },
            )
        )
        watcher = asyncio.ensure_future(watch_worker())
        try:
            await asyncio.wait([demo, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Stopped (a signal cancels this task), or the worker died: the flows end
            # before the client closes under them (its consumer gone, each one erred).
            died = not demo.done()
            for task in (demo, watcher):
                task.cancel()
            await asyncio.gather(demo, watcher, return_exceptions=True)
        if died:  # the worker died: its commands would only time out
            raise click.ClickException(why or "the stack went down")
        demo.result()  # (its own failure, raised: not "demo done")
