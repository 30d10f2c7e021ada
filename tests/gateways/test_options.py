"""Gateway options are checked when a tenant is registered, as the gateway would."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.errors import ConfigurationError
from paystream.gateways.registry import validate_options


@pytest.mark.parametrize(
    ("provider", "options"),
    [
        ("simulator", {}),
        ("simulator", {"latency_ms": 5, "fail_first": {"*": 2}}),
        ("stripe", {}),
        ("stripe", {"stripe_version": "2024-06-20", "capabilities": ["payments", "refunds"]}),
        ("stripe", {"stripe_version": "2025-03-31.basil"}),
    ],
)
def test_valid_options_pass(provider: str, options: dict[str, Any]) -> None:
    validate_options(provider, options)


@pytest.mark.parametrize(
    ("provider", "options", "message"),
    [
        ("simulator", {"fail_rat": 0.5}, "fail_rat"),
        ("simulator", {"fail_rate": ""}, "fail_rate"),
        ("simulator", {"fail_code": "card_declined"}, "retryable"),
        ("stripe", {"stripe_verison": "2024-06-20"}, r"unknown stripe option\(s\): stripe_verison"),
        ("stripe", {"capabilities": ["payments", "teleport"]}, "capabilities"),
        ("stripe", {"capabilities": 5}, "list of names"),
        ("stripe", {"capabilities": True}, "list of names"),
        ("stripe", {"capabilities": "payments"}, "list of names"),
        ("stripe", {"stripe_version": 2024}, "stripe_version"),
        # The Stripe-Version header: a newline made every call fail as Stripe unreachable.
        ("stripe", {"stripe_version": "2024-06-20\n"}, "stripe_version"),
        ("stripe", {"stripe_version": "latest"}, "stripe_version"),
    ],
)
def test_options_the_gateway_would_refuse_are_refused(
    provider: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_options(provider, options)


def test_an_option_validators_refusal_is_in_its_own_words() -> None:
    """Without pydantic's "Value error, " before it (as a command's refusal since h78c)."""
    with pytest.raises(ConfigurationError) as raised:
        validate_options("simulator", {"fail_code": "card_declined"})
    assert str(raised.value) == (
        "invalid simulator options: fail_code: "
        "fail_code must be a retryable code, got card_declined"
    )
