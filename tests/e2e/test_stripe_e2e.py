"""A real worker with Stripe tenants, against localstripe: commands in, Stripe ids out.

One worker for the module. Tenants:

- ``acme``: registered the documented way (``paystream tenants add acme --gateway stripe
  --secret api_key`` with ``PAYSTREAM_SECRET_API_KEY``), so its key is sealed under the
  deployment's master key and opened only inside the worker;
- ``nokey``: ``gateway="stripe"`` without an ``api_key`` secret;
- ``badkey``: a sealed key that Stripe (localstripe) answers 401 for;
- ``moved``: a sealed ``api_key`` copied from another tenant's record (fails AAD checks).

Every Stripe object the pipeline reports is looked up again on localstripe, so the ids on
``paystream.events`` are provably Stripe's and not paystream's own (which share prefixes
like ``cus_``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from paystream.client import PaystreamClient, build_command
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.gateway_e2e import add_tenant_with_cli, client, data, outcome, provider_objects
from tests.fixtures.pipeline import Deployment

__all__ = ["client"]  # (the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

# Distinctive per run, so finding it in a log can only mean it leaked.
API_KEY = f"sk_test_paystream_e2e_{uuid.uuid4().hex}"
# localstripe accepts only keys starting with sk_: a restricted-key prefix gets a 401.
BAD_KEY = f"rk_test_paystream_e2e_{uuid.uuid4().hex}"
MASTER = MasterKey.generate()
MASTER_B64 = base64.b64encode(MASTER.key).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url, paystream_master_key=MASTER_B64
    )
    keyring = MasterKeyring(MASTER)
    with dep.worker() as worker:  # boots while the tenants are registered
        cli = add_tenant_with_cli(dep, "acme", "stripe", {"api_key": API_KEY})
        assert API_KEY not in cli.stdout + cli.stderr
        # Where the value came from is said (one left exported from another tenant's
        # registration is noticed: review finding).
        assert "api_key: read from PAYSTREAM_SECRET_API_KEY" in cli.stderr
        await dep.add_tenants(
            Tenant(tenant_id="nokey", gateway="stripe"),
            Tenant(
                tenant_id="badkey",
                gateway="stripe",
                secrets={"api_key": seal_secret(keyring, "badkey", "api_key", BAD_KEY)},
            ),
            Tenant(
                tenant_id="moved",
                gateway="stripe",
                secrets={"api_key": seal_secret(keyring, "acme", "api_key", API_KEY)},
            ),
        )
        worker.wait_ready(["acme", "nokey", "badkey", "moved"], partitions=dep.settings.partitions)
        dep.worker_handle = worker  # type: ignore[attr-defined]
        yield dep
    # Again after shutdown: the worker logs on the way out, too.
    assert_no_secrets(worker.log_path.read_text(errors="replace"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api(localstripe_url: str) -> AsyncIterator[Any]:
    """``await stripe_api("customers", "cus_...")`` → the object as localstripe has it."""
    async with provider_objects(localstripe_url, API_KEY, "v1") as get:
        yield get


async def test_stripe_tenant_full_flow_carries_stripe_ids(
    client: PaystreamClient, stripe_api: Any
) -> None:
    cus = await client.command("customer.create", "acme", {"email": "ops@acme.test"})
    assert outcome(cus) == "customer.created", data(cus)
    customer = data(cus)["object"]
    assert customer["provider"] == "stripe"
    assert customer["provider_customer_id"].startswith("cus_")
    assert customer["provider_customer_id"] != customer["id"]
    stripe_cus = await stripe_api("customers", customer["provider_customer_id"])
    assert stripe_cus["email"] == "ops@acme.test"

    pm = await client.command(
        "payment_method.attach", "acme", {"customer_id": customer["id"], "token": "pm_card_visa"}
    )
    assert outcome(pm) == "payment_method.attached", data(pm)
    method = data(pm)["object"]
    assert method["provider_payment_method_id"].startswith("pm_")
    assert (method["brand"], method["last4"]) == ("visa", "4242")
    stripe_pm = await stripe_api("payment_methods", method["provider_payment_method_id"])
    assert stripe_pm["customer"] == customer["provider_customer_id"]

    auto = await client.command(
        "payment.create",
        "acme",
        {
            "amount": 2500,
            "currency": "USD",
            "customer_id": customer["id"],
            "payment_method_id": method["id"],
        },
    )
    assert outcome(auto) == "payment.succeeded", data(auto)
    paid = data(auto)["object"]
    assert paid["provider_payment_id"].startswith("pi_")
    assert (paid["amount"], paid["amount_captured"], paid["currency"]) == (2500, 2500, "USD")
    stripe_pi = await stripe_api("payment_intents", paid["provider_payment_id"])
    assert (stripe_pi["status"], stripe_pi["amount"], stripe_pi["currency"]) == (
        "succeeded",
        2500,
        "usd",
    )
    assert stripe_pi["customer"] == customer["provider_customer_id"]

    manual = await client.command(
        "payment.create",
        "acme",
        {
            "amount": 1200,
            "currency": "EUR",
            "customer_id": customer["id"],
            "payment_method_id": method["id"],
            "capture": "manual",
        },
    )
    assert outcome(manual) == "payment.authorized", data(manual)
    held = data(manual)["object"]
    assert held["provider_payment_id"].startswith("pi_")
    assert held["amount_captured"] == 0
    stripe_held = await stripe_api("payment_intents", held["provider_payment_id"])
    assert stripe_held["status"] == "requires_capture"

    cap = await client.command("payment.capture", "acme", {"payment_id": held["id"]})
    assert outcome(cap) == "payment.succeeded", data(cap)
    captured = data(cap)["object"]
    assert captured["provider_payment_id"] == held["provider_payment_id"]
    assert captured["amount_captured"] == 1200
    stripe_cap = await stripe_api("payment_intents", held["provider_payment_id"])
    assert stripe_cap["status"] == "succeeded"

    ref = await client.command("refund.create", "acme", {"payment_id": paid["id"], "amount": 1000})
    assert outcome(ref) == "refund.succeeded", data(ref)
    refund = data(ref)["object"]
    assert refund["provider_refund_id"].startswith("re_")
    assert (refund["amount"], refund["payment_id"]) == (1000, paid["id"])
    stripe_re = await stripe_api("refunds", refund["provider_refund_id"])
    assert (stripe_re["amount"], stripe_re["payment_intent"]) == (
        1000,
        paid["provider_payment_id"],
    )


async def test_stripe_decline_is_a_failed_payment(client: PaystreamClient) -> None:
    """localstripe declines pm_card_chargeCustomerFail on charge (as Stripe does)."""
    out = await client.command(
        "payment.create",
        "acme",
        {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_chargeCustomerFail"},
    )
    assert outcome(out) == "payment.failed", data(out)
    assert data(out)["error"]["code"] == "card_declined"
    assert data(out)["error"]["provider"] == "stripe"
    assert data(out)["error"]["retryable"] is False


async def test_stripe_tenant_without_api_key_is_rejected(client: PaystreamClient) -> None:
    out = await client.command("customer.create", "nokey", {})
    assert outcome(out) == "command.rejected"
    assert data(out) == {
        "command_type": "customer.create",
        "reason": "gateway_not_configured",
        "message": "tenant 'nokey' has no Stripe api_key credential configured",
    }


async def test_stripe_tenant_with_unopenable_secret_is_not_configured(
    client: PaystreamClient,
) -> None:
    out = await client.command("customer.create", "moved", {})
    assert outcome(out) == "command.rejected"
    assert data(out)["reason"] == "gateway_not_configured"


async def test_stripe_tenant_with_rejected_api_key_gets_an_outcome(
    client: PaystreamClient,
) -> None:
    cmd = build_command("customer.create", "badkey", {})
    pending = client.expect("badkey", cmd.get_id())
    await client.publish(cmd)
    # A fence instead of a timeout: same tenant → same partition, processed and answered
    # in order, so once the fence's rejection is here the command above was answered too.
    fence = await client.command("payment.create", "badkey", {})
    assert (outcome(fence), data(fence)["reason"]) == ("command.rejected", "validation_error")
    assert pending.done(), "no outcome for customer.create (the command was parked)"
    out = pending.result()
    assert outcome(out) == "command.rejected"
    assert data(out)["reason"] == "gateway_not_configured"
    assert BAD_KEY not in str(data(out))


async def test_worker_log_never_contains_secrets(deployed: Deployment) -> None:
    """Runs last in the module: every command above has gone through the worker."""
    log = deployed.worker_handle.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert "stripe" in log.lower(), "expected the worker log to show Stripe traffic"
    assert_no_secrets(log)


def assert_no_secrets(text: str) -> None:
    for secret in (API_KEY, BAD_KEY, MASTER_B64):
        assert secret not in text
    # The key bodies without their prefixes, too (e.g. a masked "sk_test_***<rest>").
    assert API_KEY.removeprefix("sk_test_") not in text
    assert BAD_KEY.removeprefix("rk_test_") not in text
