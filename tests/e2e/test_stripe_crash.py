"""Kill a worker of Stripe tenants between a provider call and its offset commit: no
effect twice at Stripe (localstripe, with Stripe's idempotency contract: tests/fixtures/
localstripe_server.py).

paystream asks nothing of Stripe before a create, a capture or a refund: exactly-once
there rests on Stripe's idempotency keys alone, so every redelivered command must send
the request it sent before, under the same key, byte for byte in its parameters (another
request under a key is refused by Stripe; another key charges again). A recording proxy
between the worker and localstripe SIGKILLs the worker once localstripe has run a chosen
POST and before its answer returns, so that the command is certain to be redelivered
(review h62b): a create, a capture and a refund, since a resend under another key shows
only for the calls cut (review h62c). The worker runs them side by side (other tenants,
other payments: tests/e2e/crash_harness.py), so that one kill mostly cuts all three.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.crash_harness import Cut, KillingProxy, outcome_kind, staggered, through_the_cuts
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
N_PAY = 12  # per tenant: 12 creates (half manual), 6 captures, 12 partial refunds
# The calls cut, each killing the worker of the moment (one kill for those in flight
# together): which POSTs, and the how-many-th of them (a quarter of the way through each
# kind, where the worker runs them all: of 3 tenants' N_PAY creates, N_PAY // 2 captures
# and N_PAY refunds).
CUTS: list[Cut] = [
    (lambda post: post["path"] == "/v1/payment_intents", 3 * N_PAY // 4),  # a create
    (lambda post: post["path"].endswith("/capture"), 3 * N_PAY // 8),  # a capture
    (lambda post: post["path"] == "/v1/refunds", 3 * N_PAY // 4),  # a refund
]
# The request headers a Stripe call is made of (the proxy forwards only these).
STRIPE_HEADERS = ("authorization", "content-type", "idempotency-key", "stripe-version",
                  "stripe-account")  # fmt: skip


def _replayed(post: dict[str, Any]) -> bool:
    """Whether Stripe answered the POST as a replay of its key's first request."""
    return bool(post["answer_headers"].get("Idempotent-Replayed") == "true")


def workload(tenants: list[str]) -> list[CloudEvent]:
    """Per tenant: creates (even: manual capture, odd: auto), a capture of each manual
    one and two partial refunds (300 + 200) of each auto one, ``staggered``; tenants
    interleaved."""
    per: dict[str, list[CloudEvent]] = {}
    for t in tenants:
        payments = []
        for j in range(N_PAY):
            pid, manual = f"pay_{j}", j % 2 == 0
            data = {"payment_id": pid, "amount": 1000 + j, "currency": "USD",
                    "payment_method_token": "pm_card_visa",
                    "capture": "manual" if manual else "auto"}  # fmt: skip
            payment = [build_command("payment.create", t, data)]
            if manual:
                payment.append(build_command("payment.capture", t, {"payment_id": pid}))
            else:
                for share in (300, 200):
                    payment.append(
                        build_command("refund.create", t, {"payment_id": pid, "amount": share})
                    )
            payments.append(payment)
        per[t] = staggered(payments)
    return [per[t][i] for i in range(len(per[tenants[0]])) for t in tenants]


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
    proxy = KillingProxy(
        localstripe_url,
        CUTS,
        forward=STRIPE_HEADERS,
        key_of=lambda post: post["headers"].get("Idempotency-Key"),
    )
    proxy_url = proxy.start()
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=proxy_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    run = uuid.uuid4().hex[:6]
    tenants = [f"sx{run}{i}" for i in range(3)]
    api_keys = {t: f"sk_test_{t}_{uuid.uuid4().hex}" for t in tenants}
    keyring = MasterKeyring(MASTER)
    commands = workload(tenants)
    per_tenant = len(commands) // len(tenants)
    assert per_tenant == 2 * N_PAY + N_PAY // 2
    # Limits each tenant's commands use up exactly: a command counted twice after a crash
    # would be rejected (and a rejection fails the test below).
    volume = sum(1000 + j for j in range(N_PAY))
    limits = TenantLimits(
        commands_per_second=1, burst=per_tenant, daily_payment_volume={"USD": volume}
    )
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
    ids = {c.get_id() for c in commands}
    async with through_the_cuts(dep, proxy, tenants, commands, each_cut_within=120) as log:
        # One outcome per command (a redelivery's is the same event), none a refusal.
        assert all(len(log.by_command[i]) == 1 for i in ids)
        kinds = Counter(outcome_kind(raw) for cause, _, raw in log.records if cause in ids)
        assert set(kinds) <= {"payment.authorized", "payment.succeeded", "refund.succeeded"}, kinds

        # Each call a kill cut off (a create, a capture, a refund) was sent again under its
        # key and answered as a replay.
        cuts = [proxy.cut[n] for n in range(len(CUTS))]
        posts = [proxy.posts[at] for at in cuts]
        assert [matches(post) for (matches, _), post in zip(CUTS, posts, strict=True)] == [
            True
        ] * len(CUTS), [post["path"] for post in posts]
        for at in cuts:
            cut = proxy.posts[at]
            again = [p for p in proxy.posts[at + 1 :] if p["key"] == cut["key"]]
            assert again and all(_replayed(p) for p in again), (cut, again)
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
        print(f"{proxy.kills} kill(s) cut posts {cuts} of {len(proxy.posts)}")
