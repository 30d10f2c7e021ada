"""What the ingress produces for an event, or why it refuses it (no broker needed)."""

from __future__ import annotations

import pytest

from paystream.client import build_command
from paystream.settings import CloudEventsMode, load_settings
from paystream.web import ingress


def test_a_structured_command_too_large_as_encoded_is_a_413() -> None:
    """Non-ASCII text is escaped in structured mode (six bytes a character): a body under
    the limit can be over it as sent, which is a size refusal, not invalid data."""
    structured = load_settings(cloudevents_mode=CloudEventsMode.STRUCTURED)
    metadata = {f"k{i}": "é" * 500 for i in range(50)}  # ~50 KB as UTF-8, ~150 KB escaped
    event = build_command("customer.create", "shop", {"metadata": metadata})
    with pytest.raises(ingress._Refused) as refused:
        ingress._command_record(event, structured)
    assert (refused.value.status, refused.value.error) == (413, "payload_too_large")


def test_a_binary_command_is_produced_as_the_kafka_path_sends_it() -> None:
    event = build_command("customer.create", "shop", {"email": "ada@example.com"})
    rec, command_id = ingress._command_record(event, load_settings())
    headers = dict(rec.headers)
    assert command_id == event.get_id() and rec.key == b"shop"
    assert headers["ce_type"] == b"com.paystream.command.customer.create"
    assert headers["ce_tenantid"] == b"shop"


@pytest.mark.parametrize(
    "command_type",
    [
        "com.paystream.command.4242424242424242",
        "com.paystream.command.4242 4242 4242 4242",
        "com.paystream.command." + "x" * 60_000,
    ],
)
def test_an_unknown_command_type_is_not_repeated(command_type: str) -> None:
    """Checked before the card scan: the answer repeated the type, a card number in it
    too, and at any length (review finding)."""
    from cloudevents.core.v1.event import CloudEvent

    attributes = {
        "id": "c1",
        "type": command_type,
        "source": "/x",
        "specversion": "1.0",
        "tenantid": "shop",
        "datacontenttype": "application/json",
    }
    with pytest.raises(ingress._Refused) as refused:
        ingress._command_record(CloudEvent(attributes, {}), load_settings())
    said = str(refused.value) + str(vars(refused.value))
    assert refused.value.error == "unknown_command"
    assert "4242" not in said and len(said) < 2_000
