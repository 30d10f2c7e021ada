"""Stop a worker mid-stream: no command without an outcome, no effect twice.

500 commands (charges, authorisations, captures, refunds) across 10 tenants are
paced onto the commands topic; the worker is killed with SIGKILL once a third of the
outcomes are out (and, separately, stopped with SIGTERM as a deploy would), and a new
worker (same consumer group, fresh process) finishes. In the fleet case two workers
share the partitions from the start and the survivor takes over the killed one's
partitions (and their tables) mid-stream, while it keeps running its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.devstack._process import wait_until
from paystream.devstack.worker import WorkerProcess
from paystream.gateways.base import GatewayContext
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode, Settings
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import decode_record, encode_event, headers_to_dict
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.e2e.together import side_by_side
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _tenant_runs(worker: Any) -> dict[str, float]:
    """paystream_tenant_runs_total by how (serial, chains), from the worker's /metrics."""
    with urllib.request.urlopen(f"{worker.base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    runs: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("paystream_tenant_runs_total{"):
            how = line.split('how="')[1].split('"')[0]
            runs[how] = float(line.rsplit(" ", 1)[1])
    return runs


def tenants_for(case: str) -> list[str]:
    # Distinct per run: the simulator's provider state (Redis) outlives a test.
    return [f"crash-{case.lower()}-{i}" for i in range(10)]


# Each tenant's payments (half manual: a create and a capture; half auto: a create and
# two refunds), 2.5 commands each, and what their 1000 + j minor units add up to.
PAYMENTS = 20
TENANT_COMMANDS = PAYMENTS * 5 // 2
TENANT_VOLUME = sum(1000 + j for j in range(PAYMENTS))


@dataclass
class Expected:
    amount: int
    captured: int = 0
    refunded: int = 0
    status: str = ""


def workload(
    tenants: list[str],
) -> tuple[list[CloudEvent], dict[tuple[str, str], Expected], dict[str, Counter[Any]]]:
    """TENANT_COMMANDS commands per tenant (tenant after tenant), the replay-free
    reference state they must produce, and each tenant's provider effects: (kind,
    amount, the payment a create names)."""
    commands: list[CloudEvent] = []
    expected: dict[tuple[str, str], Expected] = {}
    effects_of: dict[str, Counter[Any]] = {}
    for t in tenants:
        effects = effects_of[t] = Counter()
        per_tenant: list[CloudEvent] = []
        follow_ups: list[CloudEvent] = []
        for j in range(PAYMENTS):
            pid = f"pay_{j}"
            amount = 1000 + j
            manual = j % 2 == 0
            per_tenant.append(
                build_command(
                    "payment.create",
                    t,
                    {
                        "payment_id": pid,
                        "amount": amount,
                        "currency": "USD",
                        "payment_method_token": "pm_card_visa",
                        "capture": "manual" if manual else "auto",
                    },
                )
            )
            exp = Expected(amount=amount)
            # A create of a chosen id is the provider's request under the id's key.
            create_key = f"pse:{t}:payment:{pid}"
            if manual:
                follow_ups.append(build_command("payment.capture", t, {"payment_id": pid}))
                effects["authorization", amount, create_key] += 1
                effects["capture", amount, None] += 1
            else:
                effects["charge", amount, create_key] += 1
                for share in (300, 200):
                    follow_ups.append(
                        build_command("refund.create", t, {"payment_id": pid, "amount": share})
                    )
                    effects["refund", share, None] += 1
                exp.refunded = 500
            exp.captured = amount
            exp.status = "succeeded"
            expected[(t, pid)] = exp
        commands += per_tenant + follow_ups
    assert len(commands) == TENANT_COMMANDS * len(tenants)
    return commands, expected, effects_of


async def _produce(
    dep: Deployment, commands: list[CloudEvent], rate: float | Callable[[int], float] | None
) -> None:
    """``commands`` onto the commands topic, ``rate`` a second (or ``rate(n)`` from the
    n-th on); None: at once, a partition's records in one batch (a worker's next fetch
    finds them all)."""
    rate_from = rate if callable(rate) else lambda n: rate
    at_once = {"linger_ms": 100, "max_batch_size": 1 << 20} if rate is None else {}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(dep.settings.require_broker()), **at_once
    )
    await producer.start()
    try:
        due = time.monotonic()
        for n, cmd in enumerate(commands):
            tenant = str(cmd.get_extension("tenantid"))
            rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
            await producer.send(
                dep.settings.commands_topic, rec.value, key=rec.key, headers=list(rec.headers)
            )
            if (pace := rate_from(n)) is None:
                continue
            # pace the stream so the kill lands in the middle of it
            due += 1 / pace
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()


class OutcomeLog:
    """Every outcome record on the events topic, from the beginning."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.records: list[tuple[str, str, bytes]] = []  # (causation id, event id, raw bytes)
        self.by_command: dict[str, set[str]] = defaultdict(set)

    async def run(self) -> None:
        topic = self.dep.settings.events_topic
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.dep.settings.require_broker()),
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.dep.settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            async for msg in consumer:
                event = decode_record(msg.key, msg.value, headers_to_dict(msg.headers))
                cause = str(event.get_extension("causationid"))
                raw = json.dumps(
                    [
                        msg.key.decode() if msg.key else None,
                        msg.value.decode(),
                        sorted((k, v.decode()) for k, v in msg.headers),
                    ]
                ).encode()
                self.records.append((cause, event.get_id(), raw))
                self.by_command[cause].add(event.get_id())
        finally:
            await consumer.stop()


async def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _read_all(dep: Deployment, ids: set[str], timeout: float = 30) -> OutcomeLog:
    """A fresh read of the whole events topic, until it holds ``ids`` or ``timeout``."""
    fresh = OutcomeLog(dep)
    task = asyncio.create_task(fresh.run())
    try:
        with contextlib.suppress(AssertionError):
            await _wait_for(lambda: ids <= fresh.by_command.keys() or task.done(), timeout, "read")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return fresh


async def _diagnose(
    dep: Deployment, commands: list[CloudEvent], log: OutcomeLog, worker: Any
) -> str:
    """Which commands lack an outcome, and is it the worker or our reader that missed them?"""
    missing = [c for c in commands if c.get_id() not in log.by_command]
    fresh = await _read_all(dep, {c.get_id() for c in missing}, timeout=10)
    on_topic = [c for c in missing if c.get_id() in fresh.by_command]
    stats = await asyncio.to_thread(worker.stats)
    kinds = Counter(
        (str(c.get_extension("tenantid")), c.get_type().rsplit(".", 2)[-2]) for c in missing
    )
    where = await _locate(dep, {c.get_id() for c in missing})
    located = [
        (commands.index(c), *where.get(c.get_id(), ()), c.get_type(), c.get_data())
        for c in missing[:5]
    ]
    return (
        f"{len(missing)} command(s) without an outcome in our reader; {len(on_topic)} of them "
        f"do have one on the topic (fresh read: {len(fresh.records)} records, ours "
        f"{len(log.records)}); by tenant/type: {dict(kinds)}; "
        f"worker processed {stats and stats['worker']['processed']}, owns partitions "
        f"{stats and stats['worker']['partitions']}; missing commands on the topic "
        f"(index in workload, partition, offset, type, data): "
        f"{located}; "
        f"group committed offsets: {await _committed(dep)}"
    )


async def _locate(dep: Deployment, ids: set[str]) -> dict[str, tuple[int, int]]:
    """(partition, offset) of the given commands on the commands topic."""
    consumer = AIOKafkaConsumer(
        dep.settings.commands_topic,
        bootstrap_servers=bootstrap_servers(dep.settings.require_broker()),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: dict[str, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ids <= found.keys():
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    cid = dict(r.headers or ()).get("ce_id", b"").decode()
                    if cid in ids:
                        found[cid] = (tp.partition, r.offset)
    finally:
        await consumer.stop()
    return found


async def _committed(dep: Deployment) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(dep.settings.require_broker()),
        group_id=dep.settings.app_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(dep.settings.commands_topic, p))
            for p in range(dep.settings.partitions)
        }
    finally:
        await consumer.stop()


def _wait_split(workers: list[Any], tenants: list[str], partitions: int) -> None:
    """Until every worker owns some of the partitions and together they own them all."""
    for w in workers:
        w.wait_ready(tenants)

    def split() -> bool:
        owned = [set((w.stats() or {}).get("worker", {}).get("partitions") or ()) for w in workers]
        return all(owned) and sum(map(len, owned)) == partitions == len(set().union(*owned))

    wait_until(split, timeout=90, what="the partitions split between the workers", interval=0.1)


def _processed(worker: Any) -> int:
    """The commands ``worker`` has processed, read until it answers: a worker busy with a
    batch may not answer its stats within their second under load, which is no 0 (a
    fleet run once read "both workers busy" as [0, 332] so)."""
    stats: dict[str, Any] | None = None

    def answered() -> bool:
        nonlocal stats
        stats = worker.stats()
        return stats is not None

    wait_until(answered, timeout=30, what="the worker's stats", interval=0.1)
    assert stats is not None
    return int(stats["worker"]["processed"])


async def _busy(workers: list[WorkerProcess], done_before: list[int]) -> list[int]:
    """The commands each of ``workers`` has processed since ``done_before``, read until
    each has processed some (or 30 s have passed)."""
    deadline = time.monotonic() + 30
    while True:
        busy = [
            await asyncio.to_thread(_processed, w) - done
            for w, done in zip(workers, done_before, strict=True)
        ]
        if all(busy) or time.monotonic() > deadline:
            return busy
        await asyncio.sleep(0.1)


def _payment(base_url: str, tenant: str, pid: str) -> dict[str, Any]:
    # While its tables are recovered a worker answers 503 ("retry"); it shows a partition
    # as its own a moment before recovery starts (404 then).
    deadline = time.monotonic() + 30
    while True:
        try:
            url = f"{base_url}/v1/tenants/{tenant}/payments/{pid}"
            with urllib.request.urlopen(url, timeout=5) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _payments(base_url: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``_payment`` of each (tenant, payment id), several asked at a time."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = pool.map(lambda key: _payment(base_url, *key), keys)
        return dict(zip(keys, states, strict=True))


class CrashFleet:
    """A deployment whose workers outlive a case of the test below: a case takes as its
    first worker the one the case before left running (``first``), and leaves the worker
    that finished its commands running for the next. A deployment and a worker start a
    case fewer than one of each a case: each case has tenants of its own, and judges
    only its own commands' outcomes and its own tenants' payments and provider effects."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.started = 0
        self.running: list[WorkerProcess] = []  # (started, not stopped)

    async def start(self) -> WorkerProcess:
        """A new worker of the deployment's group (a fresh process), started."""
        self.started += 1
        worker = self.dep.worker(f"w{self.started}")
        self.running.append(worker)
        await asyncio.to_thread(worker.start)
        return worker

    async def stop(self, worker: WorkerProcess, sig: int = signal.SIGTERM) -> None:
        """``sig`` to ``worker`` (SIGKILL: a crash; SIGTERM: a deploy's stop), and once it
        has exited, stopped at once: its process group is swept while its id is still its
        own (swept minutes later, the id could be another group's)."""
        self.running.remove(worker)
        await asyncio.to_thread(_ended, worker, sig)

    async def first(self) -> WorkerProcess:
        """The worker started last, alone: any other still running (left by a case that
        failed) stopped; one started if none runs."""
        self.running = [w for w in self.running if not w.exited()]
        for worker in self.running[:-1]:
            await self.stop(worker)
        return self.running[-1] if self.running else await self.start()

    def stop_all(self) -> None:
        for worker in self.running:
            if not worker.exited():
                worker.stop()
        self.running = []


def _ended(worker: WorkerProcess, sig: int) -> None:
    worker.kill(sig)  # (until it has exited)
    worker.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def crash_fleet(
    deployment_factory: Any,
) -> AsyncIterator[Callable[..., Awaitable[list[CrashFleet]]]]:
    """``await fleets(*stores)`` → the module's CrashFleet on each of those table stores
    (the other stores' workers stopped: only the fleets of the cases at hand run)."""
    fleets: dict[str, CrashFleet] = {}

    async def fleet(*stores: str) -> list[CrashFleet]:
        for other, running in fleets.items():
            if other not in stores:
                await asyncio.to_thread(running.stop_all)
        for store in stores:
            if store not in fleets:
                fleets[store] = CrashFleet(await deployment_factory(paystream_table_store=store))
        return [fleets[store] for store in stores]

    try:
        yield fleet
    finally:
        for running in fleets.values():
            running.stop_all()


Case = tuple[signal.Signals, str, str]  # (signal, case, table store)


@pytest.mark.parametrize(
    "cases",
    [
        # A memory-store case beside a RocksDB one (the chart's store, helm/: a stop
        # drains the batch in hand while the tables close, and a crash restarts on what
        # the store wrote ahead of the changelog), each on its store's deployment: a
        # restart is mostly a worker's start and its group's join, waited for side by
        # side. The cases whose timing matters (a rebalance on a busy worker, commands
        # run side by side) run alone.
        [(signal.SIGKILL, "restart", "memory://"), (signal.SIGTERM, "restart", "rocksdb://")],
        [(signal.SIGTERM, "restart", "memory://"), (signal.SIGKILL, "restart", "rocksdb://")],
        [(signal.SIGKILL, "fleet", "memory://")],
        [(signal.SIGTERM, "scale-out", "memory://")],
        # Tenants whose commands on different payments run side by side
        # (agents/tenant_chains.py), on a provider taking 10 ms a call: several of a
        # tenant's calls are in flight when the worker dies.
        [(signal.SIGKILL, "chains", "memory://")],
    ],
    ids=[
        "SIGKILL+SIGTERM-rocksdb",
        "SIGTERM+SIGKILL-rocksdb",
        "fleet-SIGKILL",
        "scale-out-then-in",
        "SIGKILL-chains",
    ],
)
async def test_worker_stopped_mid_stream_loses_nothing_and_doubles_nothing(
    crash_fleet: Callable[..., Awaitable[list[CrashFleet]]], cases: list[Case]
) -> None:
    """SIGKILL: a crash at any point. SIGTERM: a deploy, which cancels the agent mid-batch
    (the batch in hand must be finished before its offsets are committed). Fleet: a crash
    while another worker of the group runs, which must take over (a rebalance mid-stream
    on a busy worker). Scale-out then in: a second worker joins mid-stream (partitions
    move off a busy worker) and, once all is done, the first stops (they move back).

    The cases of a store share its deployment (CrashFleet): the first worker of a case is
    the one the case before left running, which owns every partition; the worker started
    after a kill or stop is a fresh process of the same group. Cases of different stores
    run side by side, and every check names its case."""
    fleets = await crash_fleet(*(store for _, _, store in cases))
    await side_by_side(
        {
            f"{sig.name} {case} {store}": _stopped_mid_stream(fleet, sig, case, store)
            for fleet, (sig, case, store) in zip(fleets, cases, strict=True)
        }
    )


async def _stopped_mid_stream(
    fleet: CrashFleet, sig: signal.Signals, case: str, store: str
) -> None:
    dep = fleet.dep
    tenants = tenants_for(f"{case}-{sig.name}-{store[:3]}")
    # Limits each tenant's commands use up exactly: a record counted twice after the
    # crash would be rejected (and a rejection fails the test below).
    limits = TenantLimits(
        commands_per_second=1, burst=TENANT_COMMANDS, daily_payment_volume={"USD": TENANT_VOLUME}
    )
    if case == "chains":
        # Half with a rate limit alone, half with the daily volume as well (which the
        # workload spends exactly: near it, a payment waits for the earlier answers):
        # the limits decided in offset order on every delivery (admission_order.py).
        rate_only = TenantLimits(commands_per_second=1, burst=TENANT_COMMANDS)
        await dep.add_tenants(
            *(
                Tenant(
                    tenant_id=t,
                    gateway_options={"latency_ms": 10},
                    limits=rate_only if i % 2 else limits,
                )
                for i, t in enumerate(tenants)
            )
        )
    else:
        await dep.add_tenants(*(Tenant(tenant_id=t, limits=limits) for t in tenants))
    commands, expected, expected_effects = workload(tenants)
    ids = {c.get_id() for c in commands}
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    first = await fleet.first()
    second: WorkerProcess | None = None
    try:
        if case == "fleet":
            second = await fleet.start()
            await asyncio.to_thread(_wait_split, [first, second], tenants, dep.settings.partitions)
        else:
            await asyncio.to_thread(first.wait_ready, tenants, partitions=dep.settings.partitions)
        # (What the workers have done before: the cases before ran on them too.)
        running = [w for w in (first, second) if w is not None]
        processed_before = [await asyncio.to_thread(_processed, w) for w in running]
        chains_before = (await asyncio.to_thread(_tenant_runs, first)).get("chains", 0)
        third, ready = len(ids) // 3, asyncio.Event()

        def rate(n: int) -> float:
            # What the case waits for lands mid-stream: the last 50 commands wait for it
            # at one a second. A join (some seconds) waits for the partitions to split,
            # the stream slower from a third on, so that the rebalance lands on a busy
            # worker; a fleet's kill waits for both workers busy (the survivor of the
            # cases before can be slow to resume after the rebalance, under load).
            if n < third or ready.is_set() or case not in ("scale-out", "fleet"):
                return 250
            if n >= len(commands) - 50:
                return 1
            return 20 if case == "scale-out" else 250

        producing = asyncio.create_task(_produce(dep, commands, rate=rate))
        await _wait_for(
            lambda: len(log.by_command.keys() & ids) >= third, 60, "a third of the outcomes"
        )
        if case == "fleet":
            busy = await _busy(running, processed_before)
            ready.set()
            assert all(busy), f"both workers must be running commands when one dies: {busy}"
        if case == "scale-out":
            second = await fleet.start()
            await asyncio.to_thread(_wait_split, [first, second], tenants, dep.settings.partitions)
            ready.set()
        else:
            if case == "chains":
                runs = await asyncio.to_thread(_tenant_runs, first)
                assert runs.get("chains", 0) > chains_before, (
                    f"no tenant's commands ran side by side: {runs} (before: {chains_before})"
                )
            # (In a thread: a SIGTERM's drain takes a moment, and the stream goes on.)
            await fleet.stop(first, sig)
        killed_at = len(log.by_command.keys() & ids)
        if case in ("restart", "chains"):
            second = await fleet.start()
        await producing
        assert second is not None
        with contextlib.suppress(AssertionError):  # judged below, on the topic itself
            await _wait_for(
                lambda: ids <= log.by_command.keys() or reader.done(), 120, "every outcome"
            )
        if not ids <= log.by_command.keys():
            # Our long-lived reader is only an instrument: if it died or fell behind, read
            # the topic afresh. Only outcomes missing from the topic itself fail the test.
            reader_error = reader.exception() if reader.done() else None
            log = await _read_all(dep, ids)
            if not ids <= log.by_command.keys():
                raise AssertionError(
                    f"{await _diagnose(dep, commands, log, second)}; reader error: {reader_error!r}"
                )
        ours = [(c, e, raw) for c, e, raw in log.records if c in ids]
        if case == "scale-out":
            # A graceful hand-over redoes nothing: the batch in hand is delivered and
            # committed before the partitions move.
            redone = len(ours) - len({e for _, e, _ in ours})
            assert redone == 0, f"{redone} outcome(s) produced twice on a graceful rebalance"
            await fleet.stop(first, sig)
        # The survivor (or the new worker) owns every partition, so its views show all.
        await asyncio.to_thread(second.wait_ready, tenants, partitions=dep.settings.partitions)

        # 1. every command has exactly one outcome identity; duplicates are byte-identical
        assert killed_at < len(ids), "the kill must land mid-stream"
        assert all(len(log.by_command[i]) == 1 for i in ids), "a command got two different outcomes"
        raw_by_event: dict[str, set[bytes]] = defaultdict(set)
        for _, event_id, raw in ours:
            raw_by_event[event_id].add(raw)
        assert all(len(v) == 1 for v in raw_by_event.values()), "duplicates differ"
        outcomes = [
            decode_record(
                None, json.loads(r)[1].encode(), {k: v.encode() for k, v in json.loads(r)[2]}
            )
            for (c, _, r) in set(ours)
        ]
        kinds = Counter(o.get_type() for o in outcomes)
        rejected = [o.get_data() for o in outcomes if o.get_type().endswith("rejected")]
        assert not rejected, rejected
        assert set(kinds) <= {
            "com.paystream.payment.succeeded",
            "com.paystream.payment.authorized",
            "com.paystream.refund.succeeded",
        }, kinds

        # 2. table state equals the replay-free reference
        states = await asyncio.to_thread(_payments, second.base_url, list(expected))
        for (tenant, pid), exp in expected.items():
            state = states[tenant, pid]
            assert (state["status"], state["amount_captured"], state["amount_refunded"]) == (
                exp.status,
                exp.captured,
                exp.refunded,
            ), (tenant, pid, state)

        # 3. the provider applied every effect exactly once: each tenant's ledger, effect
        # by effect (its kind, amount, and for a create the payment it names), is the
        # reference's, nothing more (the simulator records one effect per key, so a
        # second effect can only come under another key: counted here).
        assert dep.settings.redis_url is not None
        ledgers = await provider_effects(dep.settings, dep.settings.redis_url, tenants)
        assert ledgers.keys() == set(tenants)
        for tenant, effects in ledgers.items():
            found = Counter(
                (
                    e.kind,
                    e.amount,
                    e.idempotency_key if e.kind in ("charge", "authorization") else None,
                )
                for e in effects
            )
            assert found == expected_effects[tenant], (tenant, found - expected_effects[tenant])
            assert all(str(e.currency).lower() == "usd" for e in effects), tenant
        print(f"killed after {killed_at} outcomes; {len(ours)} outcome records in all")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def provider_effects(
    settings: Settings, redis_url: str, tenants: Iterable[str]
) -> dict[str, list[Any]]:
    """Each tenant's effect ledger at the simulator (the provider's own record)."""
    client = aioredis.from_url(redis_url)
    try:
        out: dict[str, list[Any]] = {}
        for tenant in tenants:
            sim = SimulatorGateway.from_context(
                GatewayContext(tenant_id=tenant, provider="simulator"),
                GatewayDeps(settings=settings, redis=client),
            )
            out[tenant] = list(await sim.effects())
        return out
    finally:
        await client.aclose()
