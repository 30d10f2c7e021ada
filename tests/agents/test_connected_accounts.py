"""Connected accounts (Stripe Connect onboarding) through the pipeline, on the real
simulator: connected_account.create, .onboarding_link and .refresh, their outcomes and
rejections (validation, another tenant's account, providers without them, a tenant
narrowed), the status a refresh derives (pending → enabled | restricted | rejected), and
an onboarding link's URL emitted once and kept nowhere (a replay answers without it)."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from paystream.agents.handlers import HANDLERS, Rejection
from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.streams import commands as c
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from paystream.streams.outcomes import RejectReason
from paystream.tables.state_machines import CONNECTED_ACCOUNT_MOVES, connected_account_status
from paystream.tenancy.models import Tenant
from tests.agents.connected_account_setup import handler_ctx, unreachable_gateway
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

LINK = {
    "refresh_url": "https://platform.example/reauth",
    "return_url": "https://platform.example/done",
}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


def _rejected(out: Any, reason: str) -> dict[str, Any]:
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == reason, data(out)
    return data(out)


async def _account(
    h: Harness, t: str, email: str = "shop@example.com", **kw: Any
) -> dict[str, Any]:
    out = await h.send(
        "connected_account.create",
        t,
        {"country": "US", "email": email, "capabilities": ["card_payments", "transfers"], **kw},
    )
    assert kind(out) == "connected_account.created", data(out)
    return dict(data(out)["object"])


async def _refresh(h: Harness, t: str, account_id: str) -> Any:
    return await h.send("connected_account.refresh", t, {"connected_account_id": account_id})


async def test_the_commands_are_registered() -> None:
    assert {
        "connected_account.create",
        "connected_account.onboarding_link",
        "connected_account.refresh",
    } <= set(COMMANDS)
    assert "connected_account.refresh" in PROVIDER_READS
    assert "connected_account.onboarding_link" not in PROVIDER_READS


async def test_a_new_account_is_pending_with_its_requirements(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, business_type="company", metadata={"shop": "7"})
    assert acct["id"].startswith("ca_") and acct["provider_account_id"].startswith("acct_")
    assert acct["status"] == "pending" and acct["type"] == "express"
    assert (acct["charges_enabled"], acct["payouts_enabled"], acct["details_submitted"]) == (
        False,
        False,
        False,
    )
    assert "company.tax_id" in acct["currently_due"] and "external_account" in acct["currently_due"]
    assert acct["disabled_reason"] == "requirements.past_due"
    assert acct["capabilities"] == ["card_payments", "transfers"] and acct["metadata"] == {
        "shop": "7"
    }
    assert "email" not in acct  # (sent to the provider, kept there only)
    # No tag in its email: its holder never finishes, and a read finds it pending still.
    await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    again = await _refresh(harness, t, acct["id"])
    assert kind(again) == "connected_account.updated", data(again)
    assert data(again)["object"]["status"] == "pending"
    assert data(again)["previous_status"] == "pending"


async def test_a_custom_account_under_a_chosen_id(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, connected_account_id="merchant-1", type="custom")
    assert (acct["id"], acct["type"]) == ("merchant-1", "custom")
    out = await harness.send(
        "connected_account.create", t, {"connected_account_id": "merchant-1", "country": "FR"}
    )
    assert "already exists" in _rejected(out, "invalid_state")["message"]


@pytest.mark.parametrize(
    ("tag", "status", "enabled", "reason"),
    [
        ("enabled", "enabled", True, None),
        ("restricted", "restricted", False, "requirements.past_due"),
        ("rejected", "rejected", False, "rejected.fraud"),
    ],
)
async def test_onboarding_then_a_refresh_records_what_the_holder_left(
    harness: Harness, tag: str, status: str, enabled: bool, reason: str | None
) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, email=f"shop+{tag}@example.com")
    assert acct["status"] == "pending"  # (onboarding comes after the link)
    link = await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert kind(link) == "connected_account.onboarding_link_created", data(link)
    out = await _refresh(harness, t, acct["id"])
    assert kind(out) == "connected_account.updated", data(out)
    obj = data(out)["object"]
    assert (obj["status"], obj["charges_enabled"], obj["payouts_enabled"]) == (
        status,
        enabled,
        enabled,
    )
    assert obj["details_submitted"] is True and obj["disabled_reason"] == reason
    assert data(out)["previous_status"] == "pending" and data(out)["version"] == 2
    assert harness.tables.connected_accounts[f"{t}:{acct['id']}"]["status"] == status


async def test_a_rejected_account_is_final(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t, email="x+rejected@example.com")
    await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert data(await _refresh(harness, t, acct["id"]))["object"]["status"] == "rejected"
    # (read again, answered from the record: nothing the provider says moves it)
    again = await _refresh(harness, t, acct["id"])
    assert kind(again) == "connected_account.updated", data(again)
    assert (data(again)["previous_status"], data(again)["object"]["status"]) == (
        "rejected",
        "rejected",
    )
    out = await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert "cannot be onboarded" in _rejected(out, "invalid_state")["message"]


async def test_an_enabled_account_restricted_later_and_enabled_again(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    sim = _gateway(harness, t)
    seen = []
    for outcome in ("enabled", "restricted", "enabled"):
        await sim.complete_onboarding(acct["provider_account_id"], outcome)
        out = await _refresh(harness, t, acct["id"])
        seen.append((data(out)["previous_status"], data(out)["object"]["status"]))
    assert seen == [("pending", "enabled"), ("enabled", "restricted"), ("restricted", "enabled")]


async def test_an_onboarding_link_is_emitted_once_and_kept_nowhere(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # (paystream's own loggers, every line)
    t = harness.add_tenant()
    acct = await _account(harness, t)
    event = build_command(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    _, out = await harness.send_event(event)
    assert out is not None and kind(out) == "connected_account.onboarding_link_created", data(out)
    url = data(out)["url"]
    assert url.startswith("https://") and acct["provider_account_id"] in url
    assert data(out)["connected_account_id"] == acct["id"]
    expires = datetime.fromisoformat(data(out)["expires_at"])
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 15 * 60
    # Kept nowhere paystream keeps anything: not in its idempotency record, not on the
    # account, whose version the link leaves as it was.
    kept = orjson.dumps([harness.idempotency, dict(harness.tables.connected_accounts)])
    assert url.encode() not in kept
    assert harness.tables.connected_accounts[f"{t}:{acct['id']}"]["version"] == 1
    assert url not in caplog.text
    # A replay (the same command delivered again) is answered from what was kept: the
    # same outcome without the URL, and no second link is made at the provider.
    links = [e for e in await _gateway(harness, t).effects() if e.kind == "account_link.created"]
    _, replay = await harness.send_event(event)
    assert replay is not None and kind(replay) == kind(out)
    assert data(replay)["url"] is None
    assert {k: v for k, v in data(replay).items() if k != "url"} == {
        k: v for k, v in data(out).items() if k != "url"
    }
    again = [e for e in await _gateway(harness, t).effects() if e.kind == "account_link.created"]
    assert again == links and len(links) == 1
    # A new command id makes a new link.
    fresh = await harness.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert data(fresh)["url"] not in (None, url)


async def test_a_create_redelivered_makes_one_account(harness: Harness) -> None:
    t = harness.add_tenant()
    event = build_command("connected_account.create", t, {"country": "DE"})
    await harness.assert_redelivered_alike(event)
    made = [e for e in await _gateway(harness, t).effects() if e.kind == "account.created"]
    assert len(made) == 1 and len(harness.tables.connected_accounts) == 1


async def test_another_tenants_account_is_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    acct = await _account(harness, a)
    _rejected(await _refresh(harness, b, acct["id"]), "not_found")
    out = await harness.send(
        "connected_account.onboarding_link", b, {"connected_account_id": acct["id"], **LINK}
    )
    _rejected(out, "not_found")
    assert [e.kind for e in await _gateway(harness, b).effects()] == []


@pytest.mark.parametrize(
    ("command", "body", "loc"),
    [
        ("connected_account.create", {"country": "us"}, "country"),
        ("connected_account.create", {"country": "US", "type": "standard"}, "type"),
        (
            "connected_account.create",
            {"country": "US", "capabilities": ["treasury"]},
            "capabilities",
        ),
        (
            "connected_account.create",
            {"country": "US", "capabilities": ["transfers", "transfers"]},
            "capabilities",
        ),
        ("connected_account.create", {"country": "US", "business_type": "llc"}, "business_type"),
        ("connected_account.create", {"country": "US", "email": "not-an-email"}, "email"),
        (
            "connected_account.onboarding_link",
            {"connected_account_id": "a", **LINK, "return_url": "http://platform.example/done"},
            "return_url",
        ),
        (
            "connected_account.onboarding_link",
            {"connected_account_id": "a", **LINK, "refresh_url": "javascript:alert(1)"},
            "refresh_url",
        ),
        ("connected_account.onboarding_link", {"connected_account_id": "a"}, "refresh_url"),
    ],
)
async def test_invalid_commands_are_refused(
    harness: Harness, command: str, body: dict[str, Any], loc: str
) -> None:
    t = harness.add_tenant()
    rejected = _rejected(await harness.send(command, t, body), "validation_error")
    assert loc in {e["loc"] for e in rejected["errors"]}, rejected
    assert await _gateway(harness, t).effects() == []


async def test_a_custom_account_requests_a_capability(harness: Harness) -> None:
    """Stripe requires capabilities for a custom account (no Stripe-hosted dashboard):
    refused before any call, not answered created here and provider_rejected on Stripe
    (review h78m F3)."""
    t = harness.add_tenant()
    out = await harness.send("connected_account.create", t, {"country": "US", "type": "custom"})
    rejected = _rejected(out, "validation_error")
    assert "at least one capability" in str(rejected["errors"]), rejected
    assert await _gateway(harness, t).effects() == []


async def test_a_loopback_http_link_is_allowed(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    body = {
        "connected_account_id": acct["id"],
        "refresh_url": "http://localhost:3000/reauth",
        "return_url": "http://127.0.0.1:3000/done",
    }
    out = await harness.send("connected_account.onboarding_link", t, body)
    assert kind(out) == "connected_account.onboarding_link_created", data(out)


async def test_a_tenant_narrowed_out_of_connected_accounts_is_refused(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"capabilities": ["customers", "payments"]})
    out = await harness.send("connected_account.create", t, {"country": "US"})
    message = _rejected(out, "unsupported")["message"]
    assert "connected_accounts" in message and t in message, message
    assert await _gateway(harness, t).effects() == []


@pytest.mark.parametrize("provider", ["square", "paddle"])
async def test_square_and_paddle_answer_unsupported_before_any_call(
    redis_url: str, provider: str
) -> None:
    """Their gateways reach nothing here (an address no server holds): a call made would
    be `provider_unavailable`, not `unsupported`."""
    async with unreachable_gateway(redis_url, provider) as gateway:
        create = c.CreateConnectedAccount(country="US")
        link = c.CreateAccountLink(connected_account_id="ca_1", **LINK)
        for command_type, body in (
            ("connected_account.create", create),
            ("connected_account.onboarding_link", link),
        ):
            with pytest.raises(Rejection) as refused:
                await HANDLERS[command_type](handler_ctx(gateway, command_type), body)
            assert refused.value.reason is RejectReason.UNSUPPORTED, refused.value
            assert f"{provider} does not support connected accounts" in str(refused.value)


@pytest.mark.parametrize(
    ("flags", "status"),
    [
        ((False, False, False, "requirements.past_due"), "pending"),
        ((False, False, False, None), "pending"),
        ((True, True, True, None), "enabled"),
        ((True, False, True, "requirements.pending_verification"), "restricted"),
        ((False, False, True, "under_review"), "restricted"),
        ((False, False, False, "rejected.terms_of_service"), "rejected"),
        ((True, True, True, "rejected.fraud"), "rejected"),
    ],
)
async def test_the_status_is_derived_from_the_providers_flags(
    flags: tuple[bool, bool, bool, str | None], status: str
) -> None:
    assert connected_account_status(*flags) == status


@pytest.mark.parametrize("was", sorted(CONNECTED_ACCOUNT_MOVES))
async def test_the_status_derived_is_always_a_move_the_account_may_make(was: str) -> None:
    """Whatever the provider answers, the status derived from it is one the account may
    move to (so no read is refused): pending, once left, is never derived again (a
    custom account enabled with its details never submitted, then disabled, is
    restricted: review h78m F1), and rejected stays rejected."""
    reasons = (None, "requirements.past_due", "under_review", "rejected.fraud")
    for charges, payouts, submitted in itertools.product((False, True), repeat=3):
        for reason in reasons:
            status = connected_account_status(charges, payouts, submitted, reason, was)
            assert status in CONNECTED_ACCOUNT_MOVES[was], (was, charges, payouts, reason)
    assert connected_account_status(False, False, False, None, was) == (
        was if was in ("pending", "rejected") else "restricted"
    )
