"""The HTTP ingress refuses what the worker would read otherwise than it answered, and its
answers and waits hold under hostile input (review findings, in process: the ingress
alone, its registry, produce and outcome reader faked)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp.web
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from paystream.client import build_command
from paystream.settings import load_settings
from paystream.streams.codec import KafkaRecord, decode_record, headers_to_dict
from paystream.streams.commands import DATA_NOT_AN_OBJECT
from paystream.streams.pan import contains_card_number
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant
from paystream.web import ingress as ingress_module
from paystream.web.ingress import CommandIngress
from tests.web.ingress_app import ingress_app

pytestmark = pytest.mark.asyncio

STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def _ingress() -> tuple[aiohttp.web.Application, list[Any], str]:
    """The ingress for tenant acme: (its app, the records it produced, acme's key)."""
    key_id, key, kept = new_key()
    produced: list[Any] = []

    async def produce(rec: Any, tenant: str) -> None:
        produced.append(rec)

    app, _, _ = ingress_app(Tenant(tenant_id="acme", ingress_keys={key_id: kept}), produce=produce)
    return app, produced, key


def _event(**changed: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": "cmd-1",
        "source": "/t",
        "type": "com.paystream.command.customer.create",
        "tenantid": "acme",
        "data": {"email": "a@example.com"},
    }
    return {**event, **changed}


async def _post(app: aiohttp.web.Application, key: str, body: bytes) -> tuple[int, Any]:
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/commands", data=body, headers={"Authorization": f"Bearer {key}", **STRUCTURED}
        )
        return resp.status, await resp.json()


@pytest.mark.parametrize("key", [0, False, 1.5])
async def test_an_idempotency_key_that_is_no_string_is_refused(key: object) -> None:
    """`"idempotencykey": 0` was answered 202 naming the command id as its key, and
    produced as "0", the key the worker used: every such command of the tenant shared it."""
    app, produced, api_key = _ingress()
    status, answer = await _post(app, api_key, json.dumps(_event(idempotencykey=key)).encode())
    assert (status, answer["error"]) == (400, "validation_error") and not produced, answer


@pytest.mark.parametrize("media", ["application/xml", "text/plain"])
async def test_an_object_under_a_media_type_that_is_no_json_is_refused(media: str) -> None:
    """Produced as it says, the worker read the object as text and refused it after the
    ingress had answered 202."""
    app, produced, api_key = _ingress()
    status, answer = await _post(app, api_key, json.dumps(_event(datacontenttype=media)).encode())
    assert status == 400 and not produced, answer


async def test_json_media_types_are_taken() -> None:
    app, produced, api_key = _ingress()
    for media in ("application/json", "application/json; charset=utf-8", "text/json"):
        body = json.dumps(_event(id=f"c-{media}", datacontenttype=media)).encode()
        status, answer = await _post(app, api_key, body)
        assert status == 202, (media, answer)
    for rec in produced:
        back = decode_record(rec.key, rec.value, headers_to_dict(rec.headers))
        assert isinstance(back.get_data(), dict)


async def test_a_refusal_never_shows_a_card_number() -> None:
    """The decoder's words were redacted, then cut at 300 characters: the cut turned a run
    of 25 digits (no card number) into one ending in a card number."""
    name = "A" + "b" * 74 + "4111111111111111" + "123456789"
    app, produced, api_key = _ingress()
    status, answer = await _post(app, api_key, json.dumps({**_event(), name: "v"}).encode())
    assert status == 400 and not produced
    assert not contains_card_number(answer["message"]), answer


async def test_a_tenants_share_of_the_waits_holds_while_the_reader_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The share was read before the outcome reader's start (up to 5 s) was awaited and
    counted after: every request meanwhile passed it."""
    monkeypatch.setattr(ingress_module, "MAX_WAITING_PER_TENANT", 2)
    started = asyncio.Event()

    class _Reader:
        def expect(self, tenant: str, command_id: str, request: str) -> object:
            return asyncio.get_running_loop().create_future()

    class _StartingWaits:
        closed = False

        async def reader(self, within: float) -> object:
            await started.wait()
            return _Reader()

    async def produce(rec: object, tenant: str) -> None:
        return None

    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9")
    ingress = CommandIngress(settings, RegistryMirror(settings), produce, _StartingWaits())
    request = make_mocked_request("POST", "/v1/commands", headers={"Prefer": "wait=30"})
    tasks = []
    for _ in range(10):
        event = build_command("customer.create", "loud", {})
        record = KafkaRecord(b"loud", b"{}", ())
        tasks.append(
            asyncio.ensure_future(
                ingress._produced(request, "loud", str(event.get_id()), event, record, "loud")
            )
        )
    await asyncio.sleep(0.05)
    started.set()
    await asyncio.sleep(0.05)
    try:
        assert ingress._waiting["loud"] <= 2, ingress._waiting
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not ingress._waiting  # every wait released


@pytest.mark.parametrize(
    ("sent_at", "fault"),
    [
        ("0001-01-01T00:00:00+01:00", "out of range in UTC"),  # before year 1 in UTC
        ("2026-12-05T10:00:00+05:30:15", None),  # an offset with seconds (the decoder's words)
    ],
)
async def test_a_time_the_worker_refuses_unrun_is_refused_here(
    sent_at: str, fault: str | None
) -> None:
    """0001-01-01T00:00:00+01:00 was answered 202, then rejected validation_error from the
    topic (review h61b): what a worker refuses unrun is refused here and never produced."""
    app, produced, api_key = _ingress()
    status, answer = await _post(app, api_key, json.dumps(_event(time=sent_at)).encode())
    assert status == 400 and not produced, answer
    assert fault is None or fault in answer["message"], answer
    within = _event(id="c-ok", time="0001-01-02T00:00:00+01:00")
    status, answer = await _post(app, api_key, json.dumps(within).encode())
    assert status == 202, answer  # (within range: taken, as the worker takes it)


async def test_data_in_base64_is_refused_saying_how_data_is_sent() -> None:
    app, produced, api_key = _ingress()
    event = _event(data_base64=base64.b64encode(b'{"email": "a@example.com"}').decode())
    del event["data"]
    status, answer = await _post(app, api_key, json.dumps(event).encode())
    assert status == 400 and not produced, answer
    assert answer["message"] == DATA_NOT_AN_OBJECT


@pytest.mark.parametrize(
    "media",
    [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON; charset=utf-8",
        " application/cloudevents+json",
    ],
)
async def test_a_structured_envelope_named_as_datacontenttype_is_refused(media: str) -> None:
    """A "+json" type, so taken for JSON data, and answered 202 (review h64b); produced in
    binary mode it became the record's content-type, and the worker read the data as the
    whole event: rejected not_a_cloudevent and dead-lettered, after the 202."""
    app, produced, key = _ingress()
    status, answer = await _post(app, key, json.dumps(_event(datacontenttype=media)).encode())
    assert (status, answer["error"]) == (400, "validation_error") and not produced, answer
    assert "datacontenttype" in answer["message"], answer


async def test_json_datacontenttypes_still_pass() -> None:
    app, produced, key = _ingress()
    for media in ("application/json", "application/vnd.acme+json", "text/json"):
        status, answer = await _post(app, key, json.dumps(_event(datacontenttype=media)).encode())
        assert status == 202, (media, answer)
    assert len(produced) == 3


@pytest.mark.parametrize("encoded", ["!!", "e30 ="])
async def test_data_base64_that_is_no_base64_is_refused(encoded: str) -> None:
    """ "!!" was read as no data (the SDK drops what is not base64) and answered 202: a
    customer.create ran on nothing (review h64b)."""
    app, produced, key = _ingress()
    body = {k: v for k, v in _event().items() if k != "data"}
    status, answer = await _post(app, key, json.dumps({**body, "data_base64": encoded}).encode())
    assert (status, answer["error"]) == (400, "validation_error") and not produced, answer
    assert "base64" in answer["message"], answer
