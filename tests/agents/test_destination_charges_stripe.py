"""Destination charges of a Stripe tenant through the pipeline, against localstripe with
its FAKE of what it lacks (tests/fixtures/localstripe_server.py: transfer_data,
application_fee_amount, the capture's fee, a refund's reverse_transfer and
refund_application_fee): the PaymentIntent as Stripe holds it, a replay under its key, a
partial capture's fee capped, the refund's options sent, and a tenant acting for a
connected account refused before any request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio

AUTH = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as resp:
        resp.raise_for_status()
        return dict(await resp.json())


async def _enabled_account(
    sh: Harness, t: str, stripe_url: str, onboard: bool = True
) -> dict[str, Any]:
    made = await sh.send(
        "connected_account.create", t, {"country": "US", "capabilities": ["transfers"]}
    )
    acct = data(made)["object"]
    if onboard:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{stripe_url}/_fake/accounts/{acct['provider_account_id']}/onboard",
                data={"outcome": "enabled"},
                headers=AUTH,
            ) as resp,
        ):
            resp.raise_for_status()
        read = await sh.send("connected_account.refresh", t, {"connected_account_id": acct["id"]})
        acct = data(read)["object"]
    return dict(acct)


def _pay(account_id: str, **kw: Any) -> dict[str, Any]:
    return {"amount": 10_000, "currency": "USD", "payment_method_token": "pm_card_visa",
            "connected_account_id": account_id, **kw}  # fmt: skip


async def test_a_destination_charge_at_stripe(sh: Harness, localstripe_url: str) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    assert acct["status"] == "enabled", acct
    out = await sh.send("payment.create", t, _pay(acct["id"], application_fee_amount=1_230),
                        command_id="pay-1")  # fmt: skip
    assert kind(out) == "payment.succeeded", data(out)
    obj = data(out)["object"]
    assert (obj["connected_account_id"], obj["application_fee_amount"]) == (acct["id"], 1_230)
    pi = await _get(f"{localstripe_url}/v1/payment_intents/{obj['provider_payment_id']}")
    assert pi["transfer_data"] == {"destination": acct["provider_account_id"]}, pi
    assert pi["application_fee_amount"] == 1_230 and pi["on_behalf_of"] is None, pi
    again = await sh.send("payment.create", t, _pay(acct["id"], application_fee_amount=1_230),
                          command_id="pay-1")  # fmt: skip
    assert data(again)["object"]["provider_payment_id"] == obj["provider_payment_id"]
    # A refund with both options: sent to Stripe, kept on its Refund.
    body = {"payment_id": obj["id"], "amount": 4_000, "reverse_transfer": True,
            "refund_application_fee": True}  # fmt: skip
    refund = await sh.send("refund.create", t, body)
    assert kind(refund) == "refund.succeeded", data(refund)
    held = await _get(
        f"{localstripe_url}/v1/refunds/{data(refund)['object']['provider_refund_id']}"
    )
    assert (held["reverse_transfer"], held["refund_application_fee"]) == (True, True), held


async def test_a_partial_capture_names_the_capped_fee(sh: Harness, localstripe_url: str) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    made = await sh.send(
        "payment.create", t, _pay(acct["id"], application_fee_amount=4_000, capture="manual")
    )
    assert kind(made) == "payment.authorized", data(made)
    out = await sh.send(
        "payment.capture", t, {"payment_id": data(made)["object"]["id"], "amount": 3_000}
    )
    assert kind(out) == "payment.succeeded", data(out)
    assert data(out)["object"]["application_fee_amount"] == 3_000
    pi = await _get(
        f"{localstripe_url}/v1/payment_intents/{data(out)['object']['provider_payment_id']}"
    )
    assert pi["application_fee_amount"] == 3_000, pi


async def test_an_account_not_enabled_is_refused_before_stripe(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url, onboard=False)
    out = await sh.send("payment.create", t, _pay(acct["id"]))
    assert data(out)["reason"] == "invalid_state" and "is pending" in data(out)["message"]


async def test_a_tenant_acting_for_a_connected_account_is_refused(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    sh.tenants[t] = {**sh.tenants[t], "connected_account": "acct_1Merchant"}
    out = await sh.send("payment.create", t, _pay(acct["id"]))
    assert kind(out) == "command.rejected" and data(out)["reason"] == "unsupported", data(out)
    assert "acct_1Merchant" in data(out)["message"]


async def test_the_fake_refuses_as_stripe_does(sh: Harness, localstripe_url: str) -> None:
    """localstripe's FAKE of destination charges: an unknown destination, one whose
    onboarding is unfinished, a fee above the amount, and refund options on a charge
    without a transfer are refused 400, as Stripe refuses them."""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    pending = await _enabled_account(sh, t, localstripe_url, onboard=False)
    base = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa",
            "confirm": "true", "payment_method_types[]": "card"}  # fmt: skip

    async def post(path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{localstripe_url}{path}", data=form, headers=AUTH) as resp,
        ):
            return resp.status, dict(await resp.json())

    unknown = await post("/v1/payment_intents", {**base, "transfer_data[destination]": "acct_x"})
    assert unknown[0] == 400 and "No such destination" in str(unknown[1]), unknown
    status, body = await post(
        "/v1/payment_intents",
        {**base, "transfer_data[destination]": pending["provider_account_id"]},
    )
    assert status == 400 and "transfers" in str(body), body
    status, body = await post(
        "/v1/payment_intents",
        {**base, "transfer_data[destination]": "acct_x", "application_fee_amount": "1001"},
    )
    assert status == 400 and "application_fee_amount" in str(body), body
    status, plain = await post("/v1/payment_intents", base)
    assert status == 200 and plain["transfer_data"] is None, plain
    status, body = await post(
        "/v1/refunds", {"payment_intent": plain["id"], "reverse_transfer": "true"}
    )
    assert status == 400 and "destination charge" in str(body), body


async def test_the_fake_refuses_a_fee_refund_without_the_reversal(
    sh: Harness, localstripe_url: str
) -> None:
    """Stripe: "if you refund the application fee for a destination charge, you must also
    reverse the transfer". The FAKE refuses refund_application_fee alone (400) and makes
    no refund; with reverse_transfer it refunds."""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    form = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa",
            "confirm": "true", "payment_method_types[]": "card",
            "transfer_data[destination]": acct["provider_account_id"],
            "application_fee_amount": "100"}  # fmt: skip

    async def post(path: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{localstripe_url}{path}", data=body, headers=AUTH) as resp,
        ):
            return resp.status, dict(await resp.json())

    status, pi = await post("/v1/payment_intents", form)
    assert status == 200 and pi["status"] == "succeeded", pi
    refund = {"payment_intent": pi["id"], "amount": "400", "refund_application_fee": "true"}
    status, body = await post("/v1/refunds", refund)
    assert status == 400 and "reverse_transfer" in str(body), body
    status, body = await post("/v1/refunds", {**refund, "reverse_transfer": "false"})
    assert status == 400 and "reverse_transfer" in str(body), body
    status, made = await post("/v1/refunds", {**refund, "reverse_transfer": "true"})
    assert status == 200 and made["amount"] == 400, made
    charge = await _get(f"{localstripe_url}/v1/charges/{made['charge']}")
    assert charge["amount_refunded"] == 400, charge  # (the refused ones refunded nothing)


async def test_a_recipient_account_takes_destination_charges_at_stripe(
    sh: Harness, localstripe_url: str
) -> None:
    """Review h79r_a L3: an account that requested `transfers` alone is a recipient:
    Stripe never enables its charges ("can't process payments"), its `transfers`
    capability active once onboarded; paystream reads it `enabled`, and the FAKE, as
    Stripe, takes the destination charge on its transfers capability."""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    raw = await _get(f"{localstripe_url}/v1/accounts/{acct['provider_account_id']}")
    assert (raw["charges_enabled"], raw["payouts_enabled"], raw["capabilities"]) == (
        False, True, {"transfers": "active"}
    ), raw  # fmt: skip
    assert (acct["charges_enabled"], acct["status"]) == (False, "enabled"), acct
    out = await sh.send("payment.create", t, _pay(acct["id"], application_fee_amount=500))
    assert kind(out) == "payment.succeeded", data(out)
