"""Kill a worker of Stripe tenants between a provider call and its offset commit: no
effect twice at Stripe (localstripe, with Stripe's idempotency contract: tests/fixtures/
localstripe_server.py).

paystream asks nothing of Stripe before a create, a capture or a refund: exactly-once
there rests on Stripe's idempotency keys alone, so every redelivered command must send
the request it sent before, under the same key, byte for byte in its parameters (another
request under a key is refused by Stripe; another key charges again). A recording proxy
between the worker and localstripe SIGKILLs the worker once localstripe has run a chosen
POST and before its answer returns, so that the command is certain to be redelivered
(review h62b): a create, then a capture, then a refund, each killing the worker of the
moment, since a resend under another key shows only for the calls cut (review h62c).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.streams.codec import decode_record
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.test_crash import OutcomeLog, _produce, _wait_for
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
N_PAY = 24  # per tenant: 24 creates (half manual), 12 captures, 24 partial refunds
# The calls cut, one after the other, each killing the worker of the moment: which POSTs,
# and the how-many-th of them (creates go first, then captures and refunds interleaved,
# a capture and two refunds a pair of payments: the refund cut comes well after the
# capture cut).
CUTS: list[tuple[Callable[[str], bool], int]] = [
    (lambda path: path == "/v1/payment_intents", 3 * N_PAY // 2),  # a create
    (lambda path: path.endswith("/capture"), 3 * N_PAY // 4),  # a capture
    (lambda path: path == "/v1/refunds", 5 * N_PAY // 2),  # a refund
]


class KillingProxy:
    """Forwards the workers' Stripe calls to localstripe, on a loop of its own, recording
    each POST (path, Idempotency-Key, status, replayed) and calling ``kill`` once the
    ``nth`` POST whose path the next of ``cuts`` matches has run at localstripe, before
    its answer goes back (``cut``: their places in ``posts``)."""

    def __init__(
        self,
        upstream: str,
        cuts: list[tuple[Callable[[str], bool], int]],
        kill: Callable[[], None],
    ) -> None:
        self.upstream, self._cuts, self._kill = upstream, cuts, kill
        self.posts: list[dict[str, Any]] = []
        self.cut: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        port = started.result(10)
        return f"http://127.0.0.1:{port}"

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower()
            in (
                "authorization",
                "content-type",
                "idempotency-key",
                "stripe-version",
                "stripe-account",
            )
        }
        url = self.upstream + request.path_qs
        async with self._session.request(request.method, url, data=body, headers=headers) as r:
            status, answer = r.status, await r.read()
            replayed = r.headers.get("Idempotent-Replayed") == "true"
        if request.method == "POST":
            key = request.headers.get("Idempotency-Key")
            self.posts.append(
                {"path": request.path, "key": key, "status": status, "replayed": replayed}
            )
            if len(self.cut) < len(self._cuts):
                matches, nth = self._cuts[len(self.cut)]
                seen = sum(1 for post in self.posts if matches(post["path"]))
                if matches(request.path) and seen >= nth:
                    self._kill()
                    self.cut.append(len(self.posts) - 1)
        return web.Response(body=answer, status=status, content_type="application/json")

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def workload(tenants: list[str]) -> list[CloudEvent]:
    """Per tenant: creates (even: manual capture, odd: auto), then a capture of each
    manual one and two partial refunds (300 + 200) of each auto one; tenants interleaved."""
    per: dict[str, list[CloudEvent]] = {}
    for t in tenants:
        creates, follow_ups = [], []
        for j in range(N_PAY):
            pid, manual = f"pay_{j}", j % 2 == 0
            data = {"payment_id": pid, "amount": 1000 + j, "currency": "USD",
                    "payment_method_token": "pm_card_visa",
                    "capture": "manual" if manual else "auto"}  # fmt: skip
            creates.append(build_command("payment.create", t, data))
            if manual:
                follow_ups.append(build_command("payment.capture", t, {"payment_id": pid}))
            else:
                for share in (300, 200):
                    follow_ups.append(
                        build_command("refund.create", t, {"payment_id": pid, "amount": share})
                    )
        per[t] = creates + follow_ups
    return [per[t][i] for i in range(len(per[tenants[0]])) for t in tenants]


def _kind(raw: bytes) -> str:
    key, value, headers = json.loads(raw)
    event = decode_record(key, value.encode(), {k: v.encode() for k, v in headers})
    return event.get_type().removeprefix("com.paystream.")


async def _list_all(base: str, api_key: str, resource: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as s:
        while True:
            query = {"limit": "100"} | ({"starting_after": after} if after else {})
            async with s.get(f"{base}/v1/{resource}", params=query) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            out += page["data"]
            if not page.get("has_more") or not page["data"]:
                return out
            after = page["data"][-1]["id"]


async def test_sigkill_between_a_stripe_call_and_its_commit_charges_nothing_twice(
    deployment_factory: Any, localstripe_url: str
) -> None:
    workers: list[Any] = []  # the last one started is the one the proxy kills
    proxy = KillingProxy(localstripe_url, CUTS, lambda: workers[-1].kill(signal.SIGKILL))
    proxy_url = proxy.start()
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=proxy_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    run = uuid.uuid4().hex[:6]
    tenants = [f"sx{run}{i}" for i in range(3)]
    api_keys = {t: f"sk_test_{t}_{uuid.uuid4().hex}" for t in tenants}
    keyring = MasterKeyring(MASTER)
    volume = sum(1000 + j for j in range(N_PAY))
    limits = TenantLimits(commands_per_second=1, burst=60, daily_payment_volume={"USD": volume})
    await dep.add_tenants(
        *(
            Tenant(
                tenant_id=t,
                gateway="stripe",
                limits=limits,
                secrets={"api_key": seal_secret(keyring, t, "api_key", api_keys[t])},
            )
            for t in tenants
        )
    )
    commands = workload(tenants)
    assert len(commands) == 3 * 2 * N_PAY + 3 * N_PAY // 2
    ids = {c.get_id() for c in commands}
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    workers.append(dep.worker("w0"))
    workers[0].start()
    try:
        await asyncio.to_thread(workers[0].wait_ready, tenants, partitions=dep.settings.partitions)
        producing = asyncio.create_task(_produce(dep, commands, rate=60))
        for n in range(1, len(CUTS) + 1):
            await _wait_for(lambda n=n: len(proxy.cut) >= n, 120, f"kill {n} after a call")
            workers.append(dep.worker(f"w{n}"))
            workers[-1].start()
        await producing
        await _wait_for(lambda: ids <= log.by_command.keys(), 180, "every outcome")
        # One outcome per command (a redelivery's is the same event), none a refusal.
        assert all(len(log.by_command[i]) == 1 for i in ids)
        kinds = Counter(_kind(raw) for cause, _, raw in log.records if cause in ids)
        assert set(kinds) <= {"payment.authorized", "payment.succeeded", "refund.succeeded"}, kinds

        # Each call a kill cut off (a create, a capture, a refund) was sent again under its
        # key and answered as a replay.
        paths = [proxy.posts[at]["path"] for at in proxy.cut]
        assert [matches(path) for (matches, _), path in zip(CUTS, paths, strict=True)] == [
            True
        ] * len(CUTS), paths
        for at in proxy.cut:
            cut = proxy.posts[at]
            again = [p for p in proxy.posts[at + 1 :] if p["key"] == cut["key"]]
            assert again and all(p["replayed"] for p in again), (cut, again)
        # No request went under a key with other parameters (Stripe refuses it 400).
        refused = [p for p in proxy.posts if p["status"] == 400]
        assert refused == [], refused[:5]

        # What Stripe holds: one PaymentIntent per payment, succeeded for its amount; one
        # refund per paystream refund; 500 refunded of each auto payment, none of manual.
        intents = await _list_all(localstripe_url, api_keys[tenants[0]], "payment_intents")
        refunds = await _list_all(localstripe_url, api_keys[tenants[0]], "refunds")
        by_payment: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pi in intents:
            ref = (pi.get("metadata") or {}).get("paystream_payment", "")
            if ref.split(":")[0] in tenants:
                by_payment[ref].append(pi)
        assert len(by_payment) == 3 * N_PAY
        twice = {ref: [pi["id"] for pi in pis] for ref, pis in by_payment.items() if len(pis) > 1}
        assert twice == {}
        payment_of = {pis[0]["id"]: ref for ref, pis in by_payment.items()}
        refunded: Counter[str] = Counter()
        per_refund: Counter[str] = Counter()
        for refund in refunds:
            if refund.get("payment_intent") in payment_of:
                refunded[payment_of[refund["payment_intent"]]] += refund["amount"]
                per_refund[(refund.get("metadata") or {}).get("paystream_refund", "?")] += 1
        assert len(per_refund) == 3 * N_PAY and set(per_refund.values()) == {1}
        for ref, (pi,) in by_payment.items():
            j = int(ref.rsplit("_", 1)[1])
            assert (pi["status"], pi["amount"]) == ("succeeded", 1000 + j), (ref, pi)
            assert refunded[ref] == (0 if j % 2 == 0 else 500), (ref, refunded[ref])
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for worker in workers:
            worker.stop()
        proxy.stop()
