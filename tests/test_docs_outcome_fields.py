"""Every field a payment outcome's data carries is in its AsyncAPI payload: a
`payment.refresh` of a failed payment adds `previous_charge_id`, by which paystream's own
fraud counting tells a new decline from the same one, and docs/asyncapi.yaml did not
name it (review h68j)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from paystream.agents import handlers

ROOT = Path(handlers.__file__).resolve().parents[2]
PAYMENT_OUTCOMES = sorted(set(handlers._PAYMENT_OUTCOME.values()))


def _documented(asyncapi: dict[str, Any], outcome: str) -> set[str]:
    payload = asyncapi["components"]["messages"][f"outcome.{outcome}"]["payload"]
    names: set[str] = set()
    for part in payload["allOf"]:
        if "$ref" in part:
            name = part["$ref"].rsplit("/", 1)[-1]
            names |= set(asyncapi["components"]["schemas"][name]["properties"])
        else:
            names |= set(part.get("properties", {}))
    return names


@pytest.mark.parametrize("outcome", PAYMENT_OUTCOMES)
def test_a_refresh_of_a_failed_payment_documents_every_field_it_adds(outcome: str) -> None:
    asyncapi = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    # What refresh_payment adds to a payment outcome's data when the payment had failed
    # (a charge id named by the provider, as Stripe does).
    extra = {"previous_status": "failed"} | handlers._previous_failure("card_declined", "ch_1")
    missing = set(extra) - _documented(asyncapi, outcome)
    assert not missing, (outcome, missing)


def test_a_refresh_of_a_subscription_at_checkout_documents_its_next_action() -> None:
    """A `subscription.refresh` of a subscription still to be paid at checkout (Paddle's)
    answers `subscription.updated` with its `next_action` (handlers._subscription_outcome):
    named in that outcome's payload (review h79r_b L)."""
    from datetime import UTC, datetime

    from paystream.gateways import base as gw
    from paystream.money import Money
    from paystream.tables.records import SubscriptionRecord

    asyncapi = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    res = gw.SubscriptionResult(
        provider_subscription_id="txn_1",
        status=gw.SubscriptionStatus.REQUIRES_ACTION,
        amount=Money(amount=1200, currency="USD"),
        interval="month",
        interval_count=1,
        current_period_start=now,
        current_period_end=now,
        next_action={"type": "redirect_to_url"},
    )
    sub = SubscriptionRecord(
        tenant_id="t", id="sub_1", provider="paddle", created_by="c", customer_id="cus_1",
        status="requires_action", amount=1200, currency="USD", interval="month",
        interval_count=1, provider_subscription_id="txn_1", current_period_start=now,
        current_period_end=now,
    )  # fmt: skip
    answered = handlers._subscription_outcome(res, sub, [], None, "requires_action")
    assert answered.outcome_type == "subscription.updated"
    missing = set(answered.extra) - _documented(asyncapi, "subscription.updated")
    assert not missing, missing
