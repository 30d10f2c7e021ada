"""The demo's tax and payouts: each demo tenant's tax rates made at the start (again on a
restart: answered as made, not refused as existing); a share of payments taxed first
(`tax.calculate`, then the payment of its total naming it) and of subscriptions carrying
a rate; now and then the tenant reads its balance and pays out part of what is
available, read back a day at a time on the simulator's clock until paid, or failed for
the tenant whose bank account is closed. Through the real command processor and the
simulator on Redis, as the subscriptions' and 3-D Secure flows' tests."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream import demo
from paystream.cli import demo as demo_cli
from paystream.client import OutcomeTimeout
from paystream.gateways.simulator.operations import PAYOUT_TEST_ACCOUNTS
from paystream.gateways.simulator.options import SimulatorOptions
from paystream.streams.commands import CreateTaxRate
from tests.agents.conftest import running_harness
from tests.agents.harness import ThroughTheProcessor, simulator_of

ACME_VAT = demo_cli.DEMO_TAX_RATES["acme"][0]  # 20%, added to the price
GLOBEX_MWST = demo_cli.DEMO_TAX_RATES["globex"][0]  # 19%, contained in it


def _only(monkeypatch: pytest.MonkeyPatch, **shares: float) -> None:
    """Every flow of one kind: the other kinds' shares at nothing."""
    for name in ("CARD_TESTERS", "SUBSCRIBERS", "PAYOUTS", "TAXED_PAYMENTS"):
        monkeypatch.setattr(demo, name, shares.get(name, 0.0))
    monkeypatch.setattr(demo, "DEMO_TOKENS", ["pm_card_visa"])
    monkeypatch.setattr(demo, "SUBSCRIPTION_PAUSE", (0.0, 0.0))


async def test_the_demo_makes_its_tenants_tax_rates_once(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        acme, globex = h.add_tenant(), h.add_tenant()
        rates = {acme: demo_cli.DEMO_TAX_RATES["acme"], globex: demo_cli.DEMO_TAX_RATES["globex"]}
        client: Any = ThroughTheProcessor(h)
        seen: Counter[str] = Counter()
        made = await demo.make_tax_rates(client, rates, seen)
        assert made == {acme: ["demo-vat"], globex: ["demo-mwst", "demo-mwst-reduced"]}
        assert seen == Counter({"tax_rate.created": 3}), seen
        assert h.tables.tax_rates[f"{acme}:demo-vat"]["inclusive"] is False
        assert h.tables.tax_rates[f"{globex}:demo-mwst"]["inclusive"] is True
        # The demo started again on the same stack (`paystream demo` under compose):
        # the same rates, answered as made, no `command.rejected` (already exists).
        again: Counter[str] = Counter()
        assert await demo.make_tax_rates(client, rates, again) == made
        assert again == Counter({"tax_rate.created": 3}), again
        assert len(h.tables.tax_rates) == 3


async def test_a_tenant_refusing_its_rates_has_none_to_tax_by(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(status="suspended")
        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        assert await demo.make_tax_rates(client, {t: [ACME_VAT]}, seen) == {t: []}
        assert seen == Counter({"command.rejected": 1}), seen


def _half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


@pytest.mark.parametrize("rate", [ACME_VAT, GLOBEX_MWST])
async def test_a_demo_payment_is_taxed_first_and_names_its_calculation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, rate: dict[str, Any]
) -> None:
    _only(monkeypatch, TAXED_PAYMENTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        client: Any = ThroughTheProcessor(h)
        seen: Counter[str] = Counter()
        rates = await demo.make_tax_rates(client, {t: [rate]}, seen)
        await demo._flow(client, t, random.Random(3), seen, tax_rate_ids=rates[t])
        assert seen["tax.calculated"] == 1 and seen["payment.succeeded"] >= 1, seen
        # (each rate made was tried with a calculation of its own: make_tax_rates)
        [calc] = [
            c
            for c in h.tables.tax_calculations.values()
            if c["line_items"][0]["reference"] != demo.RATE_CHECK
        ]
        [payment] = h.tables.payments.values()
        # Charged at once (never a partial capture of a taxed order), its total.
        assert payment["status"] == "succeeded", payment
        assert payment["tax_calculation_id"] == calc["id"], payment
        assert payment["currency"] == calc["currency"], (payment, calc)
        assert payment["amount"] == calc["amount_total"], (payment, calc)
        assert payment["amount_tax"] == calc["amount_tax"] > 0, (payment, calc)
        subtotal = calc["amount_subtotal"]
        if rate["inclusive"]:  # 19% contained in the price: subtotal * 19 / 119
            assert calc["amount_tax"] == _half_up(subtotal * 19, 119), calc
            assert payment["amount"] == subtotal, payment
        else:  # 20% added to it
            assert calc["amount_tax"] == _half_up(subtotal * 20, 100), calc
            assert payment["amount"] == subtotal + calc["amount_tax"], payment


async def test_a_demo_payment_without_rates_is_not_taxed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only(monkeypatch, TAXED_PAYMENTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen)
        assert not seen["tax.calculated"] and seen["payment.succeeded"] >= 1, seen
        [payment] = h.tables.payments.values()
        assert "amount_tax" not in payment or payment["amount_tax"] is None, payment


async def test_a_demo_subscription_carries_the_tenants_rate(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only(monkeypatch, SUBSCRIBERS=1.0)
    monkeypatch.setattr(demo, "TAXED_SUBSCRIPTIONS", 1.0)
    monkeypatch.setattr(demo, "SUBSCRIPTION_TOKENS", ["pm_card_visa"])
    monkeypatch.setattr(demo, "TRIALS", 0.0)
    monkeypatch.setattr(demo, "CANCELS_AT_PERIOD_END", 0.0)
    monkeypatch.setattr(demo, "PAUSES", 0.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        client: Any = ThroughTheProcessor(h)
        seen: Counter[str] = Counter()
        rates = await demo.make_tax_rates(client, {t: [ACME_VAT]}, seen)

        async def advance(tenant: str, seconds: int) -> None:
            await simulator_of(h, tenant).advance_clock(seconds)

        await demo._flow(client, t, random.Random(3), seen, advance=advance, tax_rate_ids=rates[t])
        assert seen["subscription.created"] == 1 and seen["subscription.updated"] == 1, seen
        [sub] = h.tables.subscriptions.values()
        assert sub["tax_rate_ids"] == ["demo-vat"], sub
        billed = sorted(h.tables.invoices.values(), key=lambda i: i["period_start"])
        assert [i["status"] for i in billed] == ["paid", "paid"], billed
        for invoice in billed:  # 20% added to the plan's price, renewals too
            assert invoice["subtotal"] == sub["amount"], invoice
            assert invoice["tax"] == _half_up(sub["amount"] * 20, 100), invoice
            assert invoice["total"] == invoice["amount"] == invoice["subtotal"] + invoice["tax"]


@pytest.mark.parametrize(
    ("options", "last", "failure_code"),
    [
        ({}, "payout.paid", None),
        # globex's bank account: closed, its payouts returned at arrival.
        (demo_cli.DEMO_GATEWAY_OPTIONS["globex"], "payout.failed", "account_closed"),
    ],
)
async def test_the_tenant_pays_out_part_of_its_available_balance_until_it_arrives(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    last: str,
    failure_code: str | None,
) -> None:
    _only(monkeypatch, PAYOUTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options=options)
        paid = await h.send(
            "payment.create",
            t,
            {"amount": 5001, "currency": "EUR", "payment_method_token": "pm_card_visa"},
        )
        assert paid.get_type().endswith("payment.succeeded"), paid.get_data()
        await simulator_of(h, t).advance_clock(2 * demo.DAY)  # settled: available
        moved: list[tuple[str, int]] = []

        async def advance(tenant: str, seconds: int) -> None:
            moved.append((tenant, seconds))
            await simulator_of(h, tenant).advance_clock(seconds)

        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen, advance=advance)
        assert not seen["customer.created"], seen  # the tenant's own flow
        assert seen["balance.retrieved"] == 1 and seen["payout.created"] == 1, seen
        assert seen[last] == 1, seen
        # pending → (a day) in transit → (a day) arrived: paid, or returned.
        assert seen["payout.updated"] == 1 and moved == [(t, demo.DAY)] * 2, (seen, moved)
        [payout] = h.tables.payouts.values()
        assert (payout["amount"], payout["currency"]) == (2500, "EUR"), payout
        assert payout["status"] == last.removeprefix("payout."), payout
        assert payout.get("failure_code") == failure_code, payout
        # A failed payout's amount is available again.
        balance = await h.send("balance.retrieve", t, {})
        [eur] = balance.get_data()["balances"]
        assert eur["available"] == (5001 if failure_code else 2501), eur


async def test_a_tenant_waits_for_its_captures_to_settle_before_paying_out(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing available yet, something pending: a day passes and the balance is read
    again, until the settlement delay (2 days by default) has passed."""
    _only(monkeypatch, PAYOUTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        await h.send(
            "payment.create",
            t,
            {"amount": 5000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
        )
        moved: list[int] = []

        async def advance(tenant: str, seconds: int) -> None:
            moved.append(seconds)
            await simulator_of(h, tenant).advance_clock(seconds)

        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen, advance=advance)
        assert seen["balance.retrieved"] == 3 and seen["payout.created"] == 1, seen
        assert seen["payout.paid"] == 1 and moved == [demo.DAY] * 4, (seen, moved)
        [payout] = h.tables.payouts.values()
        assert (payout["amount"], payout["status"]) == (2500, "paid"), payout


@pytest.mark.parametrize("pending", [False, True])
async def test_with_nothing_to_settle_the_tenant_only_reads_its_balance(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, pending: bool
) -> None:
    """Nothing captured at all (no day would help), or no clock to move (`paystream
    demo` without Redis): the balance read alone."""
    _only(monkeypatch, PAYOUTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        if pending:
            await h.send(
                "payment.create",
                t,
                {"amount": 5000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
            )
        moved: list[int] = []

        async def advance(tenant: str, seconds: int) -> None:
            moved.append(seconds)

        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen, advance=None if pending else advance)
        assert seen == Counter({"balance.retrieved": 1}), seen
        assert not moved and not h.tables.payouts


async def test_without_a_clock_to_move_the_payout_is_only_made(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only(monkeypatch, PAYOUTS=1.0)
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"settlement_delay_days": 0})
        await h.send(
            "payment.create",
            t,
            {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_visa"},
        )
        seen: Counter[str] = Counter()
        client: Any = ThroughTheProcessor(h)
        await demo._flow(client, t, random.Random(3), seen)
        assert seen == Counter({"balance.retrieved": 1, "payout.created": 1}), seen
        [payout] = h.tables.payouts.values()
        assert (payout["amount"], payout["status"]) == (450, "pending"), payout


async def test_run_demo_makes_the_rates_as_it_starts_and_taxes_by_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `paystream demo` and `dev --demo` run: the rates made as the flows start
    (the first ones untaxed), then each tenant's flows taxed by its own."""
    _only(monkeypatch, TAXED_PAYMENTS=1.0)
    async with running_harness(redis_url) as h:
        acme, globex = h.add_tenant(), h.add_tenant()
        client: Any = ThroughTheProcessor(h)
        seen = await demo.run_demo(
            client,
            [acme, globex],
            20,
            duration=1.0,
            tax_rates={acme: [ACME_VAT], globex: [GLOBEX_MWST]},
        )
        assert seen["tax_rate.created"] == 2 and seen["tax.calculated"] >= 2, seen
        assert not seen["command.rejected"], seen
        rated = {
            (p["tenant_id"], calc["line_items"][0]["taxes"][0]["tax_rate_id"])
            for p in h.tables.payments.values()
            if p.get("tax_calculation_id")
            for calc in [h.tables.tax_calculations[f"{p['tenant_id']}:{p['tax_calculation_id']}"]]
        }
        assert rated == {(acme, "demo-vat"), (globex, "demo-mwst")}, rated


async def test_a_stack_that_does_not_answer_holds_the_demo_no_longer_than_its_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rates' creates wait on the stack as the flows do: the demo ends on time."""

    class Silent:
        async def send(self, event: CloudEvent, *, timeout: float) -> CloudEvent:
            await asyncio.sleep(timeout)  # (30 s: the demo's)
            raise OutcomeTimeout(f"no outcome for command {event.get_id()}")

    client: Any = Silent()
    started = time.monotonic()
    seen = await demo.run_demo(client, ["t"], 5, duration=0.5, tax_rates={"t": [ACME_VAT]})
    assert time.monotonic() - started < 5, seen


def test_the_demo_tenants_setup() -> None:
    """Every demo tenant has a rate (one adds it to prices, one's prices contain it),
    each a valid `tax_rate.create`; one tenant's bank account fails its payouts (a
    valid simulator option); tax and payouts are small shares of the flows."""
    assert set(demo_cli.DEMO_TAX_RATES) == set(demo_cli.DEMO_TENANTS)
    inclusive = {r["inclusive"] for rates in demo_cli.DEMO_TAX_RATES.values() for r in rates}
    assert inclusive == {True, False}
    for rates in demo_cli.DEMO_TAX_RATES.values():
        for rate in rates:
            CreateTaxRate.model_validate(rate)
    [(tid, options)] = demo_cli.DEMO_GATEWAY_OPTIONS.items()
    assert tid in demo_cli.DEMO_TENANTS
    assert SimulatorOptions.parse(options).payout_destination in PAYOUT_TEST_ACCOUNTS
    assert 0 < demo.PAYOUTS <= 0.05 and 0 < demo.TAXED_PAYMENTS < 0.5
    assert 0 < demo.TAXED_SUBSCRIPTIONS < 1
    lines = demo_cli.describe_demo_setup()
    assert lines[0] == (
        "tax rates  acme: VAT 20% exclusive · globex: MwSt 19% inclusive, MwSt 7% inclusive"
    )
    assert "payout.failed" in lines[1] and "globex" in lines[1]


def test_the_progress_line_names_a_failed_payout_however_rare() -> None:
    """payout.failed (globex's closed account) is trouble the demo makes on purpose, named
    as a declined card is; the tenant's reads and its rates are not."""
    seen = Counter(
        {
            "customer.created": 90,
            "payment_method.attached": 80,
            "payment.succeeded": 70,
            "refund.succeeded": 30,
            "payment.failed": 20,
            "tax.calculated": 12,
            "payment.authorized": 11,
            "balance.retrieved": 4,
            "tax_rate.created": 3,
            "payout.created": 2,
            "payout.paid": 1,
            "payout.failed": 1,
        }
    )
    line = demo.demo_progress(seen)
    assert "payout.failed=1" in line and "payment.failed=20" in line, line
    assert "balance.retrieved" not in line and "tax_rate.created" not in line, line
    assert line.endswith("5 other kinds=21"), line
