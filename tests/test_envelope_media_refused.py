"""`application/cloudevents+json` as a command's datacontenttype: refused by the ingress
in either mode, and by the published Command schema (review h64c)."""

from __future__ import annotations

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.settings import CloudEventsMode, load_settings
from paystream.web.ingress import _command_record, _Refused
from tests.test_docs import published, validator
from tests.test_published_contracts import VALID, _structured

MEDIA = ["application/cloudevents+json", "Application/CloudEvents+JSON; charset=utf-8"]


@pytest.mark.parametrize("media", MEDIA)
def test_what_the_ingress_refuses_fails_the_published_command_schema(media: str) -> None:
    """As test_a_media_type_the_ingress_refuses_fails_the_command_schema (binary mode)."""
    body = _structured("payment.create", VALID["payment.create"], datacontenttype=media)
    attributes = {k: v for k, v in body.items() if k not in ("data", "time")}
    with pytest.raises(_Refused):
        _command_record(CloudEvent(attributes, body["data"]), load_settings())
    assert not validator(published("openapi"), "/components/schemas/Command").is_valid(body)


@pytest.mark.parametrize("media", MEDIA)
def test_the_envelope_type_is_refused_in_structured_mode_too_as_the_readme_says(
    media: str,
) -> None:
    """README (Refused before the topic): refused whatever the mode, so the API answers
    one way (a worker in structured mode would run it)."""
    body = _structured("payment.create", VALID["payment.create"], datacontenttype=media)
    attributes = {k: v for k, v in body.items() if k not in ("data", "time")}
    settings = load_settings(cloudevents_mode=CloudEventsMode.STRUCTURED)
    with pytest.raises(_Refused):
        _command_record(CloudEvent(attributes, body["data"]), settings)
