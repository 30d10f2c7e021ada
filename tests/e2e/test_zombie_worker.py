"""A zombie worker (review h61c): frozen (SIGSTOP) with a batch in hand past the session
timeout, its partitions taken over by the other worker of the group, which goes on with
later commands for the same payments; then thawed (SIGCONT). Nothing of its late work may
change what a replay-free run leaves behind: provider effects, outcomes, table state (as
a recovery from the changelogs rebuilds it). Before the membership lease
(agents/membership.py) the thawed worker delivered its batch, by its agent or by the
hand-over hook, and the recovered tables lost the refund and undercounted the day's
volume, so that a payment over the quota was authorised."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.devstack._process import wait_until
from paystream.settings import CloudEventsMode
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import decode_record, encode_event
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.e2e.test_crash import OutcomeLog, _payment, _wait_for, _wait_split, provider_effects
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _outcome(log: OutcomeLog, cid: str) -> Any:
    raws = {r for c, _, r in log.records if c == cid}
    assert raws, cid
    _key, v, h = json.loads(sorted(raws)[0])
    return decode_record(None, v.encode(), {a: b.encode() for a, b in h})


def _view(url: str, tenant: str, pid: str) -> tuple[Any, Any, Any]:
    s = _payment(url, tenant, pid)
    return (s["status"], s["amount_captured"], s["amount_refunded"])


# What the thawed worker logs of the batch it had in hand (agents/commands.py).
HELD_BACK = re.compile(r"batch (of \d+ commands|in hand)[^\n]* not delivered")

# Thawed, the worker's batch was delivered by the hand-over hook (its heartbeat refused
# first), or by its agent before its heartbeat thread had run: (provider latency ms,
# freeze after s, gateway timeout s) for each.
CASES = {
    "delivered-by-the-hand-over": (1000, 0.5, "10"),
    "delivered-by-the-agent": (2000, 3.0, "60"),
}


async def test_zombie_worker_changes_nothing(deployment_factory: Any) -> None:
    """Both cases side by side, each on a deployment (and workers) of its own: most of a
    case is waiting (group joins, the session timeout), and every check names its case."""
    results = await asyncio.gather(
        *(_zombie_case(deployment_factory, *case) for case in CASES.values()),
        return_exceptions=True,
    )
    failed = [
        f"[{name}] {type(r).__name__}: {r}"
        for name, r in zip(CASES, results, strict=True)
        if r is not None
    ]
    assert not failed, "\n\n".join(failed)


async def _zombie_case(
    deployment_factory: Any, latency_ms: int, freeze_after: float, gateway_timeout: str
) -> None:
    dep: Deployment = await deployment_factory(
        paystream_table_store="memory://", paystream_gateway_timeout_seconds=gateway_timeout
    )
    n = dep.settings.partitions
    tag = os.urandom(3).hex()
    candidates = [f"zombie-{tag}-{i}" for i in range(12)]
    limits = TenantLimits(daily_payment_volume={"USD": 3000})
    await dep.add_tenants(
        *(
            Tenant(tenant_id=t, limits=limits, gateway_options={"latency_ms": latency_ms})
            for t in candidates
        )
    )
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    a, b, c = dep.worker("wA"), dep.worker("wB"), dep.worker("wC")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(dep.settings.require_broker()))
    await producer.start()

    async def send(*cmds: CloudEvent) -> list[str]:
        for cmd in cmds:
            rec = encode_event(
                cmd, str(cmd.get_extension("tenantid")).encode(), CloudEventsMode.BINARY
            )
            await producer.send_and_wait(
                dep.settings.commands_topic, rec.value, key=rec.key, headers=list(rec.headers)
            )
        return [c.get_id() for c in cmds]

    async def answered(ids: list[str], timeout: float = 60) -> None:
        await _wait_for(lambda: set(ids) <= log.by_command.keys(), timeout, f"outcomes of {ids}")

    def typ(cid: str) -> tuple[str, Any]:
        o = _outcome(log, cid)
        data = o.get_data() or {}
        return (o.get_type().removeprefix("com.paystream."), data.get("reason") or data.get("code"))

    try:
        # (Off the event loop, as every blocking call here: the other case runs on it.)
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        await asyncio.to_thread(_wait_split, [a, b], candidates, n)
        a_parts = set((await asyncio.to_thread(a.stats) or {})["worker"]["partitions"])
        t = next(
            x
            for x in candidates
            if DefaultPartitioner()(x.encode(), list(range(n)), list(range(n))) in a_parts
        )

        def create(pid: str) -> CloudEvent:
            return build_command(
                "payment.create",
                t,
                {"payment_id": pid, "amount": 1000, "currency": "USD",
                 "payment_method_token": "pm_card_visa", "capture": "manual"},
            )  # fmt: skip

        # 0. pay_1 authorised, by A (its owner)
        c0 = await send(create("pay_1"))
        await answered(c0)
        # 1. A takes create pay_2 + capture pay_1 and is frozen inside the (slow) provider call
        c1 = await send(
            create("pay_2"), build_command("payment.capture", t, {"payment_id": "pay_1"})
        )
        await asyncio.sleep(freeze_after)
        os.killpg(a.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        # 2. B takes all partitions over, redoes A's batch, then goes on
        await asyncio.to_thread(
            wait_until,
            lambda: len((b.stats() or {}).get("worker", {}).get("partitions") or ()) == n,
            timeout=90, what="B owns every partition", interval=0.2,
        )  # fmt: skip
        took_over = time.monotonic() - frozen_at
        await answered(c1, 90)
        c2 = await send(
            build_command("refund.create", t, {"payment_id": "pay_1", "amount": 300}),
            create("pay_3"),
        )
        await answered(c2, 60)
        before = {
            p: await asyncio.to_thread(_view, b.base_url, t, p) for p in ("pay_1", "pay_2", "pay_3")
        }
        frozen_for = time.monotonic() - frozen_at
        # 3. thaw A: once it has rejoined (B gives partitions back), its batch in hand
        # was delivered or given up (the hand-over comes before the rejoin)
        os.killpg(a.proc.pid, signal.SIGCONT)
        await asyncio.to_thread(
            wait_until,
            lambda: len((b.stats() or {}).get("worker", {}).get("partitions") or ()) < n,
            timeout=60, what="A rejoined the group", interval=0.2,
        )  # fmt: skip
        a_alive = a.proc.poll() is None
        # 4. restart: a fresh worker recovers every table from the changelogs (A and B
        # stopped side by side: the group is left empty either way)
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
        await asyncio.to_thread(c.start)
        await asyncio.to_thread(c.wait_ready, [t], partitions=n)
        after = {p: await asyncio.to_thread(_view, c.base_url, t, p) for p in before}
        # 5. more commands on the recovered state
        c3 = await send(
            create("pay_4"),  # over the 3000 daily volume: quota_exceeded
            build_command("payment.capture", t, {"payment_id": "pay_1"}),  # captured already
            build_command("refund.create", t, {"payment_id": "pay_1", "amount": 800}),  # > 700
        )
        await answered(c3, 60)
        final = {p: await asyncio.to_thread(_view, c.base_url, t, p) for p in before}

        problems: list[str] = []
        exp_before = {
            "pay_1": ("succeeded", 1000, 300),
        }
        if before["pay_1"] != exp_before["pay_1"]:
            problems.append(f"B's own view differs from the reference: {before}")
        if after != before:
            problems.append(f"table state after recovery {after} != before the thaw {before}")
        if final != before:  # (the last three commands are all refused)
            problems.append(f"table state after refused commands {final} != {before}")
        all_ids = c0 + c1 + c2 + c3
        for cid in all_ids:
            if len(log.by_command[cid]) != 1:
                problems.append(f"command {cid} got {len(log.by_command[cid])} outcome ids")
        raw_by_event: dict[str, set[str]] = {}
        for _cause, eid, raw in log.records:
            raw_by_event.setdefault(eid, set()).add(raw.decode())
        differing = {e: v for e, v in raw_by_event.items() if len(v) > 1}
        if differing:
            problems.append(f"{len(differing)} outcome(s) duplicated with different bytes")
        types = {cid: typ(cid) for cid in all_ids}
        got_c3 = [types[x] for x in c3]
        if got_c3[0][0] != "command.rejected":
            problems.append(f"pay_4 over the daily volume was not refused: {got_c3[0]}")
        ledger = (await provider_effects(dep.settings, dep.settings.redis_url or "", [t]))[t]
        effects = Counter((e.kind, e.amount) for e in ledger)
        if effects != Counter(
            {("authorization", 1000): 3, ("capture", 1000): 1, ("refund", 300): 1}
        ):
            problems.append(f"provider effects {dict(effects)}")
        # (Whether A had a batch in hand when frozen: the agent case's often has not.)
        held = bool(HELD_BACK.search(a.log_path.read_text(errors="replace")))
        problems.append(
            f"(B owned all after {took_over:.1f} s; A frozen {frozen_for:.1f} s; "
            f"A's log says it held a batch back: {held})"
        )
        assert len(problems) == 1, "\n".join(problems)
        assert a_alive, "the thawed worker exited"
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
        if a.proc is not None and a.proc.poll() is None:
            os.killpg(a.proc.pid, signal.SIGCONT)
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in (a, b, c)))
