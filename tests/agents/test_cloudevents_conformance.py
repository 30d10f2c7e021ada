"""CloudEvents 1.0.2 conformance of commands in and outcomes out (review h68b): outcomes
carried command and tenant ids holding C1 controls or noncharacters, which no CloudEvents
string may hold; a binary command with no value was dead-lettered; a structured
idempotency key of another JSON type (0, false) was read as no key."""

from __future__ import annotations

import time
import unicodedata
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.outcomes import NOT_CE_STRING, causation_id
from tests.agents.harness import Harness, data, kind, outcome_of


def ce_string_fault(text: str) -> str | None:
    """What CloudEvents 1.0.2 (Type System, String) forbids in a String, as the .NET SDK
    (CloudEventAttributeType.StringType.ValidateImpl) enforces it when reading an event:
    C0/C1 controls and DEL, Unicode noncharacters, lone surrogates."""
    for ch in text:
        cp = ord(ch)
        if cp <= 0x1F or 0x7F <= cp <= 0x9F:
            return f"control character U+{cp:04X}"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return f"noncharacter U+{cp:04X}"
        if unicodedata.category(ch) == "Cs":
            return f"surrogate U+{cp:04X}"
    return None


def faults(outcome: Any) -> dict[str, str]:
    return {
        name: fault
        for name, value in outcome.get_attributes().items()
        if isinstance(value, str) and (fault := ce_string_fault(value)) is not None
    }


# --- Finding 1: outcomes carrying strings no CloudEvents String may hold ---------------


@pytest.mark.parametrize(
    "command_id",
    ["pay-1\u0085", "pay-1\uffff", "pay-1\ufdd0", "pay-1\U0001fffe"],
    ids=["C1-NEL", "U+FFFF", "U+FDD0", "U+1FFFE"],
)
async def test_an_outcome_s_attributes_are_cloudevents_strings_whatever_the_command_id(
    harness: Harness, command_id: str
) -> None:
    """The command runs (the customer is created: a payment would be charged), and its
    outcome's ce_causationid repeats the id as sent: a .NET CloudEvents consumer throws
    reading it ("Control character/Noncharacter ... is not permitted in string
    attributes"), so the answer to a command that took effect is unreadable."""
    tenant = harness.add_tenant()
    outcome = await harness.send(
        "customer.create", tenant, {"email": "a@example.com"}, attributes={"id": command_id}
    )
    assert kind(outcome) == "customer.created", data(outcome)
    assert faults(outcome) == {}, faults(outcome)


async def test_an_unknown_tenant_s_rejection_is_a_valid_cloudevent(harness: Harness) -> None:
    """A made-up tenant id holding a noncharacter is echoed in ce_tenantid and
    ce_partitionkey (one holding a C0/C1 control is answered under "_unknown")."""
    tenant = "acme\uffff"
    outcome = await harness.send("customer.create", tenant, {}, attributes={"tenantid": tenant})
    assert data(outcome).get("reason") == "unknown_tenant", data(outcome)
    assert faults(outcome) == {}, faults(outcome)


# --- Finding 2: a binary-mode command with no data (null record value) ----------------


async def test_a_binary_mode_command_without_data_is_run_as_in_structured_mode(
    harness: Harness,
) -> None:
    """Kafka binding 1.0.2 §3.2.2: "In binary mode, the Kafka representation of a
    CloudEvent with no data is a Kafka message with no value." customer.create needs no
    data (every field optional): the same command is created in structured mode and
    from an empty value, but a null value is dead-lettered and answered
    validation_error ("not_a_cloudevent: empty record value (tombstone)")."""
    tenant = harness.add_tenant()
    cmd = build_command("customer.create", tenant, {})
    structured = encode_event(
        build_command("customer.create", tenant, {}), tenant.encode(), CloudEventsMode.STRUCTURED
    )
    assert structured.value  # (the structured record of a no-data command is answered:)
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    emits = await harness.raw(
        Inbound(rec.key, None, dict(rec.headers), int(time.time() * 1000), "c", 0, 7)
    )
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "customer.created", outcome and data(outcome)


# --- Finding 3: an Integer/Boolean idempotencykey (structured mode) -------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, CloudEventsMode.STRUCTURED), (0, CloudEventsMode.STRUCTURED)),
        ((False, CloudEventsMode.STRUCTURED), (False, CloudEventsMode.STRUCTURED)),
        ((0, CloudEventsMode.STRUCTURED), ("0", CloudEventsMode.BINARY)),
        ((True, CloudEventsMode.STRUCTURED), ("true", CloudEventsMode.BINARY)),
    ],
    ids=["0-0", "false-false", "0-then-binary-0", "true-then-binary-true"],
)
async def test_an_idempotency_key_of_another_cloudevents_type_is_its_canonical_string(
    harness: Harness, first: tuple[Any, CloudEventsMode], second: tuple[Any, CloudEventsMode]
) -> None:
    """CloudEvents Type System: an Integer or Boolean attribute's value is its canonical
    string ("0", "false", "true"); binary mode carries exactly that. The worker reads a
    structured 0 or false as no key at all (``str(x or command_id)``) and true as "True":
    a retry under the same key and a new command id runs again (a second customer here;
    a second charge for payment.create)."""
    tenant = harness.add_tenant()
    outcomes = []
    for key, mode in (first, second):
        outcomes.append(
            await harness.send(
                "customer.create",
                tenant,
                {"email": "a@example.com"},
                attributes={"idempotencykey": key},
                mode=mode,
            )
        )
    a, b = outcomes
    assert kind(a) == kind(b) == "customer.created", (data(a), data(b))
    assert data(b)["entity_id"] == data(a)["entity_id"], "ran twice under one idempotency key"


# causation_id keeps a printable ASCII id without the pattern's scan: wherever that
# shortcut answers, the full check decides the same.
def test_ascii_printable_ids_hold_nothing_a_cloudevents_string_may_not() -> None:
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        text = "id-" + chr(cp)
        fast = text.isascii() and text.isprintable()
        if fast:  # the shortcut keeps the id only where the full check would
            assert NOT_CE_STRING.search(text) is None, hex(cp)
            assert causation_id(text) == text
