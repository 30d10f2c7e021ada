"""The record key of a dead letter kept without its bytes (card data, or too large): kept
only where it is a registered tenant's id holding no card data (review h70e: such letters
showed as `tenant=?`). Review h70g found a first version kept any key shaped as a tenant
id: a card number's first 15 digits (Luhn gives the last), or the security code the value
held."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from paystream.agents.pipeline import Inbound, _tenant_key_only
from paystream.dlq import ParkedRecord
from paystream.streams.pan import luhn_valid
from tests.agents.harness import Harness

PAN = "4111111111111111"


def _binary(key: bytes, value: bytes, tenant: bytes) -> Inbound:
    headers = {
        "ce_specversion": b"1.0",
        "ce_id": b"c1",
        "ce_type": b"com.paystream.command.payment.create",
        "ce_source": b"/x",
        "ce_tenantid": tenant,
        "content-type": b"application/json",
    }
    return Inbound(key=key, value=value, headers=headers, timestamp_ms=0, topic="c", offset=3)


@pytest.mark.asyncio
async def test_a_card_numbers_first_15_digits_as_key_are_not_kept(harness: Harness) -> None:
    """The value holds the card number (dead-lettered without its bytes); the key is its
    first 15 digits. Luhn gives the 16th: the kept key is the card number to anyone who
    reads the dead-letter topic. It is no registered tenant (nor the tenant the command
    names), so `dlq list --tenant` loses nothing by its going."""
    t = harness.add_tenant()
    key = PAN[:15].encode()
    assert not luhn_valid(PAN[:15])  # (so no scan calls it a card number)
    big = {"description": f"card {PAN} " + "x" * harness.settings.command_max_bytes}
    emits = await harness.raw(_binary(key, json.dumps(big).encode(), t.encode()))
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dict(dlq.record.headers)["paystream-dlq-redacted"] == b"card_number"
    # The one check digit that completes the kept key to a Luhn-valid card number:
    assert [d for d in "0123456789" if luhn_valid(PAN[:15] + d)] == [PAN[15]]
    assert dlq.record.key is None  # FAILS on 195b39d: key == b"411111111111111"


@pytest.mark.asyncio
async def test_a_key_that_is_the_security_code_found_is_not_kept(harness: Harness) -> None:
    """The value names a card security code (dead-lettered without its bytes: PCI DSS
    forbids keeping it after authorisation); the key is those very digits. No tenant
    "737" is registered and the command names another: the letter keeps the code beside
    `paystream-dlq-redacted: card_security_code`."""
    t = harness.add_tenant()
    big = {"card_cvc": "737", "description": "x" * harness.settings.command_max_bytes}
    emits = await harness.raw(_binary(b"737", json.dumps(big).encode(), t.encode()))
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dict(dlq.record.headers)["paystream-dlq-redacted"] == b"card_security_code"
    assert dlq.record.key is None  # FAILS on 195b39d: key == b"737"


@pytest.mark.asyncio
async def test_only_a_registered_tenants_key_is_kept_and_exactly(harness: Harness) -> None:
    t = harness.add_tenant()
    big = {"description": f"card {PAN} " + "x" * harness.settings.command_max_bytes}
    rec = _binary(t.encode(), json.dumps(big).encode(), t.encode())
    emits = await harness.raw(rec)
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == b"" and dlq.record.key is rec.key  # kept, untransformed
    # The same letter keyed (and named) by a tenant the registry does not hold:
    rec2 = replace(rec, key=b"737", headers={**rec.headers, "ce_tenantid": b"737"})
    [dlq2] = [e for e in await harness.raw(rec2) if e.topic == harness.settings.dlq_topic]
    assert dlq2.record.key is None  # FAILS on 195b39d: key == b"737"


# ---- checked, correct on 195b39d ----------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        PAN,
        "4111-1111-1111-1111",
        "4111_1111_1111_1111",
        "3782-822463-10005",
        "3782_822463_10005",
        "378282246310005",
        "4111111111111111d2512101",
        "4111-1111-1111-1111-123",
        "x4111111111111111",
        "0004111111111111111",
        "acme\n",
        "acme ",
        "Acme",
        "caf\u00e9",
        "a" * 64,
        "-acme",
        "_acme",
        "",
        "a\x00c\x00m\x00e\x00",
        "acme:1",
        "acme.1",
        "\uff14111111111111111",
    ],
)
def test_no_recognised_card_number_or_non_tenant_key_is_kept(key: str) -> None:
    """(Even were a tenant so named registered: with the proposed fix's second argument.)"""
    args = () if _tenant_key_only.__code__.co_argcount == 1 else ({key: {}},)
    assert _tenant_key_only(key.encode(), *args) is None


def test_a_kept_key_makes_no_letter_replayable() -> None:
    for header in (("paystream-dlq-redacted", b"card_number"),
                   ("paystream-dlq-redacted", b"card_security_code"),
                   ("paystream-dlq-dropped", b"too_large_to_keep"),
                   ("paystream-dlq-dropped", b"not_scanned")):  # fmt: skip
        rec = ParkedRecord("d", 0, 0, b"acme", b"", (header,), 0)
        assert not rec.replayable and rec.tenant == "acme"
