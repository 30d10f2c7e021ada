"""A zombie worker (review h61c): frozen (SIGSTOP) with a batch in hand past the session
timeout, its partitions taken over by the other worker of the group, which goes on with
later commands for the same payments; then thawed (SIGCONT). Nothing of its late work may
change what a replay-free run leaves behind: provider effects, outcomes, table state (as
a recovery from the changelogs rebuilds it). Before the membership lease
(agents/membership.py) the thawed worker delivered its batch, by its agent or by the
hand-over hook, and the recovered tables lost the refund and undercounted the day's
volume, so that a payment over the quota was authorised.

A's calls to the simulated provider go through a proxy (its state is in Redis) that
freezes A once A's first call of the batch reaches it and holds the call until A is
frozen: A is certain to have the batch in hand, whatever the timing (a freeze after a
fixed sleep often caught A between batches)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.devstack._process import wait_until
from paystream.devstack.worker import WorkerProcess
from paystream.settings import CloudEventsMode
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import decode_record, encode_event
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.e2e.test_crash import OutcomeLog, _payment, _wait_for, _wait_split, provider_effects
from tests.e2e.threaded_proxy import ThreadedProxy
from tests.e2e.together import side_by_side
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


class FreezingProxy(ThreadedProxy):
    """Forwards a worker's Redis connections: the simulator gateway's calls (its
    provider's state is there). Once ``arm``ed, the first request naming ``marker``
    runs ``freeze`` (SIGSTOP the worker) before it is forwarded: the worker is frozen
    with that call unanswered. With ``hold``, the request waits for ``release()`` too."""

    def __init__(self, redis_url: str) -> None:
        target = urlsplit(redis_url)
        super().__init__(target.port or 6379, target.hostname or "127.0.0.1")
        netloc = target.netloc.rpartition(":")[0]
        self.url = target._replace(netloc=f"{netloc}:{self.port}").geturl()
        self._armed: tuple[bytes, Callable[[], None], bool] | None = None
        self.frozen = threading.Event()
        self.frozen_at = 0.0
        self._released = asyncio.Event()  # (waited for on the proxy's loop)

    def arm(self, marker: bytes, freeze: Callable[[], None], *, hold: bool) -> None:
        self._armed = (marker, freeze, hold)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    async def _passing(self, data: bytes, to_target: bool) -> None:
        # (redis-py writes a command in one buffer: a key cut across two reads would be
        # missed, and the test would say A was never frozen.)
        if not to_target or self._armed is None or self._armed[0] not in data:
            return
        _, freeze, hold = self._armed
        self._armed = None
        freeze()
        self.frozen_at = time.monotonic()
        self.frozen.set()
        if hold:
            await self._released.wait()


# What the thawed worker logs of the batch it had in hand (agents/commands.py).
HELD_BACK = re.compile(r"batch (of \d+ commands|in hand)[^\n]* not delivered")
# aiokafka's line as the rebalance that runs the hand-over hook begins.
REVOKING = "Revoking previously assigned partitions"

# Thawed, the worker's batch was delivered by the hand-over hook (its call answered
# only once the rebalance has begun), or by its agent before its heartbeat thread had
# run (the call answered while it was frozen): whether the proxy holds the call until
# A's rebalance begins, for each.
CASES = {
    "delivered-by-the-hand-over": True,
    "delivered-by-the-agent": False,
}


async def test_zombie_worker_changes_nothing(deployment_factory: Any) -> None:
    """Both cases side by side, each on a deployment (and workers) of its own: most of a
    case is waiting (group joins, the session timeout), and every check names its case."""
    await side_by_side(
        {name: _zombie_case(deployment_factory, hold) for name, hold in CASES.items()}
    )


async def _zombie_case(deployment_factory: Any, until_rebalance: bool) -> None:
    # (A gateway timeout past the freeze: the held call is answered, not timed out.)
    dep: Deployment = await deployment_factory(
        paystream_table_store="memory://", paystream_gateway_timeout_seconds="60"
    )
    n = dep.settings.partitions
    tag = os.urandom(3).hex()
    candidates = [f"zombie-{tag}-{i}" for i in range(12)]
    limits = TenantLimits(daily_payment_volume={"USD": 3000})
    await dep.add_tenants(*(Tenant(tenant_id=t, limits=limits) for t in candidates))
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    proxy = FreezingProxy(dep.settings.redis_url or "").start()
    a = WorkerProcess({**dep.env, "REDIS_URL": proxy.url}, dep.base_dir / "wA.log")
    b, c = dep.worker("wB"), dep.worker("wC")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(dep.settings.require_broker()))
    await producer.start()

    async def send(*cmds: CloudEvent) -> list[str]:
        # Produced together (in order): one worker's batch takes them all.
        sent = []
        for cmd in cmds:
            rec = encode_event(
                cmd, str(cmd.get_extension("tenantid")).encode(), CloudEventsMode.BINARY
            )
            sent.append(
                await producer.send(
                    dep.settings.commands_topic, rec.value, key=rec.key, headers=list(rec.headers)
                )
            )
        await asyncio.gather(*sent)
        return [c.get_id() for c in cmds]

    def a_log() -> str:
        return a.log_path.read_text(errors="replace")

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
        # 1. A takes create pay_2 + capture pay_1 and is frozen inside a provider call
        # of that batch (the first of tenant t's to reach the provider's store)
        proxy.arm(
            f"sim:{{{t}}}:".encode(),
            lambda: os.killpg(a.proc.pid, signal.SIGSTOP),
            hold=until_rebalance,
        )
        c1 = await send(
            create("pay_2"), build_command("payment.capture", t, {"payment_id": "pay_1"})
        )
        assert await asyncio.to_thread(proxy.frozen.wait, 60), (
            "A was never frozen: no provider call of its batch reached the proxy"
        )
        frozen_at = proxy.frozen_at
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
        revoked = a_log().count(REVOKING)
        os.killpg(a.proc.pid, signal.SIGCONT)
        if until_rebalance:
            await asyncio.to_thread(
                wait_until,
                lambda: a_log().count(REVOKING) > revoked,
                timeout=60, what="A's rebalance began", interval=0.05,
            )  # fmt: skip
            proxy.release()
        await asyncio.to_thread(
            wait_until,
            lambda: len((b.stats() or {}).get("worker", {}).get("partitions") or ()) < n,
            timeout=60, what="A rejoined the group", interval=0.2,
        )  # fmt: skip
        a_alive = a.proc.poll() is None
        # 4. restart: a fresh worker recovers every table from the changelogs. A stops,
        # B takes everything back, then B stops: the group is left empty with no
        # rebalance under way (stopped side by side, a leave during the rebalance the
        # other's leave began met Tansu's departed-leader quirk, README: the fresh
        # worker's joins then went round as a follower for good, "not ready after 90 s")
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(
            wait_until,
            lambda: len((b.stats() or {}).get("worker", {}).get("partitions") or ()) == n,
            timeout=60, what="B owns every partition again", interval=0.2,
        )  # fmt: skip
        await asyncio.to_thread(b.stop)
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
        # (Frozen in a call of its batch, A has it in hand: thawed, it must hold it back.)
        if not HELD_BACK.search(a_log()):
            problems.append("A's log does not say it held its batch in hand back")
        problems.append(f"(B owned all after {took_over:.1f} s; A frozen {frozen_for:.1f} s)")
        assert len(problems) == 1, "\n".join(problems)
        assert a_alive, "the thawed worker exited"
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
        if a.proc is not None and a.proc.poll() is None:
            os.killpg(a.proc.pid, signal.SIGCONT)
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in (a, b, c)))
        await asyncio.to_thread(proxy.stop)
