"""In a fleet, any worker answers a lookup of any tenant's entities (the owner's tables),
and each worker's summaries count only the partitions it serves.

One deployment for the file: its first worker alone for the first test (a partition
moves when the second joins), then the two (each worker's start and the group's joins
cost more than the checks; three fleets of their own took three times as long)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from paystream.devstack._process import wait_until
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.models import Tenant
from tests.e2e.together import stop_together
from tests.fixtures.pipeline import Deployment, wait_for_owners

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


TOKEN = "operators-only-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SCRAPE_TOKEN = "prometheus-only-token"
# Each test's tenants (eight: on every partition).
SUMMED = [f"fleetsum-{i}" for i in range(8)]
STANDBY = [f"standby-{i}" for i in range(8)]
VIEWED = [f"fleetview-{i}" for i in range(8)]
BODY = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}


@dataclass
class Fleet:
    dep: Deployment
    first: WorkerProcess
    second: WorkerProcess
    joined: bool = False

    async def both(self) -> tuple[WorkerProcess, WorkerProcess]:
        """The two workers, the second started (the first time) and the partitions split
        between them."""
        if not self.joined:
            self.joined = True
            await asyncio.to_thread(self.second.start)
        workers = (self.first, self.second)
        await wait_for_owners(workers, self.dep.settings.partitions, SUMMED + STANDBY + VIEWED)
        return workers

    def partition(self, tenant: str) -> int:
        """The tenant's partition (the client partitions by murmur2)."""
        return (murmur2(tenant.encode()) & 0x7FFFFFFF) % self.dep.settings.partitions


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(deployment_factory: Any) -> AsyncIterator[Fleet]:
    """The file's deployment, with a web token (a lookup forwarded to the owner carries
    the caller's header), every test's tenants registered, its first worker ready."""
    dep: Deployment = await deployment_factory(
        PAYSTREAM_WEB_TOKEN=TOKEN, PAYSTREAM_METRICS_TOKEN=SCRAPE_TOKEN
    )
    tenants = SUMMED + STANDBY + VIEWED
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    first, second = dep.worker("w1"), dep.worker("w2")
    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(first.wait_ready, tenants, partitions=dep.settings.partitions)
        yield Fleet(dep, first, second)
    finally:
        await stop_together(first, second)


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


async def _check_no_tenant_key_opens_the_outcomes(fleet: Fleet, base_url: str) -> None:
    """A tenant's ingress key sends its commands; it reads nothing of the worker's views,
    its own tenant's outcomes included (they are the operators'), nor the scraper's token."""
    owner, other = VIEWED[:2]
    key_id, key, kept = new_key("h77f")
    await fleet.dep.add_tenants(Tenant(tenant_id=owner, ingress_keys={key_id: kept}))
    for t in (owner, other):
        path = f"/v1/tenants/{t}/outcomes"
        for given in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer wrong"}):
            assert _status(base_url, path, given)[0] == 401, (path, given.keys())
        assert _status(base_url, path, {"Authorization": f"Bearer {SCRAPE_TOKEN}"})[0] == 401
        assert _status(base_url, path, BEARER)[0] == 200


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
    # A host's cookies go to every port of it: kept a working day, not for weeks.
    assert "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    # Behind a TLS-terminating proxy the browser is on HTTPS: the cookie is Secure.
    for proxy in ({"X-Forwarded-Proto": "https"}, {"Forwarded": 'for=10.0.0.1;proto="https"'}):
        status, headers = _status(base_url, f"/?token={TOKEN}", proxy)
        assert status == 303 and "Secure" in headers["Set-Cookie"], proxy
    jar = {"Cookie": cookie.split(";", 1)[0]}
    assert _status(base_url, "/v1/stats", jar)[0] == 200
    # A bearer header, empty or wrong, is what decides: no fallback to the cookie.
    for given in ("Bearer ", "Bearer wrong", f"Bearer {SCRAPE_TOKEN}"):
        assert _status(base_url, "/v1/stats", {**jar, "Authorization": given})[0] == 401
    assert _status(base_url, "/", jar)[0] == 200
    status, headers = _status(base_url, "/?token=wrong", {})
    assert status == 303 and "Set-Cookie" not in headers
    # The scheme is case-insensitive; raw bytes that are not UTF-8 are a 401, not a 500.
    assert _status(base_url, "/v1/stats", {"Authorization": f"bearer {TOKEN}"})[0] == 200
    assert _raw_status(base_url, "/v1/stats", b"Authorization: Bearer \xff\xfe") == 401
    assert _raw_status(base_url, "/v1/stats", b"Cookie: paystream_token=\xff\xfe") == 401
    # PAYSTREAM_METRICS_TOKEN, a scraper's, opens /metrics and nothing else; the operators'
    # token opens /metrics too.
    scraper = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
    assert _status(base_url, "/metrics", scraper)[0] == 200
    assert _status(base_url, "/metrics", BEARER)[0] == 200
    for path in ("/v1/stats", lookup, "/"):
        assert _status(base_url, path, scraper)[0] == 401, path
    # Faust's router pages (every worker, topic and partition) are not served.
    for path in ("/router/", "/router/topics", "/router/nope/"):
        assert _status(base_url, path, BEARER)[0] == 404, path


def _raw_status(base_url: str, path: str, header: bytes) -> int:
    """The status of a request carrying a header no HTTP client library would send."""
    address = urllib.parse.urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        return int(conn.recv(64).split()[1])


async def test_summaries_leave_a_partition_behind_when_it_moves(fleet: Fleet) -> None:
    """A worker's summaries count only the partitions it serves: rows it wrote itself
    stayed in its memory after their partition moved to a worker that joined, and its
    page went on showing (and the fleet's totals summing) those tenants' old figures
    (review finding)."""
    assert not fleet.joined, "the first test of the file: its first worker must be alone"
    async with fleet.dep.client() as client:
        for t in SUMMED:
            out = await client.command("payment.create", t, {**BODY, "payment_id": "p1"})
            assert out.get_type() == "com.paystream.payment.succeeded", out
    workers = await fleet.both()  # half the partitions move to the second
    async with fleet.dep.client() as client:  # each tenant's new owner runs a second payment
        for t in SUMMED:
            out = await client.command("payment.create", t, {**BODY, "payment_id": "p2"})
            assert out.get_type() == "com.paystream.payment.succeeded", out

    def totals() -> dict[str, int]:
        counted: dict[str, int] = {}
        for w in workers:
            for t, s in ((w.stats() or {}).get("summaries") or {}).items():
                if t in SUMMED:  # (not the other tests' tenants)
                    counted[t] = counted.get(t, 0) + sum(s["payments"].values())
        return counted

    def owners() -> dict[str, set[str]]:
        """Which tenants each worker's partitions hold."""
        out = {}
        for name, w in zip(("w1", "w2"), workers, strict=True):
            owned = set((w.stats() or {}).get("worker", {}).get("partitions") or ())
            out[name] = {t for t in SUMMED if fleet.partition(t) in owned}
        return out

    expected = dict.fromkeys(SUMMED, 2)
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: totals() == expected,
            timeout=30,
            what="fleet totals",
            interval=0.2,
        )
    except Exception:
        raise AssertionError(f"fleet totals {totals()}, owners {owners()}") from None


async def test_a_workers_summaries_leave_out_its_standby_copy(fleet: Fleet) -> None:
    """Memory-store workers keep a standby copy of each other's partitions in the same
    dict as their own, filled a thousand changelog records at a time: once a peer's
    tenants had made that many changes, each worker's page listed them too, with stale
    figures (review finding)."""
    first, second = await fleet.both()

    def owned(w: Any) -> set[int]:
        return set(((w.stats() or {}).get("worker") or {}).get("partitions") or ())

    mine = owned(first)
    peers = [t for t in STANDBY if fleet.partition(t) not in mine]
    assert peers and len(peers) < len(STANDBY), (mine, peers)

    def standby_payments() -> float:
        """The payments the first worker's store holds, its own and its peer's (standby)."""
        with first.open("/metrics", timeout=2) as resp:
            text = resp.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "paystream_table_keys"
            for sample in family.samples
            if sample.labels.get("table") == "payments"
        )

    # Before: its own, and part of the standby copy of the first test's payments.
    held_before = await asyncio.to_thread(standby_payments)
    async with fleet.dep.client() as client:
        for _ in range(12):  # 1,200 changes on the peer's partitions
            outs = await asyncio.gather(
                *(client.command("payment.create", peers[i % len(peers)], BODY)
                  for i in range(100))
            )  # fmt: skip
            assert all(o.get_type() == "com.paystream.payment.succeeded" for o in outs)

    def shown(w: Any) -> dict[str, int]:
        summaries = (w.stats() or {}).get("summaries") or {}
        return {t: sum(s["payments"].values()) for t, s in summaries.items()}

    await asyncio.to_thread(
        wait_until,
        lambda: sum(n for t, n in shown(second).items() if t in peers) == 1_200,
        timeout=30,
        what="the owner's summaries",
        interval=0.2,
    )
    # The standby copy arrives in flushes of a thousand records: once it is there,
    # the summaries below have something to leave out. (More than the rest of the first
    # test's payments could add: some of the peer's are in it.)
    await asyncio.to_thread(
        wait_until, lambda: standby_payments() > held_before + 2 * len(SUMMED), timeout=60,
        what="the standby copy", interval=0.2,
    )  # fmt: skip
    assert owned(first) == mine, "a rebalance moved partitions: the test saw nothing"
    assert not set(shown(first)) & set(peers), shown(first)


async def test_every_worker_answers_for_every_tenant(fleet: Fleet) -> None:
    # (Last in the file: the owner hung below may leave the group.)
    first, second = await fleet.both()
    async with fleet.dep.client() as client:
        for t in VIEWED:
            out = await client.command("payment.create", t, {**BODY, "payment_id": "p1"})
            assert out.get_type() == "com.paystream.payment.succeeded", out
    for t in VIEWED:
        answers = [
            await asyncio.to_thread(_get, w.base_url, f"/v1/tenants/{t}/payments/p1")
            for w in (first, second)
        ]
        assert answers[0] == answers[1], (t, answers)
        assert answers[0][0] == 200 and answers[0][1]["amount"] == 700
    missing = await asyncio.to_thread(
        _get, first.base_url, f"/v1/tenants/{VIEWED[0]}/payments/nope"
    )
    assert missing[0] == 404
    _check_the_token_guards_the_views(first.base_url, f"/v1/tenants/{VIEWED[0]}/payments/p1")
    # A tenant's recent outcomes (the dashboard's filter): from its owner, on any worker,
    # its own only.
    for t in VIEWED:
        answers = [
            await asyncio.to_thread(_get, w.base_url, f"/v1/tenants/{t}/outcomes")
            for w in (first, second)
        ]
        assert answers[0] == answers[1], (t, answers)
        status, body = answers[0]
        assert status == 200 and [(e["tenant"], e["entity_id"]) for e in body["recent"]] == [
            (t, "p1")
        ], (t, body)
    await _check_no_tenant_key_opens_the_outcomes(fleet, first.base_url)
    # The owner hung (not dead: the group has not noticed): the lookup is answered
    # within seconds (503, or 200 once the group gave its partitions over), where it
    # waited for aiohttp's default five minutes.
    owned = set((second.stats() or {})["worker"]["partitions"])
    hung = next(t for t in VIEWED if fleet.partition(t) in owned)
    assert second.proc is not None
    os.kill(second.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, _ = await asyncio.to_thread(_get, first.base_url, f"/v1/tenants/{hung}/payments/p1")
        assert status in (200, 503) and time.monotonic() - started < 9
    finally:
        os.kill(second.proc.pid, signal.SIGCONT)
