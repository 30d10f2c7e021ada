"""What a peer with no valid credential gets from the web servers (review h58w): a real
key id with a made-up secret is refused before the body is read, as any made-up key is
(a parse error's 400 told which key ids exist); an unknown path holding a card number is
not quoted back; both servers close idle or half-sent connections and take a bounded
number of header lines (aiohttp's defaults held ~1 MiB of unfinished headers a
connection for an hour)."""

from __future__ import annotations

import aiohttp.web
import pytest
from aiohttp.test_utils import TestClient, TestServer

from paystream.streams.pan import contains_card_number
from paystream.web.http_limits import HANDLER_LIMITS, CappedRunner
from paystream.web.ingress_server import make_runner
from tests.web.test_ingress_review_findings import STRUCTURED, _ingress


def _same_id_made_up_secret(key: str) -> str:
    """Shaped as a key, naming a real key id (no secret: `api-key list` shows it)."""
    made_up = "A" * 43 if not key.endswith("A" * 43) else "B" * 43
    return key[: len("psk_12345678_")] + made_up


@pytest.mark.asyncio
async def test_a_made_up_secret_under_a_real_key_id_is_refused_unread() -> None:
    app, produced, key = _ingress()
    forged = _same_id_made_up_secret(key)
    async with TestClient(TestServer(app)) as client:
        bad = await client.post(
            "/v1/commands",
            data=b"not json",
            headers={"Authorization": f"Bearer {forged}", **STRUCTURED},
        )
        unknown = await client.post(
            "/v1/commands",
            data=b"not json",
            headers={"Authorization": f"Bearer psk_00000000_{'A' * 43}", **STRUCTURED},
        )
        assert (bad.status, await bad.json()) == (unknown.status, await unknown.json())
    assert bad.status == 401 and not produced


@pytest.mark.asyncio
async def test_an_unknown_path_or_method_holding_a_card_number_is_not_quoted() -> None:
    app, _produced, _key = _ingress()
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/cards/4242424242424242")
        assert resp.status == 404
        text = await resp.text()
        assert "no such path: /v1/cards/" in text and not contains_card_number(text), text


def test_both_web_servers_bound_idle_connections_and_header_lines() -> None:
    from paystream.app import app

    worker = app.web._runner
    ingress = make_runner(aiohttp.web.Application(), 512)
    for runner in (worker, ingress):
        assert isinstance(runner, CappedRunner)
        assert {k: runner._kwargs[k] for k in HANDLER_LIMITS} == HANDLER_LIMITS
    assert HANDLER_LIMITS["keepalive_timeout"] <= 120 and HANDLER_LIMITS["max_headers"] <= 64
