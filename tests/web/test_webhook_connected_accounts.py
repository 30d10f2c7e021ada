"""Stripe's ``account.updated`` on the platform's Connect endpoint brings a sealed
``connected_account.refresh`` of the account its metadata names, through the same bounds
as a payment's event; another tenant's account, an event on another connected account,
an account rejected here and the echo of what paystream holds are ignored. In process:
the view alone (tests/web/test_webhook_lookups.py's fakes), and the refresh command
built for real."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.gateways.base import CONNECTED_ACCOUNT_REF_KEY
from paystream.gateways.stripe.webhooks import FOLLOWED_ACCOUNT_EVENTS, connected_account_notice
from paystream.gateways.webhook_notices import ConnectedAccountNotice
from tests.web.test_webhook_lookups import (  # noqa: F401 (seen: a fixture)
    TENANT,
    _post,
    assert_a_sealed_refresh,
    assert_another_tenants_and_accounts_are_ignored,
    assert_it_brings_its_refresh,
    assert_unrecorded_is_asked_again_while_recent_then_dropped,
    held_rows,
    seen,
    stripe_event,
)

pytestmark = pytest.mark.asyncio

DUE = ["external_account", "tos_acceptance.date"]


def _event(
    *,
    event_id: str = "evt_a1",
    tenant: str = TENANT,
    account_id: str = "ca_a",
    provider_id: str = "acct_1",
    enabled: bool = True,
    due: list[str] | None = None,
    reason: str | None = None,
    on: str | None = "acct_1",
    created: int | None = None,
) -> dict[str, Any]:
    obj = {
        "id": provider_id,
        "object": "account",
        "charges_enabled": enabled,
        "payouts_enabled": enabled,
        "details_submitted": True,
        "requirements": {"currently_due": due or [], "disabled_reason": reason},
        "metadata": {CONNECTED_ACCOUNT_REF_KEY: f"{tenant}:{account_id}"},
    }
    event = stripe_event("account.updated", event_id, obj, created)
    if on is not None:
        event["account"] = on  # (a Connect endpoint's event names the account it is on)
    return event


def _body(**kw: Any) -> bytes:
    return json.dumps(_event(**kw)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {
        "ca_a": {
            "provider_account_id": "acct_1",
            "status": "pending",
            "charges_enabled": False,
            "payouts_enabled": False,
            "details_submitted": False,
            "currently_due": DUE,
            "disabled_reason": "requirements.past_due",
        }
    }
    return held_rows(seen, monkeypatch, "connected_account_id", held)


async def test_an_account_updated_names_paystreams_account() -> None:
    assert {"account.updated"} == FOLLOWED_ACCOUNT_EVENTS
    notice = connected_account_notice(_event(due=DUE, reason="requirements.past_due"))
    assert notice == ConnectedAccountNotice(
        "evt_a1", "account.updated", TENANT, "ca_a", "acct_1", (True, True, True),
        tuple(DUE), "requirements.past_due", None, notice.created,
    )  # fmt: skip
    # Heard about the account on another connected account: that one's.
    assert connected_account_notice(_event(on="acct_other")).account == "acct_other"  # type: ignore[union-attr]
    unnamed = _event()
    unnamed["data"]["object"]["metadata"] = {}
    assert connected_account_notice(unnamed) is None  # (an account paystream did not make)


async def test_an_account_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    ids = {"connected_account_id": "ca_a", "provider_account_id": "acct_1"}
    await assert_it_brings_its_refresh(seen, _body(), ConnectedAccountNotice, ids)


async def test_another_tenants_or_accounts_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_another_tenants_and_accounts_are_ignored(seen, _body, "connected account", "on")


async def test_echoes_and_rejected_accounts_are_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    # What a refresh read (flags, requirements due, reason): nothing new.
    echo = {"enabled": False, "due": DUE, "reason": "requirements.past_due"}
    rows["ca_a"]["details_submitted"] = True
    status, body = await _post(_body(**echo))  # type: ignore[arg-type]
    assert status == 200 and body["action"] == "ignored" and "as recorded already" in body["why"], (
        body
    )
    rows["ca_a"]["status"] = "rejected"
    status, body = await _post(_body(event_id="evt_a2"))
    assert (status, body["action"]) == (200, "ignored") and "rejected already" in body["why"]
    rows["ca_a"].update(status="pending", provider_account_id="acct_other")
    status, body = await _post(_body(event_id="evt_a3"))
    assert (status, body["action"]) == (200, "ignored")
    assert "another provider account" in body["why"]
    assert seen.sent == []
    # A requirement newly due on what paystream holds: news.
    rows["ca_a"]["provider_account_id"] = "acct_1"
    status, body = await _post(_body(event_id="evt_a4", **{**echo, "due": [*DUE, "x"]}))  # type: ignore[arg-type]
    assert (status, body["action"]) == (200, "refresh") and len(seen.sent) == 1


async def test_an_unrecorded_account_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_unrecorded_is_asked_again_while_recent_then_dropped(
        seen, _body, None, account_id="ca_parked"
    )


async def test_the_refresh_is_a_sealed_connected_account_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = ConnectedAccountNotice(
        "evt_9", "account.updated", TENANT, "ca_a", "acct_1", None, None, None, None
    )
    assert_a_sealed_refresh(
        monkeypatch, notice, "connected_account.refresh", {"connected_account_id": "ca_a"}
    )
