"""Review h78m: connected accounts (d20d71b, 7b671a6), its tests kept. Each failed before
its fix: F3 in 9c54b15; F1 (an account out of pending is never pending again), F2 (a
link's command lookup says it was made; a new link wants a new key) and F4 (a simulator
tenant acting for a connected account is refused) in h78n's."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from paystream.client import build_command
from paystream.gateways.base import (
    ConnectedAccountResult,
    CreateAccountLink,
    RetrieveConnectedAccount,
)
from paystream.gateways.errors import UnsupportedOperation
from paystream.gateways.simulator import SimulatorGateway, results
from paystream.gateways.simulator import operations as ops
from paystream.gateways.simulator.store import Tx
from paystream.gateways.stripe_rules import platform_only_problem
from paystream.ids import derived_id
from paystream.tables.commands_view import LINK_NOT_KEPT, command_view
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

LINK = {
    "refresh_url": "https://platform.example/reauth",
    "return_url": "https://platform.example/done",
}


def _sim(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _provider_says(
    sim: SimulatorGateway, provider_account_id: str, **state: Any
) -> ConnectedAccountResult:
    """The simulator (as Stripe) moves the account to ``state``: what Stripe does on its
    own (a requirement past due, a review), as complete_onboarding does for a visit."""

    async def put(tx: Tx) -> dict[str, Any]:
        acct = {**await ops._must(tx, provider_account_id, "account"), **state}
        tx.put(acct)
        return {"ok": results.connected_account(acct)}

    return await sim._provider_action(
        f"h78m:{uuid.uuid4().hex}", state, put, ConnectedAccountResult
    )


async def test_a_custom_account_disabled_by_stripe_is_recorded_so(harness: Harness) -> None:
    """F1. Stripe: `details_submitted` -- "Accounts with Stripe Dashboard access ... cannot
    receive payouts before this is true": an account *without* one (custom) may be charges-
    and payouts-enabled with details_submitted false (the platform gave everything through
    the API). When Stripe later disables it (a requirement past due), the flags read
    (False, False, False, requirements.past_due): connected_account_status says `pending`,
    CONNECTED_ACCOUNT_MOVES refuses enabled -> pending as a "stale read", and paystream
    keeps saying `enabled` (charges_enabled true) for an account Stripe has disabled, on
    every refresh and every account.updated, for good."""
    t = harness.add_tenant()
    out = await harness.send(
        "connected_account.create",
        t,
        {"country": "US", "type": "custom", "capabilities": ["card_payments", "transfers"]},
    )
    assert kind(out) == "connected_account.created", data(out)
    acct = data(out)["object"]
    sim = _sim(harness, t)
    await _provider_says(
        sim, acct["provider_account_id"], charges_enabled=True, payouts_enabled=True,
        details_submitted=False, currently_due=[], disabled_reason=None,
    )  # fmt: skip
    enabled = await harness.send(
        "connected_account.refresh", t, {"connected_account_id": acct["id"]}
    )
    assert data(enabled)["object"]["status"] == "enabled", data(enabled)
    # Stripe disables it: a requirement came due and passed its deadline.
    await _provider_says(
        sim, acct["provider_account_id"], charges_enabled=False, payouts_enabled=False,
        details_submitted=False, currently_due=["individual.verification.document"],
        disabled_reason="requirements.past_due",
    )  # fmt: skip
    out = await harness.send("connected_account.refresh", t, {"connected_account_id": acct["id"]})
    assert kind(out) == "connected_account.updated", data(out)  # was: invalid_state
    assert data(out)["object"]["charges_enabled"] is False
    assert data(out)["object"]["status"] == "restricted"


async def _custom_account_enabled_through_the_api(
    h: Harness, t: str
) -> tuple[SimulatorGateway, dict[str, Any]]:
    """A custom account the simulator (as Stripe) enables with its details never
    submitted (the platform gave them through the API), read back enabled."""
    out = await h.send(
        "connected_account.create",
        t,
        {"country": "US", "type": "custom", "capabilities": ["card_payments", "transfers"]},
    )
    acct = data(out)["object"]
    sim = _sim(h, t)
    await _provider_says(sim, acct["provider_account_id"], **ENABLED_UNSUBMITTED)
    out = await h.send("connected_account.refresh", t, {"connected_account_id": acct["id"]})
    assert data(out)["object"]["status"] == "enabled", data(out)
    return sim, acct


ENABLED_UNSUBMITTED: dict[str, Any] = {
    "charges_enabled": True, "payouts_enabled": True, "details_submitted": False,
    "currently_due": [], "disabled_reason": None,
}  # fmt: skip
DISABLED_UNSUBMITTED: dict[str, Any] = {
    "charges_enabled": False, "payouts_enabled": False, "details_submitted": False,
    "currently_due": ["individual.verification.document"],
    "disabled_reason": "requirements.past_due",
}  # fmt: skip


async def test_a_custom_account_disabled_then_enabled_again(harness: Harness) -> None:
    """F1: enabled → disabled (restricted, never pending again) → enabled again, every
    read recorded, each version one more."""
    t = harness.add_tenant()
    sim, acct = await _custom_account_enabled_through_the_api(harness, t)
    seen = []
    for state in (DISABLED_UNSUBMITTED, ENABLED_UNSUBMITTED, DISABLED_UNSUBMITTED):
        await _provider_says(sim, acct["provider_account_id"], **state)
        out = await harness.send(
            "connected_account.refresh", t, {"connected_account_id": acct["id"]}
        )
        assert kind(out) == "connected_account.updated", data(out)
        seen.append((data(out)["previous_status"], data(out)["object"]["status"]))
    assert seen == [("enabled", "restricted"), ("restricted", "enabled"),
                    ("enabled", "restricted")]  # fmt: skip
    row = harness.tables.connected_accounts[f"{t}:{acct['id']}"]
    assert (row["status"], row["charges_enabled"], row["version"]) == ("restricted", False, 5)


async def test_a_webhooks_refresh_of_a_disabled_account_is_never_refused(
    harness: Harness,
) -> None:
    """F1: each `account.updated` about the disabled account brings a refresh (its id
    derived from the event's, as web/webhooks.py builds it): recorded, never a
    `command.rejected` for a command the tenant never sent."""
    t = harness.add_tenant()
    sim, acct = await _custom_account_enabled_through_the_api(harness, t)
    await _provider_says(sim, acct["provider_account_id"], **DISABLED_UNSUBMITTED)
    statuses = []
    for event_id in ("evt_1", "evt_2"):
        refresh = build_command(
            "connected_account.refresh",
            t,
            {"connected_account_id": acct["id"]},
            command_id=derived_id("whk", "stripe", t, event_id),
            source="/paystream/webhooks/stripe",
        )
        _, out = await harness.send_event(refresh)
        assert out is not None and kind(out) == "connected_account.updated", data(out)
        statuses.append(data(out)["object"]["status"])
    assert statuses == ["restricted", "restricted"]


async def test_a_new_link_wants_a_new_key_and_the_lookup_says_one_was_made(
    harness: Harness,
) -> None:
    """F2. A new command id sent under the same idempotency key (a client retrying with
    its key) is answered from the record: `url` null (as the docs now say). The command
    lookup, all an HTTP sender answered 202 has, says the link was made and how to get
    one; a new id under a new key makes a new link."""
    t = harness.add_tenant()
    made = await harness.send("connected_account.create", t, {"country": "US"})
    aid = data(made)["object"]["id"]
    body = {"connected_account_id": aid, **LINK}
    _, first = await harness.send_event(
        build_command("connected_account.onboarding_link", t, body, idempotency_key="link-1")
    )
    assert first is not None and data(first)["url"], data(first)
    _, second = await harness.send_event(
        build_command("connected_account.onboarding_link", t, body, idempotency_key="link-1")
    )
    assert second is not None and data(second)["url"] is None
    view = command_view(harness.idempotency, t, "link-1", time.time())
    assert view is not None and view["state"] == "done"
    assert view["outcome"]["entity"] == {"kind": "connected_accounts", "id": aid}
    assert view["outcome"]["message"] == LINK_NOT_KEPT
    assert "new idempotency key" in LINK_NOT_KEPT
    _, fresh = await harness.send_event(
        build_command("connected_account.onboarding_link", t, body, idempotency_key="link-2")
    )
    assert fresh is not None and data(fresh)["url"] not in (None, data(first)["url"])


async def test_a_custom_account_without_capabilities_is_refused_before_stripe(
    harness: Harness,
) -> None:
    """F3. Stripe's account create: `capabilities` is "Required when
    controller.stripe_dashboard.type is none, which includes Custom accounts". paystream,
    its simulator and the localstripe FAKE all make a custom account without any: a
    command the simulator answers `connected_account.created` is `provider_rejected` on
    Stripe."""
    t = harness.add_tenant()
    out = await harness.send("connected_account.create", t, {"country": "US", "type": "custom"})
    assert kind(out) == "command.rejected", data(out)  # was: connected_account.created
    assert data(out)["reason"] == "validation_error"


async def test_a_simulator_tenant_acting_for_an_account_cannot_make_accounts(
    harness: Harness,
) -> None:
    """F4. A Stripe tenant with --connected-account is refused `unsupported` for all three
    commands (StripeGateway._platform_only); a simulator tenant given one (the CLI takes
    it: registry.validate_connected_account checks only Stripe, Square and Paddle) makes
    connected accounts under it: the simulator lets through what Stripe refuses."""
    t = harness.add_tenant(connected_account="acct_1MerchantA")
    out = await harness.send("connected_account.create", t, {"country": "US"})
    assert kind(out) == "command.rejected", data(out)  # was: connected_account.created
    assert data(out)["reason"] == "unsupported"
    assert data(out)["message"] == platform_only_problem("acct_1MerchantA"), data(out)
    # The link and the read too, as Stripe's, before the simulator is asked anything.
    sim = _sim(harness, t)
    calls = (
        lambda: sim.create_account_link(
            CreateAccountLink(provider_account_id="acct_x", **LINK), idempotency_key="k1"
        ),
        lambda: sim.retrieve_connected_account(
            RetrieveConnectedAccount(provider_account_id="acct_x"), idempotency_key="k2"
        ),
    )
    for call in calls:
        with pytest.raises(UnsupportedOperation, match="--connected-account"):
            await call()
    assert await sim.effects() == []
