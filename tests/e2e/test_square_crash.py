"""Kill a worker of Square tenants between a Square call and its offset commit: no effect
twice at Square (the tests' FAKE Square, tests/fixtures/square_fake.py, which keeps
Square's idempotency contract: keys in the body, the first successful answer replayed,
another body under a key 400 IDEMPOTENCY_KEY_REUSED).

Square keys CreatePayment and RefundPayment, but not CompletePayment (a capture): the
gateway reads the payment first and answers a completed one as it is. A refund without
an amount is "read what is left, then refund it", under the command's key; sent again
after it went through, nothing is left and the gateway tries the amounts refunded on the
payment under the key until Square replays the one it ran. Those are where a command
redelivered after a crash could move money twice or leave the wrong state.

As tests/e2e/test_stripe_crash.py: a proxy between the workers and the fake SIGKILLs the
worker of the moment once the fake has run a chosen POST and before its answer returns
(so the command is certain to be redelivered): a CreatePayment, a CompletePayment, a
RefundPayment with an amount, a RefundPayment of the rest, which the worker runs side by
side (one kill mostly cuts all four: tests/e2e/crash_harness.py). Then: one outcome per
command (duplicates byte-identical), each payment made and completed once and each
refund made once at the fake (its test-only ledger of effects), and paystream's payments
(captured, refunded) as the fake holds them. Three tenants: two at two locations of one
seller, one at another seller.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import Counter, defaultdict
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
from tests.e2e.crash_harness import (
    Cut,
    KillingProxy,
    Post,
    decode_outcome,
    staggered,
    through_the_cuts,
)
from tests.e2e.test_crash import _payment
from tests.fixtures.pipeline import Deployment
from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_LOCATION_2,
    FAKE_SQUARE_MERCHANT,
    FAKE_SQUARE_OTHER_LOCATION,
    FAKE_SQUARE_OTHER_MERCHANT,
    FAKE_SQUARE_OTHER_TOKEN,
    FAKE_SQUARE_TOKEN,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
# The tenants' sellers and locations: two locations of one seller, and another seller.
SELLERS = [
    (FAKE_SQUARE_TOKEN, FAKE_SQUARE_LOCATION, FAKE_SQUARE_MERCHANT),
    (FAKE_SQUARE_TOKEN, FAKE_SQUARE_LOCATION_2, FAKE_SQUARE_MERCHANT),
    (FAKE_SQUARE_OTHER_TOKEN, FAKE_SQUARE_OTHER_LOCATION, FAKE_SQUARE_OTHER_MERCHANT),
]
N_PAY = 8  # per tenant (a multiple of 4): see workload
SHARES = (300, 200)  # the refunds with an amount (a refund of the rest is never one)


def _create(path: str, body: dict[str, Any]) -> bool:
    return path == "/v2/payments"


def _complete(path: str, body: dict[str, Any]) -> bool:
    return path.startswith("/v2/payments/") and path.endswith("/complete")


def _refund_amount(path: str, body: dict[str, Any]) -> bool:
    return path == "/v2/refunds" and body.get("amount_money", {}).get("amount") in SHARES


def _refund_rest(path: str, body: dict[str, Any]) -> bool:
    return path == "/v2/refunds" and body.get("amount_money", {}).get("amount") not in SHARES


def _succeeded(matches: Callable[[str, dict[str, Any]], bool]) -> Callable[[Post], bool]:
    """A POST the fake answered 2xx that ``matches`` (its path and body)."""
    return lambda post: post["status"] < 300 and matches(post["path"], post["body"])


# The calls cut, each killing the worker of the moment (one kill for those in flight
# together): which POSTs, and the how-many-th of them, a quarter of the way through each
# kind, where the worker runs them all (counted over every POST the fake answered 2xx,
# retries too; per tenant: 8 creates, 4 completes, 8 refunds with an amount, 4 refunds
# of the rest). Never a refused one: a rest refund's try of another amount answered
# IDEMPOTENCY_KEY_REUSED, or a 5xx, spends no key at the fake, so the key's next answer
# was not the cut one's and the replay check below failed (a flake: review h73u).
CUTS: list[Cut] = [
    (_succeeded(_create), 3 * N_PAY // 4),  # a create
    (_succeeded(_complete), 3 * N_PAY // 8),  # a capture (keyless)
    (_succeeded(_refund_amount), 3 * N_PAY // 8),  # a refund of 300 or 200
    (_succeeded(_refund_rest), 3 * N_PAY // 8),  # a refund of what is left
]
# The request headers a Square call is made of (the proxy forwards only these).
SQUARE_HEADERS = ("authorization", "content-type", "accept", "square-version")


def expected(j: int) -> tuple[bool, int, int]:
    """(manual, captured, refunded) of ``pay_j``: j % 4 == 0 manual, captured, refunded
    whole by a refund of the rest; 2 manual, captured, 300 refunded; 1 auto, 300 then
    the rest refunded; 3 auto, 300 and 200 refunded."""
    amount = 1000 + j
    return {0: (True, amount, amount), 1: (False, amount, amount),
            2: (True, amount, 300), 3: (False, amount, 500)}[j % 4]  # fmt: skip


def workload(tenants: list[str]) -> list[CloudEvent]:
    """Per tenant: each payment's create and follow-ups (a capture of each manual one,
    refunds as ``expected`` has them), ``staggered``; tenants interleaved."""
    per: dict[str, list[CloudEvent]] = {}
    for t in tenants:
        payments = []
        for j in range(N_PAY):
            pid, manual = f"pay_{j}", j % 2 == 0
            data = {"payment_id": pid, "amount": 1000 + j, "currency": "USD",
                    "payment_method_token": "cnon:card-nonce-ok",
                    "capture": "manual" if manual else "auto"}  # fmt: skip
            payment = [build_command("payment.create", t, data)]
            refund = {"payment_id": pid}
            if manual:
                payment.append(build_command("payment.capture", t, {"payment_id": pid}))
            if j % 4 != 0:
                payment.append(build_command("refund.create", t, refund | {"amount": 300}))
            if j % 4 in (0, 1):  # the rest (no amount)
                payment.append(build_command("refund.create", t, refund))
            elif j % 4 == 3:
                payment.append(build_command("refund.create", t, refund | {"amount": 200}))
            payments.append(payment)
        per[t] = staggered(payments)
    return [per[t][i] for i in range(len(per[tenants[0]])) for t in tenants]


async def _fake(square_url: str, path: str, token: str | None = None) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=auth) as s, s.get(f"{square_url}{path}") as r:
        assert r.status == 200, (path, await r.text())
        return dict(await r.json())


async def test_sigkill_between_a_square_call_and_its_commit_moves_nothing_twice(
    deployment_factory: Any, square_url: str
) -> None:
    proxy = KillingProxy(
        square_url,
        CUTS,
        forward=SQUARE_HEADERS,
        key_of=lambda post: post["body"].get("idempotency_key"),
    )
    proxy_url = proxy.start()
    dep: Deployment = await deployment_factory(
        paystream_square_api_base=proxy_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    run = uuid.uuid4().hex[:6]
    tenants = [f"sq{run}{i}" for i in range(len(SELLERS))]
    seller_of = dict(zip(tenants, SELLERS, strict=True))
    keyring = MasterKeyring(MASTER)
    commands = workload(tenants)
    per_tenant = len(commands) // len(tenants)
    volume = sum(1000 + j for j in range(N_PAY))
    limits = TenantLimits(
        commands_per_second=1, burst=per_tenant, daily_payment_volume={"USD": volume}
    )
    await dep.add_tenants(
        *(
            Tenant(
                tenant_id=t,
                gateway="square",
                gateway_options={"location_id": seller_of[t][1]},
                limits=limits,
                secrets={"access_token": seal_secret(keyring, t, "access_token", seller_of[t][0])},
            )
            for t in tenants
        )
    )
    assert per_tenant == N_PAY + N_PAY // 2 + N_PAY + N_PAY // 2
    ids = {c.get_id() for c in commands}
    # What the fake held before (the session's fake is shared with other tests).
    before = await _fake(square_url, "/_fake/effects")
    async with through_the_cuts(dep, proxy, tenants, commands, each_cut_within=180) as log:
        last = proxy.workers[-1]
        await asyncio.to_thread(last.wait_ready, tenants, partitions=dep.settings.partitions)

        # 1. One outcome per command (a redelivery's is the same event, byte for byte),
        # none a refusal.
        assert all(len(log.by_command[i]) == 1 for i in ids), [
            (i, log.by_command[i]) for i in ids if len(log.by_command[i]) != 1
        ]
        raw_by_event: dict[str, set[bytes]] = defaultdict(set)
        for cause, event_id, raw in log.records:
            if cause in ids:
                raw_by_event[event_id].add(raw)
        differ = {e: [decode_outcome(r).get_data() for r in v] for e, v in raw_by_event.items()
                  if len(v) > 1}  # fmt: skip
        assert differ == {}, differ
        kinds = Counter(
            decode_outcome(raw).get_type().removeprefix("com.paystream.")
            for cause, _, raw in log.records
            if cause in ids
        )
        by_id = {c.get_id(): c for c in commands}
        rejected = [
            (
                str(by_id[c].get_extension("tenantid")),
                by_id[c].get_data(),
                decode_outcome(r).get_data(),
            )
            for c, _, r in log.records
            if c in ids and b"command.rejected" in r
        ]
        assert set(kinds) <= {"payment.authorized", "payment.succeeded", "refund.succeeded"}, (
            kinds,
            rejected,
        )

        # 2. Each call cut off was sent again (a create and the refunds under their keys,
        # answered as the fake answered the first); none refused for its key.
        cuts = [proxy.cut[n] for n in range(len(CUTS))]
        posts = [proxy.posts[at] for at in cuts]
        assert [m(p) for (m, _), p in zip(CUTS, posts, strict=True)] == [True] * len(CUTS), posts
        for at in cuts:
            cut = proxy.posts[at]
            if cut["key"] is None:
                continue  # (CompletePayment: keyless, read back instead)
            again = [p for p in proxy.posts[at + 1 :] if p["key"] == cut["key"] and
                     p["status"] == 200]  # fmt: skip
            assert again and all(p["answer"] == cut["answer"] for p in again), (cut, again)
        # A refused key only ever where the gateway tries a rest refund's amounts.
        reused = [p for p in proxy.posts if b"IDEMPOTENCY_KEY_REUSED" in p["answer"]]
        assert all(_refund_rest(p["path"], {}) for p in reused), reused[:3]

        # 3. What the fake did (its ledger): one payment per paystream payment, each
        # manual one completed once, each refund made once and never beyond the payment.
        after = await _fake(square_url, "/_fake/effects")
        effects = [
            e for merchant, done in after.items() for e in done[len(before.get(merchant, [])) :]
        ]
        by_location = {seller_of[t][1]: t for t in tenants}
        states: dict[str, dict[str, Any]] = {}
        for t in tenants:
            for j in range(N_PAY):
                states[f"{t}/pay_{j}"] = await asyncio.to_thread(
                    _payment, last.base_url, t, f"pay_{j}"
                )
        ours = {s["provider_payment_id"]: ref for ref, s in states.items()}
        assert len(ours) == len(states)
        made: Counter[str] = Counter()
        completed: Counter[str] = Counter()
        refunds: dict[str, list[int]] = defaultdict(list)
        for e in effects:
            ref = ours.get(e["payment_id"])
            assert ref is not None, ("an effect on no payment of paystream's", e)
            assert by_location[e["location_id"]] == ref.split("/")[0], e
            if e["kind"] == "payment":
                made[ref] += 1
            elif e["kind"] == "complete":
                completed[ref] += 1
            else:
                assert e["kind"] == "refund", e
                refunds[ref].append(e["amount"])
        assert set(made.values()) == {1} and len(made) == len(states), made
        wrong: list[Any] = []  # (the payment, what is wrong, and how)
        for ref, state in states.items():
            t, pid = ref.split("/")
            j = int(pid.rsplit("_", 1)[1])
            manual, captured, refunded = expected(j)
            if completed[ref] != (1 if manual else 0):
                wrong.append((ref, "completed", completed[ref]))
            want = {0: [1000 + j], 1: [300, 700 + j], 2: [300], 3: [300, 200]}[j % 4]
            if refunds[ref] != want:
                wrong.append((ref, "refunds at the fake", refunds[ref], want))
            # 4. paystream's table state is the fake's, and the replay-free reference.
            token = seller_of[t][0]
            square = (await _fake(square_url, f"/v2/payments/{state['provider_payment_id']}",
                                  token))["payment"]  # fmt: skip
            held = (
                square["status"],
                square["amount_money"]["amount"],
                (square.get("refunded_money") or {}).get("amount", 0),
            )
            if held != ("COMPLETED", captured, refunded):
                wrong.append((ref, "at the fake", held, (captured, refunded)))
            if (state["status"], state["amount_captured"], state["amount_refunded"]) != (
                "succeeded",
                *held[1:],
            ):
                wrong.append((ref, "paystream's table", state, held))
        assert wrong == [], wrong
        print(f"{proxy.kills} kill(s) cut posts {cuts} of {len(proxy.posts)}; {len(ids)} commands")
