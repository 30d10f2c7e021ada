"""The tests' localstripe keeps Stripe's idempotency contract (tests/fixtures/
localstripe_server.py): exactly-once at Stripe after a crash rests on it, and localstripe
itself ignores the key (a redelivered refund refunded twice there: review h62b)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _post(
    base: str, path: str, data: dict[str, str], *, api_key: str, key: str | None
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {api_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}{path}", data=data, headers=headers) as r,
    ):
        return r.status, await r.json(), r.headers


def _api_key() -> str:
    return f"sk_test_{uuid.uuid4().hex}"


async def test_a_repeat_gets_the_first_answer(localstripe_url: str) -> None:
    api_key, key = _api_key(), uuid.uuid4().hex
    data = {"email": "a@example.com"}
    status, first, headers = await _post(
        localstripe_url, "/v1/customers", data, api_key=api_key, key=key
    )
    assert status == 200 and "Idempotent-Replayed" not in headers
    status, again, headers = await _post(
        localstripe_url, "/v1/customers", data, api_key=api_key, key=key
    )
    assert status == 200 and again == first
    assert headers["Idempotent-Replayed"] == "true"


async def test_an_error_answer_is_kept_too(localstripe_url: str) -> None:
    """Stripe keeps what the endpoint answered, failures included: a capture of a
    PaymentIntent that does not exist stays that answer."""
    api_key, key = _api_key(), uuid.uuid4().hex
    path = "/v1/payment_intents/pi_nosuch/capture"
    first = await _post(localstripe_url, path, {}, api_key=api_key, key=key)
    again = await _post(localstripe_url, path, {}, api_key=api_key, key=key)
    assert first[0] == again[0] == 404 and first[1] == again[1]
    assert again[2]["Idempotent-Replayed"] == "true"


async def test_other_parameters_under_a_key_are_refused(localstripe_url: str) -> None:
    api_key, key = _api_key(), uuid.uuid4().hex
    await _post(localstripe_url, "/v1/customers", {"email": "a@x.com"}, api_key=api_key, key=key)
    status, body, _ = await _post(
        localstripe_url, "/v1/customers", {"email": "b@x.com"}, api_key=api_key, key=key
    )
    assert status == 400 and body["error"]["type"] == "idempotency_error"
    status, body, _ = await _post(
        localstripe_url, "/v1/payment_methods", {"email": "a@x.com"}, api_key=api_key, key=key
    )
    assert status == 400 and body["error"]["type"] == "idempotency_error"


async def test_keys_are_per_account_and_optional(localstripe_url: str) -> None:
    key, data = uuid.uuid4().hex, {"email": "a@example.com"}
    ids = set()
    for api_key in (_api_key(), _api_key()):
        status, body, _ = await _post(
            localstripe_url, "/v1/customers", data, api_key=api_key, key=key
        )
        assert status == 200
        ids.add(body["id"])
    api_key = _api_key()
    for _ in range(2):
        ids.add(
            (await _post(localstripe_url, "/v1/customers", data, api_key=api_key, key=None))[1][
                "id"
            ]
        )
    assert len(ids) == 4


async def test_concurrent_repeats_make_one_object(localstripe_url: str) -> None:
    api_key, key = _api_key(), uuid.uuid4().hex
    answers = await asyncio.gather(
        *(
            _post(localstripe_url, "/v1/customers", {"email": "c@x.com"}, api_key=api_key, key=key)
            for _ in range(5)
        )
    )
    made = {body["id"] for status, body, _ in answers if status == 200}
    assert len(made) == 1
    assert all(status in (200, 409) for status, _, _ in answers)


async def test_a_repeat_while_the_first_runs_gets_409_and_then_its_answer() -> None:
    """localstripe answers each request before it takes the next, so the 409 is shown
    in process, around an endpoint that waits."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from tests.fixtures.localstripe_server import idempotency

    entered, release, made = asyncio.Event(), asyncio.Event(), []

    async def create(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        made.append(f"cus_{len(made)}")
        return web.json_response({"id": made[-1]})

    app = web.Application(middlewares=[idempotency])
    app.router.add_post("/v1/customers", create)
    headers = {"Authorization": f"Bearer {_api_key()}", "Idempotency-Key": uuid.uuid4().hex}
    async with TestClient(TestServer(app)) as client:
        first = asyncio.create_task(client.post("/v1/customers", data={"a": "1"}, headers=headers))
        await asyncio.wait_for(entered.wait(), 5)  # the first runs
        second = await client.post("/v1/customers", data={"a": "1"}, headers=headers)
        assert second.status == 409
        assert (await second.json())["error"]["code"] == "idempotency_key_in_use"
        release.set()
        answered = await first
        assert answered.status == 200 and await answered.json() == {"id": "cus_0"}
        third = await client.post("/v1/customers", data={"a": "1"}, headers=headers)
        assert await third.json() == {"id": "cus_0"} and made == ["cus_0"]
        assert third.headers["Idempotent-Replayed"] == "true"
