"""What a new user following the README's "Payouts and balances" and "Tax" is answered
(review h74r): a payout the bank returned is retryable only where the same account may
take it, a balance refusal names both amounts in one unit, a percentage sent as a number
is told to send a decimal string, and `unsupported` says when it is the tenant's own
``capabilities`` option, not its provider, that left a feature out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from paystream.agents import handlers as h
from paystream.gateways import base as gw
from paystream.gateways.errors import UnsupportedOperation
from paystream.gateways.simulator import SimulatorGateway
from paystream.gateways.simulator.operations import PAYOUT_TEST_ACCOUNTS
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

DAY = 24 * 3600


def _gateway(harness: Harness, tenant: str) -> SimulatorGateway:
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _settled(harness: Harness, tenant: str, amount: int = 5000) -> None:
    paid = await harness.send(
        "payment.create",
        tenant,
        {"amount": amount, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert kind(paid) == "payment.succeeded", data(paid)
    await _gateway(harness, tenant).advance_clock(2 * DAY)


# Stripe's payout failure codes (its API reference, "Payout failures"): a new payout to
# the same bank account may succeed only after could_not_process (the bank's own
# trouble) and insufficient_funds (the account's balance: once funds settle); every
# other code needs the account (or its details) changed first.
_RETRYABLE = {"could_not_process": True, "insufficient_funds": True}


@pytest.mark.asyncio
@pytest.mark.parametrize("account", sorted(PAYOUT_TEST_ACCOUNTS))
async def test_a_returned_payout_is_retryable_only_where_the_same_account_may_take_it(
    harness: Harness, account: str
) -> None:
    """payout.failed (account_closed) carried error.retryable = true: a consumer that
    follows `retryable` sent the payout again to the closed account, and the money was
    held again for days (docs/stripe.md: processing_error is "no" on Stripe)."""
    code = PAYOUT_TEST_ACCOUNTS[account][0]
    t = harness.add_tenant(gateway_options={"payout_destination": account})
    await _settled(harness, t)
    made = await harness.send(
        "payout.create", t, {"payout_id": "po1", "amount": 3000, "currency": "EUR"}
    )
    assert kind(made) == "payout.created", data(made)
    await _gateway(harness, t).advance_clock(2 * DAY)
    failed = await harness.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    error = data(failed)["error"]
    assert error["decline_code"] == code
    assert error["retryable"] is _RETRYABLE.get(code, False), error


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("account_closed", False),
        ("account_frozen", False),
        ("bank_account_restricted", False),
        ("bank_ownership_changed", False),
        ("could_not_process", True),
        ("debit_not_authorized", False),
        ("declined", False),
        ("incorrect_account_holder_name", False),
        ("insufficient_funds", True),
        ("invalid_account_number", False),
        ("invalid_currency", False),
        ("no_account", False),
        ("unsupported_card", False),
        ("a_code_added_since", False),
        (None, False),
    ],
)
def test_every_stripe_payout_failure_code_is_judged(code: str | None, retryable: bool) -> None:
    """The same rule for a Stripe payout read back (its webhook's refresh): a code this
    version does not know is not retryable (the account may be the cause)."""

    class _Ctx:
        class gateway:
            provider = "stripe"

    res = gw.PayoutResult(
        provider_payout_id="po_x",
        status=gw.PayoutStatus.FAILED,
        amount=gw.Money(amount=100, currency="EUR"),
        arrival_date=datetime(2026, 1, 1, tzinfo=UTC),
        failure_code=code,
        failure_message="returned",
    )
    error = h._payout_failure(_Ctx(), res)  # type: ignore[arg-type]
    assert error.retryable is retryable


@pytest.mark.asyncio
async def test_balance_insufficient_names_both_amounts_in_one_unit(harness: Harness) -> None:
    """ "payout 9999.99 EUR is more than the available balance (... 5000 EUR available
    (minor units))": the requested amount in major units, the available one in minor
    units beside it, so 5000 EUR read as more than 9999.99 EUR's half."""
    t = harness.add_tenant()
    await _settled(harness, t)
    out = await harness.send(
        "payout.create", t, {"payout_id": "big", "amount": 999999, "currency": "EUR"}
    )
    assert data(out)["reason"] == "balance_insufficient", data(out)
    message = data(out)["message"]
    assert "9999.99 EUR" in message and "50.00 EUR" in message, message
    assert "5000 EUR" not in message and "minor units" not in message, message


@pytest.mark.parametrize("number", ["20", "20.5", "7"])
def test_a_percentage_sent_as_a_number_is_told_to_send_a_decimal_string(
    monkeypatch: pytest.MonkeyPatch, number: str
) -> None:
    """`"percentage": 20` was answered "percentage: Input should be a valid string":
    right, but a new user was not told the field is a decimal string ("20"), nor why."""
    from paystream import cli as root

    monkeypatch.setenv("KAFKA_BROKER_URL", "kafka://127.0.0.1:1")  # never reached
    result = CliRunner().invoke(
        root.cli,
        [
            "send", "tax_rate.create", "--tenant", "acme", "--data",
            '{"display_name": "VAT", "percentage": ' + number
            + ', "inclusive": false, "country": "GB"}',
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f'send "{number}", not {number}' in result.output, result.output
    assert "decimal string" in result.output, result.output


def test_a_percentage_as_a_boolean_or_a_list_keeps_the_plain_answer() -> None:
    """Only a number is told to be quoted (true is no percentage written unquoted)."""
    from pydantic import ValidationError

    from paystream.streams.commands import CreateTaxRate

    base: dict[str, Any] = {"display_name": "VAT", "inclusive": False, "country": "GB"}
    for value in (True, [20]):
        with pytest.raises(ValidationError) as info:
            CreateTaxRate.model_validate({**base, "percentage": value})
        assert "not" not in str(info.value).split("percentage", 1)[1].split("\n")[1][:20]
    assert CreateTaxRate.model_validate({**base, "percentage": "20"}).percentage == "20"


_NARROWED = {"capabilities": ["customers", "payment_methods", "payments"]}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("command", "body", "left_out"),
    [
        ("balance.retrieve", {}, "payouts"),
        ("payout.create", {"amount": 1, "currency": "EUR"}, "payouts"),
        (
            "tax_rate.create",
            {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"},
            "tax",
        ),
        (
            "subscription.create",
            {
                "customer_id": "c",
                "payment_method_id": "pm",
                "amount": 900,
                "currency": "EUR",
                "interval": "month",
            },
            "subscriptions",
        ),
        ("refund.create", {"payment_id": "p1"}, "refunds"),
    ],
)
async def test_unsupported_names_the_tenants_capabilities_option(
    harness: Harness, command: str, body: dict[str, Any], left_out: str
) -> None:
    """`simulator does not support payouts` for a tenant whose own `capabilities` option
    left payouts out: the simulator does support them; the tenant's setup is the cause."""
    t = harness.add_tenant(gateway_options=_NARROWED)
    if command == "refund.create":
        paid = await harness.send(
            "payment.create",
            t,
            {"payment_id": "p1", "amount": 500, "currency": "EUR",
             "payment_method_token": "pm_card_visa"},
        )  # fmt: skip
        assert kind(paid) == "payment.succeeded", data(paid)
    out = await harness.send(command, t, body)
    assert data(out)["reason"] == "unsupported", data(out)
    message = data(out)["message"]
    assert f"tenant {t}'s gateway option `capabilities` leaves out {left_out}" in message, message
    assert "simulator supports it" in message and "does not support" not in message, message


def test_a_provider_lacking_a_capability_is_named_as_before() -> None:
    """Square has no payouts or tax rates: that is the provider's answer, for a tenant
    narrowed or not; one Square has (refunds) narrowed out names the option."""
    from paystream.gateways.square.gateway import SQUARE_CAPABILITIES

    with pytest.raises(UnsupportedOperation) as lacked:
        gw.require_operation("create_payout", SQUARE_CAPABILITIES, SQUARE_CAPABILITIES, "square")
    assert lacked.value.message == "square does not support create_payout"
    narrowed = frozenset({gw.Capability.PAYMENTS})
    with pytest.raises(UnsupportedOperation) as info:
        gw.require_operation("create_refund", narrowed, SQUARE_CAPABILITIES, "square")
    assert info.value.message == (
        "the tenant's gateway option `capabilities` leaves out refunds (create_refund; "
        "square supports it)"
    )
    # A stop or a read needs only the provider's capability (UNNARROWED_OPERATIONS).
    gw.require_operation("cancel_subscription", narrowed, frozenset(gw.Capability), "simulator")
