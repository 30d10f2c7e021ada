"""What the Paddle gateway's tests share: a gateway for a tenant against the FAKE Paddle
(tests/fixtures/paddle_fake.py), on the session's Redis as a worker's (its creates'
in-flight keys: conftest.py hands it over), a client that loses the answer of chosen
requests after Paddle ran them, and the fake's test-only routes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from paystream.devstack._process import free_port
from paystream.gateways.base import GatewayContext
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle import PaddleGateway
from paystream.gateways.paddle.client import PaddleClient
from paystream.gateways.registry import GatewayDeps, build_gateway
from paystream.money import Money
from paystream.settings import load_settings
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY, PaddleFake

__all__ = [
    "LosingClient",
    "decide",
    "effects",
    "gateway",
    "key",
    "serve",
    "usd",
    "use_redis",
    "workers_gateway",
]

# The session's Redis (redis.asyncio.Redis), shared by every gateway built here as by a
# fleet's workers: set by conftest.py.
_redis: Any = None


def use_redis(client: Any) -> None:
    global _redis
    _redis = client


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def usd(amount: int) -> Money:
    return Money(amount=amount, currency="USD")


def gateway(
    url: str,
    api_key: str = FAKE_PADDLE_API_KEY,
    *,
    tenant_id: str = "t-paddle",
    webhook_key: str | None = None,
    redis: Any = None,
    **options: object,
) -> PaddleGateway:
    """A worker's gateway, on ``redis`` (None: the session's)."""
    credentials = {"api_key": SecretStr(api_key)}
    if webhook_key is not None:
        credentials["webhook_secret_key"] = SecretStr(webhook_key)
    ctx = GatewayContext(
        tenant_id=tenant_id, provider="paddle", credentials=credentials, options=options
    )
    deps = GatewayDeps(settings=load_settings(paddle_api_base=url), redis=redis or _redis)
    gw = build_gateway(ctx, deps)
    assert isinstance(gw, PaddleGateway)
    return gw


class LosingClient(PaddleClient):
    """A client whose answers to the first ``lose`` requests of ``method`` to ``path``
    are lost after Paddle ran them (a worker killed, a connection dropped): the caller
    sees a timeout, as the pipeline would, and sends the request again."""

    def __init__(self, inner: PaddleClient, method: str, path: str, lose: int = 1) -> None:
        self.__dict__.update(inner.__dict__)
        self._lost = (method, path)
        self._to_lose = lose
        self.sent: list[tuple[str, str]] = []
        self.bodies: list[dict[str, Any]] = []  # (each body sent, in order)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        settled: Callable[[bool], None] | None = None,
    ) -> dict[str, Any]:
        self.sent.append((method, path))
        if body is not None:
            self.bodies.append(dict(body))
        answer = await super().call(method, path, body=body, query=query, settled=settled)
        if (method, path) == self._lost and self._to_lose > 0:
            self._to_lose -= 1
            raise GatewayError(
                ErrorCode.TIMEOUT, "the answer was lost", provider="paddle", retryable=True
            )
        return answer


def losing(gw: PaddleGateway, method: str, path: str, lose: int = 1) -> LosingClient:
    """``gw``'s client swapped for one losing answers (see LosingClient)."""
    client = LosingClient(gw._client, method, path, lose)
    gw._client = client
    return client


async def serve(fake: PaddleFake) -> tuple[web.AppRunner, str]:
    """``fake`` (a PaddleFake with some behaviour of its own) served on a free port: its
    runner (to clean up) and its base URL."""
    runner = web.AppRunner(fake.app(), handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def workers_gateway(url: str, tenant: str, redis: Any, settings: Any) -> PaddleGateway:
    """A tenant's gateway against the fake at ``url``, built as the worker builds it
    (``settings``' call timeout: its Redis wait a quarter of it) on ``redis``."""
    ctx = GatewayContext(
        tenant_id=tenant,
        provider="paddle",
        credentials={"api_key": SecretStr(FAKE_PADDLE_API_KEY)},
        options={},
    )
    gw = build_gateway(ctx, GatewayDeps(settings=settings, redis=redis))
    assert isinstance(gw, PaddleGateway)
    return gw


async def effects(url: str, seller: str = "seller-1") -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_fake/effects") as resp:
        return list((await resp.json())[seller])


async def decide(url: str, adjustment_id: str, status: str = "approved") -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/_fake/adjustments/{adjustment_id}/decide", json={"status": status}
        ) as resp,
    ):
        resp.raise_for_status()


async def restate(
    url: str,
    total: int,
    currency: str | None = None,
    *,
    object_id: str | None = None,
    request: str | None = None,
) -> None:
    """The FAKE Paddle reports ``total`` (in ``currency``) for ``object_id`` now, or for
    what the request tagged ``request`` makes from now on (its /_fake/restate route)."""
    body: dict[str, Any] = {"total": str(total)}
    if currency is not None:
        body["currency_code"] = currency
    body.update({"id": object_id} if object_id is not None else {"request": request})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/_fake/restate", json=body) as resp,
    ):
        resp.raise_for_status()


__all__ += ["losing", "restate"]
