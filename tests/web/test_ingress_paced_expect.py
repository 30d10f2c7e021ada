"""A tenant key's request over its rate is refused before its body (review h67k); one that
asks first (`Expect: 100-continue`) was told to send it all the same (review h67n)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.web.test_ingress_refused_pacing import _HEAVY_INVALID, _event, _paced_ingress

pytestmark = pytest.mark.asyncio


async def test_a_paced_out_key_asking_first_is_refused_before_it_sends_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, key, _parsed = _paced_ingress(monkeypatch)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/cloudevents+json"}
    async with TestClient(TestServer(app)) as client:
        first = await client.post(
            "/v1/commands", data=_event("ok", {"email": "a@example.com"}), headers=headers
        )
        assert first.status == 202  # its one token spent
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(
                (
                    "POST /v1/commands HTTP/1.1\r\n"
                    f"Host: {client.host}\r\n"
                    f"Authorization: Bearer {key}\r\n"
                    "Content-Type: application/cloudevents+json\r\n"
                    f"Content-Length: {len(_HEAVY_INVALID)}\r\n"
                    "Expect: 100-continue\r\n\r\n"
                ).encode()
            )
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
    # Now "HTTP/1.1 100 Continue": the client uploads up to 64 KiB for a certain 429.
    assert b" 429 " in status_line, status_line
