"""`paystream simulator`: the simulator's provider side from the shell, for what a
provider's customer does outside paystream (development and demos): finishing a
payment's 3-D Secure step. paystream hears of it only when the payment is read back
(`payment.refresh`), as with a real provider.

A module of its own, importing the gateway only when the command runs: every
`paystream` command loads the CLI, and the simulator package costs ~20 ms to import."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from paystream.gateways.base import PaymentResult
    from paystream.settings import Settings

__all__ = ["simulator_group"]


@click.group("simulator")
def simulator_group() -> None:
    """The simulator gateway's provider side (development and demos)."""


@simulator_group.command("authenticate")
@click.argument("tenant_id")
@click.argument("provider_payment_id")
@click.option("--fail", is_flag=True, help="the customer fails the step")
def authenticate_command(tenant_id: str, provider_payment_id: str, fail: bool) -> None:
    """A simulator tenant's customer finishes the 3-D Secure step of the payment
    PROVIDER_PAYMENT_ID (`provider_payment_id` in the payment's outcome; its status
    `requires_action`). Prints the payment as the simulator holds it then. Send
    `payment.refresh` for paystream to read it back. As at a real provider, the step
    does not depend on the tenant's standing with paystream (a suspended tenant's
    customer takes it too; the refresh waits for the tenant's activation). Needs
    REDIS_URL (the simulator keeps its state there) and the broker (the registry)."""
    from paystream.cli.base import _run, _settings
    from paystream.tenancy.registry import read_registry

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "REDIS_URL is not set: the simulator keeps its state there (paste the `export` "
            "line `paystream dev` printed)"
        )
    # The tenant as the workers know it (a record this version cannot read is skipped,
    # as they skip it): read only, so no refusal to rewrite it.
    tenant = _run(read_registry(settings)).tenants.get(tenant_id)
    if tenant is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    if tenant.gateway != "simulator":
        # (Its customers authenticate at that provider; the simulator has no such payment.)
        raise click.ClickException(
            f"tenant {tenant_id!r} uses the {tenant.gateway!r} gateway, not the simulator"
        )
    res = _run(_authenticate(settings, tenant_id, provider_payment_id, passed=not fail))
    click.echo(json.dumps(_shown(res), sort_keys=True))


async def _authenticate(
    settings: Settings, tenant_id: str, provider_payment_id: str, *, passed: bool
) -> PaymentResult:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from paystream.gateways.base import RetrievePayment
    from paystream.gateways.errors import ErrorCode, GatewayError
    from paystream.gateways.simulator import SimulatorGateway

    assert settings.redis_url is not None
    client = aioredis.from_url(settings.redis_url)
    try:
        simulator = SimulatorGateway(
            client, tenant_id, record_ttl_seconds=settings.idempotency_ttl_seconds
        )
        try:
            return await simulator.complete_authentication(provider_payment_id, succeed=passed)
        except GatewayError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                # (paystream's own payment id, pay_…, is the likely mistake; with a
                # provider id, another tenant's payment; anything else may be a pasted
                # key, token or card number: not repeated)
                if re.fullmatch(r"pi_[A-Za-z0-9]{1,64}", provider_payment_id):
                    given = repr(provider_payment_id)
                    hint = "is it another tenant's? Name the tenant its payment.create named"
                elif re.fullmatch(r"pay_[a-z]{1,64}", provider_payment_id):
                    given = repr(provider_payment_id)
                    hint = (
                        "give the payment's provider_payment_id (the outcome's "
                        "data.object.provider_payment_id), not paystream's pay_… id"
                    )
                else:
                    given = "(what was given is no pi_… id; not repeated: it may be a secret)"
                    hint = (
                        "give the payment's provider_payment_id (pi_…, the outcome's "
                        "data.object.provider_payment_id)"
                    )
                raise click.ClickException(
                    f"the simulator has no payment {given} for tenant {tenant_id}: {hint}"
                ) from exc
            if exc.code is not ErrorCode.IDEMPOTENCY_ERROR:
                raise
            # The simulator keeps its first answer to this payment's step (keyed by the
            # payment, with the verdict): given the other way before, taken or refused.
            # Said so with the payment as it is now, not the simulator's internal key.
            now = await simulator.retrieve_payment(
                RetrievePayment(provider_payment_id=provider_payment_id), idempotency_key=""
            )
            failure = f", {now.failure_code}" if now.failure_code else ""
            raise click.ClickException(
                f"`simulator authenticate{'' if passed else ' --fail'}` came after one "
                f"the other way for {provider_payment_id}, whose answer stands (the "
                f"payment is {now.status.value}{failure})"
            ) from exc
    except RedisError as exc:  # (the simulator's store down: said so, no traceback)
        raise click.ClickException(f"the simulator's Redis: {exc}") from exc
    finally:
        await client.aclose()


@simulator_group.command("advance")
@click.option("--tenant", "tenant_id", required=True, help="the simulator tenant")
@click.option("--seconds", type=click.IntRange(min=0), default=0, help="seconds forward")
@click.option("--days", type=click.IntRange(min=0), default=0, help="days forward")
def advance_command(tenant_id: str, seconds: int, days: int) -> None:
    """Move a simulator tenant's clock forward (a test clock, kept in Redis): the
    renewals of its subscriptions whose periods have begun by then are billed when each
    is next read (`subscription.refresh`), once each, so renewals, declines and cancels
    at period end are seen without waiting; captured money settles (pending →
    available, `balance.retrieve`) and payouts move on (in transit, paid or failed, at
    the next `payout.refresh`) by the same clock. Only ever forward; only that tenant's
    simulator (paystream's own clocks, and other tenants', are not moved). Prints the
    offset in all and the simulator's time now (unix seconds). Needs REDIS_URL and the
    broker (the registry)."""
    from paystream.cli.base import _run, _settings
    from paystream.tenancy.registry import read_registry

    total = seconds + days * 24 * 3600
    if total <= 0:
        raise click.UsageError("give --seconds or --days (more than 0)")
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "REDIS_URL is not set: the simulator keeps its state there (paste the `export` "
            "line `paystream dev` printed)"
        )
    tenant = _run(read_registry(settings)).tenants.get(tenant_id)
    if tenant is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    if tenant.gateway != "simulator":
        raise click.ClickException(
            f"tenant {tenant_id!r} uses the {tenant.gateway!r} gateway, not the simulator"
        )
    click.echo(json.dumps(_run(_advance(settings, tenant_id, total)), sort_keys=True))


async def _advance(settings: Settings, tenant_id: str, seconds: int) -> dict[str, int]:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from paystream.gateways.simulator import SimulatorGateway

    assert settings.redis_url is not None
    client = aioredis.from_url(settings.redis_url)
    try:
        simulator = SimulatorGateway(
            client, tenant_id, record_ttl_seconds=settings.idempotency_ttl_seconds
        )
        return await simulator.advance_clock(seconds)
    except RedisError as exc:
        raise click.ClickException(f"the simulator's Redis: {exc}") from exc
    finally:
        await client.aclose()


def _shown(res: PaymentResult) -> dict[str, Any]:
    return {
        "provider_payment_id": res.provider_payment_id,
        "status": res.status.value,
        "amount_captured": res.amount_captured,
        "failure_code": res.failure_code,
    }
