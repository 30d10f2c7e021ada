"""Stripe Connect's accounts and account links over a fake transport answering with
Stripe's documented bodies (https://docs.stripe.com/api/accounts,
https://docs.stripe.com/api/account_links): the platform's key with no Stripe-Account,
the form Stripe takes, the mapping of an Account's requirements, the refusal of a
tenant acting for a connected account before any request, and an account link's URL
never logged."""

from __future__ import annotations

import logging

import pytest

from paystream.gateways.base import (
    Capability,
    ConnectedAccountType,
    CreateAccountLink,
    CreateConnectedAccount,
    RetrieveConnectedAccount,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES
from paystream.worker import quiet_libraries
from tests.gateways.stripe.test_stripe_transport import API_BASE, answer, error, gateway

pytestmark = pytest.mark.asyncio

ACCOUNT = {
    "id": "acct_1Nv0FGQ9RKHgCVdK",
    "object": "account",
    "type": "custom",
    "country": "US",
    "email": "shop@example.com",
    "business_type": "company",
    "charges_enabled": False,
    "payouts_enabled": True,
    "details_submitted": True,
    "capabilities": {"card_payments": "inactive", "transfers": "active"},
    "metadata": {"paystream_connected_account": "t1:ca_1"},
    "requirements": {
        "currently_due": ["company.tax_id", "representative.verification.document"],
        "eventually_due": [],
        "past_due": ["company.tax_id"],
        "disabled_reason": "requirements.past_due",
        "current_deadline": None,
        "errors": [],
    },
}
LINK_URL = "https://connect.stripe.com/setup/e/acct_1Nv0FGQ9RKHgCVdK/SECRETxyz"
ACCOUNT_LINK = {
    "object": "account_link",
    "created": 1_767_225_000,
    "expires_at": 1_767_225_300,
    "url": LINK_URL,
}
CREATE = CreateConnectedAccount(
    type=ConnectedAccountType.CUSTOM,
    country="US",
    email="shop@example.com",
    business_type="company",
    capabilities=("card_payments", "transfers"),
    metadata={"paystream_connected_account": "t1:ca_1"},
)
LINK = CreateAccountLink(
    provider_account_id="acct_1Nv0FGQ9RKHgCVdK",
    refresh_url="https://platform.example/reauth",
    return_url="https://platform.example/done",
)


async def test_stripe_offers_connected_accounts() -> None:
    assert Capability.CONNECTED_ACCOUNTS in STRIPE_CAPABILITIES


async def test_an_account_is_made_on_the_platforms_key_under_the_commands_key() -> None:
    gw, fake = gateway(answer(200, ACCOUNT))
    res = await gw.create_connected_account(CREATE, idempotency_key="ps:t1:k1")
    assert res.provider_account_id == "acct_1Nv0FGQ9RKHgCVdK" and res.type == "custom"
    assert (res.charges_enabled, res.payouts_enabled, res.details_submitted) == (
        False,
        True,
        True,
    )
    assert res.currently_due == ("company.tax_id", "representative.verification.document")
    assert res.disabled_reason == "requirements.past_due"
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("post", f"{API_BASE}/v1/accounts")
    assert req["headers"]["Idempotency-Key"] == "ps:t1:k1"
    assert "Stripe-Account" not in req["headers"]
    form = req["form"]
    assert form["type"] == ["custom"] and form["country"] == ["US"]
    assert form["email"] == ["shop@example.com"] and form["business_type"] == ["company"]
    assert form["capabilities[card_payments][requested]"] == ["true"]
    assert form["capabilities[transfers][requested]"] == ["true"]
    assert form["metadata[paystream_connected_account]"] == ["t1:ca_1"]


async def test_an_express_account_sends_only_what_was_given() -> None:
    gw, fake = gateway(answer(200, {**ACCOUNT, "type": "express"}))
    await gw.create_connected_account(CreateConnectedAccount(country="GB"), idempotency_key="k")
    [req] = fake.requests
    assert req["form"] == {"type": ["express"], "country": ["GB"]}


async def test_an_account_link_is_made_and_its_url_never_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every log at DEBUG, as the worker sets its libraries' levels (worker.quiet_libraries:
    the Stripe SDK logs each response body at DEBUG, held at WARNING there)."""
    stripe_log = logging.getLogger("stripe")
    monkeypatch.setattr(stripe_log, "level", stripe_log.level)  # (put back after)
    caplog.set_level(logging.DEBUG)
    quiet_libraries("DEBUG")
    gw, fake = gateway(answer(200, ACCOUNT_LINK))
    link = await gw.create_account_link(LINK, idempotency_key="ps:t1:k2")
    assert link.url == LINK_URL and int(link.expires_at.timestamp()) == 1_767_225_300
    [req] = fake.requests
    assert (req["method"], req["url"]) == ("post", f"{API_BASE}/v1/account_links")
    assert "Stripe-Account" not in req["headers"]
    assert req["form"] == {
        "account": ["acct_1Nv0FGQ9RKHgCVdK"],
        "type": ["account_onboarding"],
        "refresh_url": ["https://platform.example/reauth"],
        "return_url": ["https://platform.example/done"],
    }
    assert "SECRETxyz" not in caplog.text


async def test_an_account_is_read_back_without_a_key() -> None:
    gw, fake = gateway(answer(200, ACCOUNT))
    req = RetrieveConnectedAccount(provider_account_id="acct_1Nv0FGQ9RKHgCVdK")
    res = await gw.retrieve_connected_account(req, idempotency_key="k3")
    assert res.disabled_reason == "requirements.past_due"
    [sent] = fake.requests
    assert (sent["method"], sent["url"]) == ("get", f"{API_BASE}/v1/accounts/acct_1Nv0FGQ9RKHgCVdK")
    assert "Idempotency-Key" not in sent["headers"]


async def test_an_unknown_account_is_not_found() -> None:
    gw, _ = gateway(
        error(
            400,
            type="invalid_request_error",
            code="resource_missing",
            param="account",
            message="No such account: 'acct_x'",
        )
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_account_link(LINK, idempotency_key="k4")
    assert info.value.code is ErrorCode.NOT_FOUND


async def test_a_tenant_acting_for_a_connected_account_asks_nothing() -> None:
    gw, fake = gateway(answer(200, ACCOUNT), connected_account="acct_42")
    read = RetrieveConnectedAccount(provider_account_id="acct_1")
    for call in (
        gw.create_connected_account(CREATE, idempotency_key="k"),
        gw.create_account_link(LINK, idempotency_key="k"),
        gw.retrieve_connected_account(read, idempotency_key="k"),
    ):
        with pytest.raises(UnsupportedOperation) as info:
            await call
        assert "acct_42" in info.value.message and "platform's own" in info.value.message
    assert fake.requests == []
