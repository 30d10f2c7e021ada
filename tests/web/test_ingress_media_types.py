"""What the ingress answers 202 a worker runs: a command's datacontenttype is read by
both as streams/codec.py is_json_media reads it (review h64b: " application/json" and
"image/x+json" were taken, then rejected by the worker as data that is no JSON object;
"application/cloudevents+json" was taken, then read by the worker as a structured
record, its data as the whole event, and dead-lettered)."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from paystream.agents.pipeline import Inbound
from paystream.streams.codec import decode_record
from tests.agents.conftest import running_harness
from tests.web.test_ingress_review_findings import STRUCTURED, _event, _ingress

pytestmark = pytest.mark.asyncio

MEDIA_TYPES = [
    "application/json",
    "Application/JSON; charset=utf-8",
    "text/json",
    "application/vnd.acme+json",
    "application/cloudevents+json",
    "Application/CloudEvents+JSON; charset=utf-8",
    " application/json",
    "application/json ",
    "image/x+json",
    "A/B+JSON",
    "text/plain",
]


async def test_a_command_the_ingress_takes_is_run_by_the_worker(redis_url: str) -> None:
    app, produced, key = _ingress()
    taken: dict[str, int] = {}
    async with TestClient(TestServer(app)) as client:
        for i, media in enumerate(MEDIA_TYPES):
            body = _event(id=f"cmd-{i}", datacontenttype=media)
            resp = await client.post(
                "/v1/commands",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {key}", **STRUCTURED},
            )
            answer = await resp.json()
            assert resp.status in (202, 400), (media, answer)
            if resp.status == 202:
                taken[media] = len(produced) - 1
            else:
                assert answer["error"] == "validation_error", (media, answer)
    assert set(taken) == {
        "application/json",
        "Application/JSON; charset=utf-8",
        "text/json",
        "application/vnd.acme+json",
    }
    async with running_harness(redis_url) as h:
        h.add_tenant("acme")
        for media, at in taken.items():
            rec = produced[at]
            emits = await h.raw(
                Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                        h.settings.commands_topic, -1, -1)
            )  # fmt: skip
            assert [e.topic for e in emits] == [h.settings.events_topic], media
            out = emits[0].record
            outcome = decode_record(out.key, out.value, dict(out.headers))
            assert outcome.get_type() == "com.paystream.customer.created", (
                media,
                outcome.get_data(),
            )
