"""`paystream ingress` while it stops: a command is refused 503 ("not taken") before its
body, also when it asks first (`Expect: 100-continue`, which aiohttp answers before the
middlewares run), counted, and its connection not kept alive."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from paystream import metrics
from paystream.settings import load_settings
from paystream.tenancy.models import UNREGISTERED
from paystream.web.ingress_server import IngressServer

pytestmark = pytest.mark.asyncio


def _unavailable() -> float:
    return metrics.INGRESS.labels(UNREGISTERED, "unavailable")._value.get()


async def test_a_command_asking_first_is_refused_before_its_body_while_stopping() -> None:
    server = IngressServer(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    server.stopping = True
    before = _unavailable()
    asked = make_mocked_request(
        "POST", "/v1/commands", headers={"Expect": "100-continue", "Content-Length": "10"}
    )
    answer: Any = await server._expect(asked)
    assert answer is not None and answer.status == 503 and not answer.keep_alive
    assert b"not taken" in answer.body

    async def handler(request: Any) -> Any:
        raise AssertionError("not handled while stopping")

    plain = make_mocked_request("POST", "/v1/commands", headers={"Content-Length": "10"})
    answer = await server._tracked(plain, handler)
    assert answer.status == 503 and not answer.keep_alive
    assert answer.headers["Retry-After"] == "1"
    assert _unavailable() == before + 2  # (the alert on 503s sees them)
