"""data_base64 that is no base64 is no CloudEvent, its key spelled with a JSON escape too
(review h64c: the check looked for the raw text "data_base64"; the SDK's parser reads
the escape)."""

from __future__ import annotations

import json
import time

import pytest

from paystream.agents.pipeline import Inbound
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("spelled", ["data_base64", "data\\u005fbase64", "\\u0064ata_base64"])
async def test_data_base64_no_base64_under_an_escaped_key_is_no_cloudevent(
    harness: Harness, spelled: str
) -> None:
    tenant = harness.add_tenant()
    body = {
        "specversion": "1.0", "id": f"c-{len(spelled)}", "source": "/x", "tenantid": tenant,
        "type": "com.paystream.command.customer.create", "@KEY@": "!!",
    }  # fmt: skip
    value = json.dumps(body).replace('"@KEY@"', f'"{spelled}"').encode()
    assert json.loads(value)["data_base64"] == "!!"
    headers = {"content-type": b"application/cloudevents+json"}
    emits = await harness.raw(
        Inbound(tenant.encode(), value, headers, int(time.time() * 1000),
                harness.settings.commands_topic, -1, -1)
    )  # fmt: skip
    outcome = outcome_of(harness.settings, emits)
    assert not harness.tables.customers, (spelled, kind(outcome), data(outcome))
    assert harness.settings.dlq_topic in [e.topic for e in emits], (spelled, data(outcome))
