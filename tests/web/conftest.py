"""A real worker with a known mix of outcomes behind it, for the dashboard and JSON views.

Each test module gets its own deployment (own topics, own consumer group) and worker,
seeded once with:

* acme    payment.create pm_card_visa            -> payment.succeeded
* acme    payment.create pm_card_chargeDeclined  -> payment.failed (card_declined)
* acme    payment.create with a raw card number  -> command.rejected (card_data_forbidden)
* globex  customer.create                        -> customer.created
* nobody  payment.create (unknown tenant)        -> command.rejected (unknown_tenant)
* <img..> customer.create (HTML in a tenant id)  -> command.rejected (unknown_tenant)
* garbage bytes carrying a card number on acme's key -> dead letter (no outcome)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio

from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.fixtures.browser import browser, js_errors, page  # noqa: F401 - fixtures
from tests.fixtures.pipeline import Deployment

# Card numbers that went into the system one way or another; none may ever come out.
PAN = "4242424242424242"
PAN_SPACED = "4242 4242 4242 4242"
PAN_IN_GARBAGE = "4000056655665556"
CARD_NUMBERS = (PAN, PAN_SPACED, PAN_IN_GARBAGE, "4000 0566 5566 5556")
HTML_TENANT = '<img src=x onerror="window.__pwned=1">'
GARBAGE = f"\x00\x01 not an event, card {PAN_IN_GARBAGE}".encode()

EXPECTED_TILES = {
    "t-total": 6,  # every command gets exactly one outcome; the garbage gets none
    "t-succeeded": 1,
    "t-failed": 1,
    "t-rejected": 3,
    "t-dlq": 1,
    "t-parked": 0,
    "t-waiting": 1,  # the dead letter, never replayed
}


@dataclass
class Seeded:
    """The deployment, its (current) worker and what was sent to it."""

    deployment: Deployment
    worker: WorkerProcess
    succeeded_payment: str
    failed_payment: str
    outcomes: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.worker.base_url


async def wait_for_stats(
    worker: WorkerProcess, check: Callable[[dict[str, Any]], bool], timeout: float = 15
) -> dict[str, Any]:
    """Poll /v1/stats until ``check`` holds (the activity log lags the outcome slightly)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        stats = await asyncio.to_thread(worker.stats)
        if stats is not None and check(stats):
            return stats
        await asyncio.sleep(0.1)  # polling interval, not a wait for something to happen
    raise AssertionError(f"/v1/stats never satisfied the check; last: {stats}")


def activity_settled(stats: dict[str, Any]) -> bool:
    act = stats["activity"]
    return act["total"] >= EXPECTED_TILES["t-total"] and act["dead_letters"] >= 1


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(deployment_factory: Any) -> AsyncIterator[Seeded]:
    dep: Deployment = await deployment_factory()
    globex_limits = TenantLimits(commands_per_second=1000, max_payment_amount={"EUR": 50_000})
    await dep.add_tenants(
        Tenant(tenant_id="acme"), Tenant(tenant_id="globex", limits=globex_limits)
    )
    # The dead letter below shows as waiting for a replay at the next measurement.
    dep.env["PAYSTREAM_PARKED_MEASURE_SECONDS"] = "5"  # (the least it may be)
    worker = dep.worker()
    with worker:
        await asyncio.to_thread(
            worker.wait_ready, ["acme", "globex"], partitions=dep.settings.partitions
        )
        # Garbage first on acme's key: acme's later outcomes prove it was processed.
        await dep.produce(dep.settings.commands_topic, (b"acme", GARBAGE, None))
        async with dep.client() as client:
            ok, declined, card, cus, unknown, html = await asyncio.gather(
                client.command(
                    "payment.create",
                    "acme",
                    {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"},
                ),
                client.command(
                    "payment.create",
                    "acme",
                    {
                        "amount": 1200,
                        "currency": "USD",
                        "payment_method_token": "pm_card_chargeDeclined",
                    },
                ),
                dep.command_as_foreign_producer(  # (the client refuses to send it)
                    client,
                    "payment.create",
                    "acme",
                    {"amount": 900, "currency": "USD", "payment_method_token": PAN_SPACED},
                ),
                client.command("customer.create", "globex", {"email": "ops@globex.io"}),
                client.command(
                    "payment.create",
                    "nobody",
                    {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
                ),
                client.command("customer.create", HTML_TENANT, {}),
            )
        outcomes = {
            "succeeded": ok,
            "declined": declined,
            "card": card,
            "customer": cus,
            "unknown": unknown,
            "html": html,
        }
        # The fixture's own sanity: fail here, not in a confusing browser assertion.
        types = {k: v.get_type().removeprefix("com.paystream.") for k, v in outcomes.items()}
        assert types == {
            "succeeded": "payment.succeeded",
            "declined": "payment.failed",
            "card": "command.rejected",
            "customer": "customer.created",
            "unknown": "command.rejected",
            "html": "command.rejected",
        }, types
        assert card.get_data()["reason"] == "card_data_forbidden"  # type: ignore[index]
        assert unknown.get_data()["reason"] == "unknown_tenant"  # type: ignore[index]
        await wait_for_stats(worker, activity_settled)
        seeded = Seeded(
            deployment=dep,
            worker=worker,
            succeeded_payment=ok.get_data()["entity_id"],  # type: ignore[index]
            failed_payment=declined.get_data()["entity_id"],  # type: ignore[index]
            outcomes=outcomes,
        )
        try:
            yield seeded
        finally:
            # A test may have replaced the worker (restart); stop whichever is current.
            if seeded.worker is not worker:
                seeded.worker.stop()
