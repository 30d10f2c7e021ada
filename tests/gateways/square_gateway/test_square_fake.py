"""The tests' FAKE Square (tests/fixtures/square_fake.py) holds to Square's published
reference where a looser fake would hide a gateway bug (review h73d): only a successful
answer is an idempotency key's; a decline answers the FAILED payment beside its errors;
sellers and locations; evidence text of 1 to 500 characters; its port retried."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from tests.fixtures import square_fake
from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_LOCATION_2,
    FAKE_SQUARE_MERCHANT,
    FAKE_SQUARE_OTHER_LOCATION,
    FAKE_SQUARE_OTHER_MERCHANT,
    FAKE_SQUARE_OTHER_TOKEN,
    FAKE_SQUARE_TOKEN,
    square_signature,
)


class Square:
    """Square's HTTP API, as one seller's token sends it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def pay(
        self, nonce: str = "cnon:card-nonce-ok", key: str | None = None, **fields: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {
            "idempotency_key": key or uuid.uuid4().hex,
            "source_id": nonce,
            "amount_money": {"amount": 1000, "currency": "USD"},
            **fields,
        }
        return await self.call("POST", "/v2/payments", body)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def seller(http: aiohttp.ClientSession, square_url: str) -> Square:
    return Square(http, square_url, FAKE_SQUARE_TOKEN)


@pytest.fixture
def other_seller(http: aiohttp.ClientSession, square_url: str) -> Square:
    return Square(http, square_url, FAKE_SQUARE_OTHER_TOKEN)


async def test_a_refused_request_leaves_its_key_unspent(seller: Square) -> None:
    """Square's idempotency page: the same request again gets "the first successful"
    response. A decline is none: the key runs again (a new attempt), and then a
    corrected request under it is run, not refused IDEMPOTENCY_KEY_REUSED."""
    key = uuid.uuid4().hex
    first = await seller.pay("cnon:card-nonce-declined", key)
    again = await seller.pay("cnon:card-nonce-declined", key)
    assert (first[0], again[0]) == (400, 400)
    assert first[1]["payment"]["id"] != again[1]["payment"]["id"]  # (not replayed)
    fixed = await seller.pay(key=key)
    assert fixed[0] == 200 and fixed[1]["payment"]["status"] == "COMPLETED"
    # A successful answer is the key's: replayed, and another body refused.
    assert await seller.pay(key=key) == fixed
    other = await seller.pay(key=key, note="another")
    assert other[0] == 400 and other[1]["errors"][0]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_a_decline_answers_the_failed_payment_beside_its_errors(seller: Square) -> None:
    status, body = await seller.pay("cnon:card-nonce-rejected-cvv")
    assert status == 400
    assert body["errors"][0]["code"] == "CVV_FAILURE"
    assert body["errors"][0]["category"] == "PAYMENT_METHOD_ERROR"
    payment = body["payment"]
    assert payment["status"] == "FAILED" and payment["location_id"] == FAKE_SQUARE_LOCATION
    assert payment["card_details"]["errors"][0]["code"] == "CVV_FAILURE"
    read = await seller.call("GET", f"/v2/payments/{payment['id']}")
    assert read == (200, {"payment": payment})


async def test_payments_refunds_and_disputes_carry_their_location(
    seller: Square, square_url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await seller.pay(location_id=FAKE_SQUARE_LOCATION_2)
    assert status == 200
    payment = body["payment"]
    assert payment["location_id"] == FAKE_SQUARE_LOCATION_2
    status, refunded = await seller.call(
        "POST",
        "/v2/refunds",
        {
            "idempotency_key": uuid.uuid4().hex,
            "payment_id": payment["id"],
            "amount_money": {"amount": 100, "currency": "USD"},
        },
    )
    assert status == 200 and refunded["refund"]["location_id"] == FAKE_SQUARE_LOCATION_2
    async with http.post(
        f"{square_url}/_fake/disputes", json={"payment_id": payment["id"]}
    ) as resp:
        dispute = (await resp.json())["dispute"]
    assert dispute["location_id"] == FAKE_SQUARE_LOCATION_2
    _, main = await seller.call("GET", f"/v2/disputes?location_id={FAKE_SQUARE_LOCATION}")
    _, second = await seller.call("GET", f"/v2/disputes?location_id={FAKE_SQUARE_LOCATION_2}")
    assert dispute["id"] not in [d["id"] for d in main.get("disputes", [])]
    assert dispute["id"] in [d["id"] for d in second["disputes"]]
    # Another seller's location is none of this seller's.
    status, body = await seller.pay(location_id=FAKE_SQUARE_OTHER_LOCATION)
    assert status == 404 and body["errors"][0]["code"] == "NOT_FOUND"


async def test_another_sellers_objects_are_not_found(
    seller: Square, other_seller: Square, square_url: str, http: aiohttp.ClientSession
) -> None:
    _, paid = await seller.pay()
    pid = paid["payment"]["id"]
    _, made = await seller.call(
        "POST", "/v2/customers", {"idempotency_key": uuid.uuid4().hex, "given_name": "Ada"}
    )
    cid = made["customer"]["id"]
    async with http.post(f"{square_url}/_fake/disputes", json={"payment_id": pid}) as resp:
        did = (await resp.json())["dispute"]["id"]
    for method, path in (
        ("GET", f"/v2/payments/{pid}"),
        ("POST", f"/v2/payments/{pid}/cancel"),
        ("GET", f"/v2/customers/{cid}"),
        ("GET", f"/v2/disputes/{did}"),
        ("POST", f"/v2/disputes/{did}/accept"),
    ):
        status, body = await other_seller.call(method, path, {} if method == "POST" else None)
        assert (status, body["errors"][0]["code"]) == (404, "NOT_FOUND"), path
    status, body = await other_seller.call(
        "POST",
        "/v2/refunds",
        {
            "idempotency_key": uuid.uuid4().hex,
            "payment_id": pid,
            "amount_money": {"amount": 100, "currency": "USD"},
        },
    )
    assert status == 404
    _, listed = await other_seller.call("GET", "/v2/disputes")
    assert did not in [d["id"] for d in listed.get("disputes", [])]
    # The other seller pays at its own location.
    status, own = await other_seller.pay()
    assert status == 200 and own["payment"]["location_id"] == FAKE_SQUARE_OTHER_LOCATION
    assert (await seller.call("GET", f"/v2/payments/{own['payment']['id']}"))[0] == 404


async def test_evidence_text_takes_1_to_500_characters(
    seller: Square, square_url: str, http: aiohttp.ClientSession
) -> None:
    _, paid = await seller.pay()
    async with http.post(
        f"{square_url}/_fake/disputes", json={"payment_id": paid["payment"]["id"]}
    ) as resp:
        did = (await resp.json())["dispute"]["id"]

    async def evidence(text: str) -> tuple[int, dict[str, Any]]:
        body = {"idempotency_key": uuid.uuid4().hex, "evidence_text": text}
        return await seller.call("POST", f"/v2/disputes/{did}/evidence-text", body)

    status, body = await evidence("x" * 501)
    assert (status, body["errors"][0]["code"]) == (400, "VALUE_TOO_LONG")
    assert body["errors"][0]["field"] == "evidence_text"
    assert (await evidence(""))[0] == 400
    assert (await evidence("x" * 500))[0] == 200
    # Submitted, the dispute takes no more.
    assert (await seller.call("POST", f"/v2/disputes/{did}/submit-evidence", {}))[0] == 200
    assert (await evidence("late"))[0] == 400


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[tuple[bytes, str]]]]:
    """A webhook endpoint: its URL, and each notification posted to it (body, signature)."""
    received: list[tuple[bytes, str]] = []

    async def take(request: aiohttp.web.Request) -> aiohttp.web.Response:
        signature = request.headers.get("x-square-hmacsha256-signature", "")
        received.append((await request.read(), signature))
        return aiohttp.web.json_response({"ok": True})

    app = aiohttp.web.Application()
    app.router.add_post("/hook", take)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_the_webhook_controls_find_each_sellers_objects_and_name_their_location(
    seller: Square,
    other_seller: Square,
    square_url: str,
    http: aiohttp.ClientSession,
    endpoint: tuple[str, list[tuple[bytes, str]]],
) -> None:
    """The test-only lapse and webhook routes carry no token: they serve the object of
    whichever seller holds it, and the event names that seller and the object's location
    (a second location's payment, another seller's dispute), signed over the URL."""
    url, received = endpoint

    async def control(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{square_url}{path}", json=body) as resp:
            return resp.status, await resp.json()

    async def notify(event_type: str, some_id: str) -> dict[str, Any]:
        body = {"type": event_type, "id": some_id, "url": url, "signature_key": "k3y"}
        status, answer = await control("/_fake/webhooks", body)
        assert (status, answer["status"]) == (200, 200), answer
        raw, signature = received[-1]
        assert signature == square_signature(url, raw, "k3y")
        event: dict[str, Any] = json.loads(raw)
        return event

    # A second location's authorisation, voided by Square, and its payment.updated.
    _, held = await seller.pay(
        location_id=FAKE_SQUARE_LOCATION_2, autocomplete=False, reference_id="t:pay_1"
    )
    pid = held["payment"]["id"]
    status, lapsed = await control(f"/_fake/payments/{pid}/lapse", {})
    assert status == 200 and lapsed["payment"]["status"] == "CANCELED"
    event = await notify("payment.updated", pid)
    assert event["merchant_id"] == FAKE_SQUARE_MERCHANT
    payment = event["data"]["object"]["payment"]
    assert (payment["id"], payment["status"]) == (pid, "CANCELED")
    assert (payment["location_id"], payment["reference_id"]) == (FAKE_SQUARE_LOCATION_2, "t:pay_1")
    # Its refund's event names the second location.
    _, paid = await seller.pay(location_id=FAKE_SQUARE_LOCATION_2)
    _, refunded = await seller.call(
        "POST",
        "/v2/refunds",
        {
            "idempotency_key": uuid.uuid4().hex,
            "payment_id": paid["payment"]["id"],
            "amount_money": {"amount": 100, "currency": "USD"},
        },
    )
    event = await notify("refund.updated", refunded["refund"]["id"])
    assert event["location_id"] == FAKE_SQUARE_LOCATION_2
    assert event["data"]["object"]["refund"]["location_id"] == FAKE_SQUARE_LOCATION_2
    # Another seller's authorisation lapses too, and its dispute is its own.
    _, others = await other_seller.pay(autocomplete=False)
    status, lapsed = await control(f"/_fake/payments/{others['payment']['id']}/lapse", {})
    assert status == 200 and lapsed["payment"]["status"] == "CANCELED"
    _, completed = await other_seller.pay()
    _, opened = await control("/_fake/disputes", {"payment_id": completed["payment"]["id"]})
    event = await notify("dispute.created", opened["dispute"]["id"])
    assert event["merchant_id"] == FAKE_SQUARE_OTHER_MERCHANT
    assert event["location_id"] == FAKE_SQUARE_OTHER_LOCATION
    # A declined payment keeps its reference_id, so its event names paystream's payment.
    status, declined = await seller.pay("cnon:card-nonce-declined", reference_id="t:pay_2")
    assert status == 400 and declined["payment"]["reference_id"] == "t:pay_2"
    event = await notify("payment.updated", declined["payment"]["id"])
    assert event["data"]["object"]["payment"]["status"] == "FAILED"
    # An id no seller holds is refused.
    status, _ = await control(
        "/_fake/webhooks",
        {"type": "payment.updated", "id": "nope", "url": url, "signature_key": "k"},
    )
    assert status == 400


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_the_fake_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parallel session's server may bind the port free_port() found: the fake starts
    again on a new one (every Square test of the session errored otherwise)."""
    monkeypatch.setattr(square_fake, "free_port", lambda host="127.0.0.1": taken)
    server = square_fake.start_square_fake(tmp_path / "server.log")
    try:
        assert server.port != taken and server.url.endswith(f":{server.port}")
        async with aiohttp.ClientSession() as session:
            status, body = await Square(session, server.url, FAKE_SQUARE_TOKEN).pay()
        assert status == 200 and body["payment"]["status"] == "COMPLETED"
    finally:
        server.stop()
    assert "address already in use" in (tmp_path / "server.log").read_text()


def test_the_fake_given_a_taken_port_is_not_moved(tmp_path: Path, taken: int) -> None:
    with pytest.raises(OSError, match="address already in use"):
        square_fake.start_square_fake(tmp_path / "server.log", port=taken)
