"""In a fleet, any worker answers a lookup of any tenant's entities (the owner's tables)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from paystream.devstack._process import wait_until
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


TOKEN = "operators-only-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _get(
    base_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{base_url}{path}", headers=headers or BEARER)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(json.load(r))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.load(exc))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _status(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(f"{base_url}{path}", headers=headers)) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def _check_the_token_guards_the_views(base_url: str, lookup: str) -> None:
    """PAYSTREAM_WEB_TOKEN: lookups carry personal data; probes stay open."""
    for path in ("/v1/stats", lookup, "/metrics", "/"):
        assert _status(base_url, path, {})[0] == 401, path
        assert _status(base_url, path, {"Authorization": "Bearer wrong"})[0] == 401, path
    assert _status(base_url, "/healthz", {})[0] == 200
    status, headers = _status(base_url, f"/?token={TOKEN}", {})
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    assert _status(base_url, "/v1/stats", jar)[0] == 200
    assert _status(base_url, "/", jar)[0] == 200
    status, headers = _status(base_url, "/?token=wrong", {})
    assert status == 303 and "Set-Cookie" not in headers


async def test_every_worker_answers_for_every_tenant(deployment_factory: Any) -> None:
    # With a web token: a lookup forwarded to the owner carries the caller's header.
    dep: Deployment = await deployment_factory(PAYSTREAM_WEB_TOKEN=TOKEN)
    tenants = [f"fleetview-{i}" for i in range(8)]  # on every partition
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    first, second = dep.worker("w1").start(), dep.worker("w2").start()
    try:
        for w in (first, second):
            await asyncio.to_thread(w.wait_ready, tenants)

        def split() -> bool:
            owned = [
                set((w.stats() or {}).get("worker", {}).get("partitions") or ())
                for w in (first, second)
            ]
            return all(owned) and len(owned[0] | owned[1]) == dep.settings.partitions

        await asyncio.to_thread(wait_until, split, timeout=90, what="two owners", interval=0.1)
        body = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
        async with dep.client() as client:
            for t in tenants:
                out = await client.command("payment.create", t, {**body, "payment_id": "p1"})
                assert out.get_type() == "com.paystream.payment.succeeded", out
        for t in tenants:
            answers = [
                await asyncio.to_thread(_get, w.base_url, f"/v1/tenants/{t}/payments/p1")
                for w in (first, second)
            ]
            assert answers[0] == answers[1], (t, answers)
            assert answers[0][0] == 200 and answers[0][1]["amount"] == 700
        missing = await asyncio.to_thread(
            _get, first.base_url, f"/v1/tenants/{tenants[0]}/payments/nope"
        )
        assert missing[0] == 404
        _check_the_token_guards_the_views(first.base_url, f"/v1/tenants/{tenants[0]}/payments/p1")
    finally:
        first.stop()
        second.stop()
