"""Application fees in the analytics windows: a destination charge (a payment on behalf
of a connected account) that succeeded counts once per currency, with the fee its
platform kept (what the worker's record says: capped at a partial capture); a payment
without a destination, or read back as it was, counts none; a window without any is
published as before them, one with them matches the published schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.insights.events import window_event
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from tests.insights.test_disputes_counted import PAYMENT, _observe, _outcome
from tests.insights.test_runner import T0
from tests.test_docs import asyncapi, validator  # noqa: F401  (a fixture)

CFG = InsightsConfig(window_ms=60_000, horizon_ms=600_000, grace_ms=5_000)


def _charge(
    kind: str = "payment.succeeded", previous: str | None = None, command: str = "c1",
    **fields: Any,
) -> dict[str, Any]:  # fmt: skip
    obj = {**PAYMENT, "id": command, "dispute_id": None, "amount": 10_000,
           "amount_captured": 10_000, "connected_account_id": "ca1",
           "application_fee_amount": 1_230, **fields}  # fmt: skip
    data: dict[str, Any] = {"entity_type": "payment", "entity_id": command, "version": 1,
                            "object": obj}  # fmt: skip
    if previous is not None:
        data["previous_status"] = previous
    return _outcome(kind, command, "payment.create", data)


@pytest.mark.parametrize(
    ("kind", "previous", "fields", "fee"),
    [
        ("payment.succeeded", None, {}, 1_230),
        ("payment.succeeded", "authorized", {"application_fee_amount": 300}, 300),  # captured
        ("payment.succeeded", None, {"application_fee_amount": 0}, 0),  # a charge, no fee
        ("payment.authorized", None, {"amount_captured": 0}, None),  # nothing taken yet
        ("payment.succeeded", "succeeded", {}, None),  # read back as it was
        ("payment.succeeded", None, {"connected_account_id": None}, None),  # no destination
        ("payment.succeeded", None, {"application_fee_amount": "1230"}, 0),  # malformed
        ("payment.succeeded", None, {"application_fee_amount": 20_000}, 0),  # past captured
    ],
)
def test_a_destination_charge_counts_its_fee_once(
    kind: str, previous: str | None, fields: dict[str, Any], fee: int | None
) -> None:
    assert _observe(_charge(kind, previous, **fields)).application_fee == fee


def _window(*outcomes: dict[str, Any]) -> dict[str, Any]:
    st = TenantInsights("acme")
    for i, o in enumerate(outcomes):
        st.apply(_observe(o, T0 + i), CFG)
    record = window_event("acme", T0, CFG.window_ms, st.windows[str(T0)], CloudEventsMode.BINARY)
    return dict(json.loads(record.value))


def test_a_window_counts_fees_per_currency_and_is_as_before_without(
    asyncapi: dict[str, Any],  # noqa: F811
) -> None:
    quiet = _window(_charge(connected_account_id=None, command="c0"))
    assert "application_fees" not in quiet
    payload = _window(
        _charge(command="c1"),
        _charge(command="c2", application_fee_amount=70),
        _charge(command="c3", currency="EUR", application_fee_amount=0),
    )
    assert payload["application_fees"] == {
        "USD": {"payments": 2, "amount": 1_300},
        "EUR": {"payments": 1, "amount": 0},
    }
    validator(asyncapi, "/components/messages/analyticsWindow/payload", draft7=True).validate(
        payload
    )
    schema = asyncapi["components"]["schemas"]["AnalyticsWindow"]["properties"]
    assert schema["application_fees"]["additionalProperties"]["additionalProperties"] is False
