"""Kill a worker of Paddle tenants between a Paddle create and its offset commit: nothing
made twice at Paddle (the tests' FAKE Paddle, tests/fixtures/paddle_fake.py, which, as
Paddle, keeps no idempotency keys: a create sent again makes a second object).

The command is redelivered to the next worker with nothing of the first run kept but
Paddle's object. The gateway looks for it before creating again (docs/paddle.md,
"Exactly once without idempotency keys"): a customer by its email (Paddle refuses a
second one with it, and the one it holds carries the request's tag), a transaction among
the tenant's transactions made since the command's record was appended (the pipeline's
REQUEST_SENT_SINCE). As tests/e2e/test_square_crash.py: a proxy between the workers and
the fake SIGKILLs the worker of the moment once the fake has made the objects and before
their answers return (tests/e2e/crash_harness.py: the answers of the calls in flight
held until it holds one of each cut, or the worker stops calling: a customer command
makes its tenant's run serial, so a kill cuts the customer create alone as a rule, the
next one or two the transactions). Cut: a customer create, a transaction without a
customer, one of a customer. Then: one outcome per
command, one object per command at the fake (its ledger of what was made), and
paystream's records naming them. Two tenants, of two sellers.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.crash_harness import Cut, KillingProxy, Post, decode_outcome, through_the_cuts
from tests.e2e.test_crash import _payment
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY, FAKE_PADDLE_OTHER_API_KEY
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
SELLERS = [(FAKE_PADDLE_API_KEY, "seller-1"), (FAKE_PADDLE_OTHER_API_KEY, "seller-2")]
N_CUS = 6  # per tenant
N_PAY = 16  # per tenant: even ones of a customer, odd ones without
# The request headers a Paddle call is made of (the proxy forwards only these).
PADDLE_HEADERS = ("authorization", "content-type", "paddle-version", "user-agent")
# The call timeout (10 s by default): a create's in-flight key, which the next worker
# waits out before running a killed worker's create again, is held three of them (the
# call, then as long again for Paddle to land it). At 10 s the last kill's keys held
# the run ~20 s past the cuts; the proxy kills at most HOLD_MAX after it first holds an
# answer, well inside the timeout, so a cut call is still in flight when its worker dies.
GATEWAY_TIMEOUT_S = 6
HOLD_MAX_S = 3.0


def _created(path: str, customer: bool | None = None) -> Callable[[Post], bool]:
    """A create the fake answered 201 (a transaction of a customer, or without one)."""

    def matches(post: Post) -> bool:
        if post["path"] != path or post["status"] != 201:
            return False
        return customer is None or ("customer_id" in post["body"]) == customer

    return matches


CUTS: list[Cut] = [
    (_created("/customers"), N_CUS),  # a customer, mid-way through both tenants'
    (_created("/transactions", customer=False), N_PAY // 2),  # a payment without one
    (_created("/transactions", customer=True), 3 * N_PAY // 4),  # a customer's payment
]


def _tag(post: Post) -> str | None:
    custom = post["body"].get("custom_data")
    tag = custom.get("paystream_request") if isinstance(custom, dict) else None
    return tag if isinstance(tag, str) else None


def workload(tenants: list[str], run: str) -> list[CloudEvent]:
    """Per tenant: its customers, then its payments (even ones of a customer); tenants
    interleaved."""
    per: dict[str, list[CloudEvent]] = {}
    for t in tenants:
        commands = [
            build_command(
                "customer.create",
                t,
                {"customer_id": f"cus_{j}", "email": f"{t}-{j}-{run}@example.com"},
            )
            for j in range(N_CUS)
        ]
        for j in range(N_PAY):
            data: dict[str, Any] = {
                "payment_id": f"pay_{j}",
                "amount": 1000 + j,
                "currency": "USD",
                "payment_method_token": "checkout",
            }
            if j % 2 == 0:
                data["customer_id"] = f"cus_{j // 2 % N_CUS}"
            commands.append(build_command("payment.create", t, data))
        per[t] = commands
    return [per[t][i] for i in range(len(per[tenants[0]])) for t in tenants]


async def _effects(paddle_url: str) -> dict[str, list[dict[str, Any]]]:
    async with aiohttp.ClientSession() as s, s.get(f"{paddle_url}/_fake/effects") as r:
        return dict(await r.json())


async def test_sigkill_between_a_paddle_create_and_its_commit_makes_nothing_twice(
    deployment_factory: Any, paddle_url: str
) -> None:
    proxy = KillingProxy(paddle_url, CUTS, forward=PADDLE_HEADERS, key_of=_tag, hold_max=HOLD_MAX_S)
    proxy_url = proxy.start()
    dep: Deployment = await deployment_factory(
        paystream_paddle_api_base=proxy_url,
        paystream_gateway_timeout_seconds=str(GATEWAY_TIMEOUT_S),
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    run = uuid.uuid4().hex[:6]
    tenants = [f"pd{run}{i}" for i in range(len(SELLERS))]
    seller_of = dict(zip(tenants, SELLERS, strict=True))
    keyring = MasterKeyring(MASTER)
    commands = workload(tenants, run)
    per_tenant = len(commands) // len(tenants)
    limits = TenantLimits(
        commands_per_second=1,
        burst=per_tenant,
        daily_payment_volume={"USD": sum(1000 + j for j in range(N_PAY))},
    )
    await dep.add_tenants(
        *(
            Tenant(
                tenant_id=t,
                gateway="paddle",
                limits=limits,
                secrets={"api_key": seal_secret(keyring, t, "api_key", seller_of[t][0])},
            )
            for t in tenants
        )
    )
    ids = {c.get_id() for c in commands}
    before = await _effects(paddle_url)
    async with through_the_cuts(dep, proxy, tenants, commands, each_cut_within=180) as log:
        last = proxy.workers[-1]
        await asyncio.to_thread(last.wait_ready, tenants, partitions=dep.settings.partitions)

        # 1. One outcome per command, none a refusal.
        assert all(len(log.by_command[i]) == 1 for i in ids), [
            (i, log.by_command[i]) for i in ids if len(log.by_command[i]) != 1
        ]
        kinds = Counter(
            decode_outcome(raw).get_type().removeprefix("com.paystream.")
            for cause, _, raw in log.records
            if cause in ids
        )
        refused = [
            decode_outcome(r).get_data()
            for c, _, r in log.records
            if c in ids and b"command.rejected" in r
        ]
        assert set(kinds) == {"customer.created", "payment.requires_action"}, (kinds, refused)

        # 2. Each create cut off was run again and found what the first try made: a
        # customer's later POSTs refused for its email (409: one per worker that ran it
        # again before a commit; a later cut may kill the next one first), a transaction
        # not POSTed again at all.
        cuts = [proxy.cut[n] for n in range(len(CUTS))]
        posts = [proxy.posts[at] for at in cuts]
        assert [m(p) for (m, _), p in zip(CUTS, posts, strict=True)] == [True] * len(CUTS)
        # Each kill came while its cut calls were in flight (well inside the worker's call
        # timeout): a call that had timed out would have been retried in-process instead.
        assert max(proxy.kill_after) < GATEWAY_TIMEOUT_S - 1, proxy.kill_after
        cus_cut, *txn_cuts = cuts
        email = proxy.posts[cus_cut]["body"]["email"]
        again = [p["status"] for p in proxy.posts[cus_cut + 1 :] if p["body"].get("email") == email]
        assert again and set(again) == {409}, again
        for at in txn_cuts:
            tag = proxy.posts[at]["key"]
            assert tag and [p for p in proxy.posts[at + 1 :] if p["key"] == tag] == []

        # 3. What the fake made (its ledger): one customer per customer.create, one
        # transaction per payment.create, each paystream's payment's own.
        after = await _effects(paddle_url)
        for t in tenants:
            seller = seller_of[t][1]
            made = after[seller][len(before.get(seller, [])) :]
            customers = [e for e in made if e["kind"] == "customer"]
            transactions = [e for e in made if e["kind"] == "transaction"]
            assert len(customers) == N_CUS, customers
            assert len(transactions) == N_PAY, Counter(e["amount"] for e in transactions)
            states = [
                await asyncio.to_thread(_payment, last.base_url, t, f"pay_{j}")
                for j in range(N_PAY)
            ]
            assert {s["provider_payment_id"] for s in states} == {e["id"] for e in transactions}
            assert all(s["status"] == "requires_action" for s in states), states
        print(f"{proxy.kills} kill(s) cut posts {cuts} of {len(proxy.posts)}; {len(ids)} commands")
