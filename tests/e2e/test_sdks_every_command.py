"""Both SDKs (paystream.client over Kafka, paystream.http_client over a worker's
POST /v1/commands) send every command type to a real worker; every outcome parses and
matches its AsyncAPI payload; the HTTP 200 matches openapi.yaml's Outcome (review h59c)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from paystream.http_client import Accepted, IngressClient
from paystream.streams.commands import COMMANDS
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment
from tests.test_docs import published, validator

TOKEN = f"platform-{uuid.uuid4().hex}"
# A tenant of this run's own: the simulator keeps a tenant's balance in the session's
# Redis, where other tests' "acme" (the demo's) pays out and refunds.
TENANT = f"acme-{uuid.uuid4().hex[:8]}"

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _check(event: Any, sent: set[str], seen: dict[str, str], kind: str) -> dict[str, Any]:
    outcome = event.get_type().removeprefix("com.paystream.")
    body = event.get_data()
    assert outcome != "command.rejected", (kind, body)
    pointer = f"/components/messages/outcome.{outcome}/payload"
    validator(published("asyncapi"), pointer, draft7=True).validate(body)
    sent.add(kind)
    seen[kind] = outcome
    return dict(body)


async def test_every_command_through_both_sdks(deployment_factory: Any) -> None:
    dep: Deployment = await deployment_factory(paystream_ingress_token=TOKEN)
    # (Captured money available at once: the payouts below need no clock moved.)
    await dep.add_tenants(Tenant(tenant_id=TENANT, gateway_options={"settlement_delay_days": 0}))
    sent: set[str] = set()
    seen: dict[str, str] = {}
    with dep.worker() as worker:
        await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=dep.settings.partitions)
        url = worker.base_url
        async with dep.client() as kafka, IngressClient(url, TOKEN, timeout=60) as http:

            async def over_http(kind: str, data: dict[str, Any]) -> dict[str, Any]:
                answer = await http.command(kind, TENANT, data, wait=30)
                assert not isinstance(answer, Accepted), (kind, answer)
                # The 200's body as documented (openapi Outcome).
                attrs = {k: v for k, v in answer.get_attributes().items() if v is not None}
                attrs["time"] = attrs["time"].isoformat()
                validator(published("openapi"), "/components/schemas/Outcome").validate(
                    {**attrs, "data": answer.get_data()}
                )
                return _check(answer, sent, seen, kind)

            async def over_kafka(kind: str, data: dict[str, Any]) -> dict[str, Any]:
                return _check(await kafka.command(kind, TENANT, data, timeout=60), sent, seen, kind)

            # Chains of commands that wait on each other, the chains at once (each command
            # is a round trip to the worker; one after the other, most of the test).
            async def customer() -> None:
                await over_http("customer.create", {"customer_id": "c1", "email": "a@example.com"})
                await over_kafka("customer.update", {"customer_id": "c1", "name": "Ada"})
                await over_http(
                    "payment_method.attach",
                    {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "pm1"},
                )

            async def captured_and_refunded() -> None:
                held = await over_kafka(
                    "payment.create",
                    {"amount": 1000, "currency": "usd", "payment_method_id": "pm1",
                     "customer_id": "c1", "capture": "manual"},
                )  # fmt: skip
                assert held["object"]["currency"] == "USD", held
                await over_http("payment.capture", {"payment_id": held["entity_id"], "amount": 600})
                refund = await over_kafka(
                    "refund.create", {"payment_id": held["entity_id"], "amount": 100}
                )
                await over_http("refund.refresh", {"refund_id": refund["entity_id"]})

            async def canceled() -> None:
                other = await over_http(
                    "payment.create",
                    {"amount": 500, "currency": "EUR", "payment_method_token": "pm_card_visa",
                     "capture": "manual"},
                )  # fmt: skip
                await over_kafka("payment.refresh", {"payment_id": other["entity_id"]})
                await over_http("payment.cancel", {"payment_id": other["entity_id"]})

            async def disputed() -> None:
                paid = await over_kafka(
                    "payment.create",
                    {"amount": 900, "currency": "JPY",
                     "payment_method_token": "pm_card_createDispute"},
                )  # fmt: skip
                dispute = paid["object"]["dispute_id"]
                await over_http(
                    "dispute.submit_evidence",
                    {"dispute_id": dispute, "evidence": {"customer_name": "Ada"}, "submit": False},
                )
                await over_kafka("dispute.accept", {"dispute_id": dispute})

            async def subscriptions_then_payouts() -> None:
                # Subscriptions: both SDKs send each, and both see the invoice in `related`.
                made = await over_kafka(
                    "subscription.create",
                    {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "pm1",
                     "amount": 1500, "currency": "EUR", "interval": "month"},
                )  # fmt: skip
                assert made["object"]["status"] == "active", made
                assert [r["entity_type"] for r in made["related"]] == ["invoice"], made
                await over_http("subscription.refresh", {"subscription_id": "s1"})
                raised = await over_kafka(
                    "subscription.update", {"subscription_id": "s1", "amount": 1800}
                )
                assert raised["object"]["amount"] == 1800, raised
                paused = await over_kafka("subscription.pause", {"subscription_id": "s1"})
                assert paused["object"]["status"] == "paused", paused
                resumed = await over_http("subscription.resume", {"subscription_id": "s1"})
                assert resumed["object"]["status"] == "active", resumed
                trial = await over_http(
                    "subscription.create",
                    {"customer_id": "c1", "payment_method_id": "pm1", "amount": 700,
                     "currency": "USD", "interval": "week", "trial_days": 7},
                )  # fmt: skip
                assert trial["object"]["status"] == "trialing", trial
                await over_kafka(
                    "subscription.cancel", {"subscription_id": "s1", "at_period_end": True}
                )
                await over_http("subscription.cancel", {"subscription_id": trial["entity_id"]})
                assert seen["subscription.cancel"] == "subscription.canceled", seen
                # Payouts and the balance: the subscription's EUR 15.00 is available (no
                # other chain's EUR is captured: the one EUR payment is canceled).
                balance = await over_kafka("balance.retrieve", {})
                eur = next(b for b in balance["balances"] if b["currency"] == "EUR")
                assert eur["available"] >= 1500 and eur["pending"] == 0, balance
                payout = await over_http(
                    "payout.create",
                    {"payout_id": "po1", "amount": 500, "currency": "EUR",
                     "statement_descriptor": "ACME PAYOUT"},
                )  # fmt: skip
                assert payout["object"]["status"] == "pending", payout
                await over_kafka("payout.refresh", {"payout_id": "po1"})
                assert seen["payout.refresh"] == "payout.updated", seen
                await over_http("payout.cancel", {"payout_id": "po1"})
                assert seen["payout.cancel"] == "payout.canceled", seen
                instant = await over_kafka(
                    "payout.create", {"amount": 400, "currency": "EUR", "method": "instant"}
                )
                await over_http("payout.refresh", {"payout_id": instant["entity_id"]})
                assert seen["payout.refresh"] == "payout.paid", seen

            async def taxed() -> None:
                # Tax: rates made and archived, a calculation a payment and a subscription use.
                await over_http(
                    "tax_rate.create",
                    {"tax_rate_id": "vat", "display_name": "VAT", "percentage": "20",
                     "inclusive": False, "country": "GB", "tax_type": "vat"},
                )  # fmt: skip
                await over_kafka(
                    "tax_rate.create",
                    {"tax_rate_id": "old", "display_name": "Old", "percentage": "7.5",
                     "inclusive": True, "country": "US", "state": "NY"},
                )  # fmt: skip
                calc = await over_kafka(
                    "tax.calculate",
                    {"currency": "GBP", "tax_rate_ids": ["vat"],
                     "line_items": [{"amount": 1000, "reference": "sku", "quantity": 2}]},
                )  # fmt: skip
                assert calc["object"]["amount_total"] == 2400, calc
                paid = await over_http(
                    "payment.create",
                    {"amount": 2400, "currency": "GBP", "payment_method_token": "pm_card_visa",
                     "tax_calculation_id": calc["entity_id"]},
                )  # fmt: skip
                assert paid["object"]["amount_tax"] == 400, paid
                sub = await over_http(
                    "subscription.create",
                    {"customer_id": "c1", "payment_method_id": "pm1", "amount": 1000,
                     "currency": "GBP", "interval": "month", "tax_rate_ids": ["vat"]},
                )  # fmt: skip
                assert sub["related"][0]["object"]["total"] == 1200, sub
                await over_http("tax.calculate", {"currency": "GBP",
                                "line_items": [{"amount": 5, "reference": "x"}]})  # fmt: skip
                await over_kafka("tax_rate.archive", {"tax_rate_id": "old"})
                await over_http("tax_rate.archive", {"tax_rate_id": "vat"})

            async def connected() -> None:
                # Connected accounts: made, a link (its URL answered once), read back enabled.
                made = await over_kafka(
                    "connected_account.create",
                    {"connected_account_id": "ca1", "country": "FR",
                     "email": "owner+enabled@bakery.example", "capabilities": ["transfers"]},
                )  # fmt: skip
                assert made["object"]["status"] == "pending", made
                link = await over_http(
                    "connected_account.onboarding_link",
                    {"connected_account_id": "ca1", "refresh_url": "https://p.example/r",
                     "return_url": "https://p.example/d"},
                )  # fmt: skip
                assert link["url"].startswith("https://"), link
                read = await over_kafka(
                    "connected_account.refresh", {"connected_account_id": "ca1"}
                )
                assert read["object"]["status"] == "enabled", read
                # Transfers (in SEK: no other chain's balance is touched): from a charge,
                # read back, then reversed.
                paid = await over_kafka(
                    "payment.create",
                    {"payment_id": "pt1", "amount": 4000, "currency": "SEK",
                     "payment_method_token": "pm_card_visa"},
                )  # fmt: skip
                made = await over_http(
                    "transfer.create",
                    {"connected_account_id": "ca1", "amount": 3000, "currency": "SEK",
                     "payment_id": paid["entity_id"], "transfer_id": "tr1"},
                )  # fmt: skip
                assert made["related"][0]["object"]["amount_transferred"] == 3000, made
                await over_http("transfer.refresh", {"transfer_id": "tr1"})
                assert seen["transfer.refresh"] == "transfer.updated", seen
                back = await over_kafka("transfer.reverse", {"transfer_id": "tr1"})
                assert back["object"]["status"] == "reversed", back

            async def invoiced() -> None:
                # One-off invoices (in CHF: no other chain's balance is touched).
                lines = [{"description": "Hours", "amount": 1500, "quantity": 2}]
                body = {"customer_id": "c1", "payment_method_id": "pm1", "currency": "CHF",
                        "line_items": lines}  # fmt: skip
                made = await over_kafka("invoice.create", {**body, "invoice_id": "i1"})
                assert made["object"]["status"] == "draft", made
                await over_http("invoice.refresh", {"invoice_id": "i1"})
                await over_kafka("invoice.update", {"invoice_id": "i1", "line_items": lines})
                assert seen["invoice.update"] == "invoice.updated", seen
                await over_kafka("invoice.finalize", {"invoice_id": "i1"})
                paid = await over_http("invoice.pay", {"invoice_id": "i1"})
                assert paid["object"]["status"] == "paid" and paid["object"]["amount"] == 3000
                await over_http("invoice.create", {**body, "invoice_id": "i2"})
                await over_kafka("invoice.finalize", {"invoice_id": "i2"})
                await over_http("invoice.mark_uncollectible", {"invoice_id": "i2"})
                assert seen["invoice.mark_uncollectible"] == "invoice.marked_uncollectible"
                await over_kafka("invoice.void", {"invoice_id": "i2"})
                assert seen["invoice.void"] == "invoice.voided", seen

            for chains in (
                (customer, canceled, disputed),
                (captured_and_refunded, subscriptions_then_payouts, taxed, connected, invoiced),
            ):
                async with asyncio.TaskGroup() as group:  # (one failing stops the others)
                    for chain in chains:
                        group.create_task(chain())
            # Last: the customer and their card, which the chains above use.
            await over_http("customer.export", {"customer_id": "c1"})
            await over_kafka("payment_method.detach", {"payment_method_id": "pm1"})
            await over_http("customer.delete", {"customer_id": "c1"})
            await over_kafka("customer.erase", {"customer_id": "c1"})
    assert sent == set(COMMANDS), set(COMMANDS) - sent
