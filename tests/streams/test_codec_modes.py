"""Decoding rules the codec suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

import orjson
import pytest

from paystream.streams.codec import UndecodableRecord, decode_record, is_structured

CTYPE = {"content-type": b"application/cloudevents+json"}
BODY = {
    "specversion": "1.0",
    "id": "c1",
    "source": "/x",
    "type": "com.paystream.command.customer.create",
    "tenantid": "acme",
    "data": {},
}


def test_a_json_body_with_a_plain_json_content_type_and_no_ce_headers_is_not_an_event() -> None:
    """No ce_* header and a content type other than the structured one: by the Kafka
    binding it is not a CloudEvent, whatever its body looks like."""
    value = orjson.dumps(BODY)
    assert decode_record(b"acme", value, CTYPE).get_id() == "c1"
    with pytest.raises(UndecodableRecord, match="not a structured CloudEvent"):
        decode_record(b"acme", value, {"content-type": b"application/json"})


def test_is_structured_agrees_with_the_decoder() -> None:
    """card_data.py scans every attribute of a structured record (its body is parked as it
    came) and only the request attributes of a binary one: it asks is_structured."""
    assert is_structured({})
    assert is_structured({"content-type": b"application/cloudevents+json", "ce_id": b"x"})
    assert is_structured({"Content-Type": b"Application/CloudEvents+JSON; charset=utf-8",
                          "ce_id": b"x"})  # fmt: skip
    assert not is_structured({"ce_id": b"x", "content-type": b"application/json"})
    assert not is_structured({"CE_ID": b"x"})
