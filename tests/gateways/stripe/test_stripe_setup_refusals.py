"""Stripe's 400 refusals of the tenant's *setup* (not of the command) are answered like a
refused API key (review h67o): `gateway_not_configured`, not remembered, no key quoted.

Stripe answers a well-formed but unknown pinned `Stripe-Version` (the tenant option
`stripe_version=2025-09-30.acacia` passes validate_options' regex) with 400
invalid_request_error "Invalid Stripe API version: ..." on EVERY call, and a
`Stripe-Account` header naming an account the platform key cannot act for with error
code `account_invalid`. Both mapped to INVALID_REQUEST: the command's fault,
remembered under its key, so every payment of the tenant was refused for good.
"""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import validate_options
from tests.gateways.stripe.test_stripe_transport import API_KEY, PAY, error, gateway

pytestmark = pytest.mark.asyncio

_SETUP_REFUSALS = [
    # (documented shape: stripity-stripe#613 / stripe-java#682: no code, type only)
    {"type": "invalid_request_error", "message": "Invalid Stripe API version: 2025-09-30.acacia"},
    {
        "type": "invalid_request_error",
        "code": "account_invalid",
        "message": f"The provided key '{API_KEY[:8]}****{API_KEY[-4:]}' does not have access "
        "to account 'acct_1Wrong' (or that account does not exist).",
    },
]


@pytest.mark.parametrize("err", _SETUP_REFUSALS, ids=["unknown_version", "account_invalid"])
async def test_a_refusal_of_the_tenants_setup_is_not_the_commands_fault(
    err: dict[str, Any],
) -> None:
    gw, _ = gateway(error(400, **err), connected_account="acct_1Wrong")
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    e = info.value
    # handlers._gateway answers PROVIDER_UNAVAILABLE-not-retryable and credential codes
    # as gateway_not_configured, remember=False; INVALID_REQUEST is remembered.
    assert e.code is not ErrorCode.INVALID_REQUEST, e.code
    assert (e.code is ErrorCode.PROVIDER_UNAVAILABLE and not e.retryable) or e.code in (
        ErrorCode.AUTHENTICATION_FAILED,
        ErrorCode.PERMISSION_DENIED,
    )
    assert API_KEY[-4:] not in e.message


def test_a_version_that_is_no_date_is_refused_before_it_is_stored() -> None:
    # (the narrower half: a calendar-impossible version also passes the regex today)
    from paystream.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        validate_options({"stripe_version": "2024-13-45"})
