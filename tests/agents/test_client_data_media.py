"""The client (encoded_for_sending, binary mode) refuses a command whose datacontenttype
a worker would not read as JSON, as the ingress does (review h64c: it was sent, then
rejected "data must be a JSON object")."""

from __future__ import annotations

import time

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.agents.pipeline import Inbound
from paystream.client import InvalidCommand, build_command, encoded_for_sending
from paystream.settings import CloudEventsMode, load_settings
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("media", [" application/json", "image/x+json", "text/plain"])
async def test_the_client_sends_only_what_a_worker_reads(harness: Harness, media: str) -> None:
    tenant = harness.add_tenant()
    cmd = build_command("customer.create", tenant, {"email": "a@example.com"})
    cmd = CloudEvent({**cmd.get_attributes(), "datacontenttype": media}, cmd.get_data())
    with pytest.raises(InvalidCommand, match="datacontenttype"):
        encoded_for_sending(cmd, CloudEventsMode.BINARY, load_settings())
    # Sent anyway (a producer of its own), the worker refuses it.
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    emits = await harness.raw(
        Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                harness.settings.commands_topic, -1, -1)
    )  # fmt: skip
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "command.rejected", (media, data(outcome))
