"""`paystream bench --in-process`: the command pipeline's own CPU per command.

The full benchmark shares two cores between the broker, Redis, the load generator and
the worker, and its figures move by 10-30% between runs on this host: a code change
worth 5% cannot be seen there. This runs the same commands (the bench's mix, with the
real simulator on Redis) through ``CommandProcessor`` in this process, batch by batch
and tenant-concurrently as the agent does, without Kafka or Faust, and reports the
process CPU time per command over several rounds. Each record has a partition and an
offset, and offsets become committed a batch behind, as in the worker: the pipeline
keeps per-record bookkeeping (answers, limits, entity sources) only for records with
an offset, so a run without them measured less than the worker does. Compare medians
of two checkouts run one after the other
(``PYTHONPATH=<checkout> python -m paystream bench --in-process``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2

from paystream import tracing
from paystream.agents.commands import BATCH_MAX
from paystream.agents.handlers import Tables
from paystream.agents.pipeline import CommandProcessor, Emit, Inbound
from paystream.agents.tenant_chains import run_tenant
from paystream.bench.load import bench_tenants, generate_commands, tenant_ids
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator.resp import use_hiredis_packing
from paystream.settings import load_settings
from paystream.streams.codec import decode_record
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.policy import call_policy

__all__ = ["LIMITS_KINDS", "InProcessReport", "run_in_process"]

# The bench tenants' limits (every other tenant's): all of them, the rate and per-payment
# limits alone, or none.
LIMITS_KINDS = ("full", "rate", "none")


@dataclass
class InProcessReport:
    commands: int
    tenants: int
    provider_latency_ms: int = 0
    tenant_concurrency: int = 1
    limits: str = "full"  # the bench tenants' (every other one): full, rate or none
    cpu_us: list[float] = field(default_factory=list)  # per round, CPU µs per command
    wall_us: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def median_cpu_us(self) -> float:
        return statistics.median(self.cpu_us) if self.cpu_us else 0.0

    @property
    def wall_cps(self) -> float:
        """Commands a second by the rounds' median wall time."""
        return 1e6 / statistics.median(self.wall_us) if self.wall_us else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "in_process_cpu_us_per_command": round(self.median_cpu_us, 1),
            "in_process_rounds_cpu_us": [round(x, 1) for x in self.cpu_us],
            "in_process_rounds_wall_us": [round(x, 1) for x in self.wall_us],
            "commands": self.commands,
            "tenants": self.tenants,
            "provider_latency_ms": self.provider_latency_ms,
            "tenant_concurrency": self.tenant_concurrency,
            "tenant_limits": self.limits,
            "in_process_wall_commands_per_second": round(self.wall_cps, 1),
            "outcomes": dict(self.outcomes),
        }

    def render(self) -> str:
        lines = [
            f"in-process pipeline: {self.commands} commands x {len(self.cpu_us)} rounds, "
            f"{self.tenants} tenants (simulator on Redis; no Kafka, no Faust), provider "
            f"latency {self.provider_latency_ms} ms, PAYSTREAM_TENANT_CONCURRENCY "
            f"{self.tenant_concurrency}, tenant limits {self.limits}"
        ]
        for n, (cpu, wall) in enumerate(zip(self.cpu_us, self.wall_us, strict=True), 1):
            lines.append(f"  round {n}: {cpu:7.1f} µs CPU/command, {wall:7.1f} µs wall")
        lines.append(
            f"median {self.median_cpu_us:.1f} µs CPU per command (min {min(self.cpu_us):.1f})"
        )
        lines.append(f"{self.wall_cps:.1f} commands/s by median wall time")
        lines.append("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())))
        return "\n".join(lines)


def run_in_process(
    *,
    commands: int,
    tenants: int,
    rounds: int,
    seed: int,
    redis_url: str | None,
    say: Callable[[str], None],
    provider_latency_ms: int = 0,
    limits: str = "full",
) -> InProcessReport:
    """Run the rounds against ``redis_url``, or an embedded Redis started for the run."""
    work = functools.partial(
        _rounds, commands=commands, tenants=tenants, rounds=rounds, seed=seed, say=say,
        latency_ms=provider_latency_ms, limits=limits,
    )  # fmt: skip
    if redis_url:
        return _run_loop(work(redis_url))
    from paystream.devstack.redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="paystream-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        server.start()
        try:
            return _run_loop(work(server.url))
        finally:
            server.stop()


def _run_loop(work: Any) -> InProcessReport:
    try:
        import uvloop  # the worker's loop (see settings.event_loop)

        return uvloop.run(work)
    except ImportError:
        return asyncio.run(work)


async def _rounds(
    redis_url: str,
    *,
    commands: int,
    tenants: int,
    rounds: int,
    seed: int,
    say: Callable[[str], None],
    latency_ms: int = 0,
    limits: str = "full",
) -> InProcessReport:
    import redis.asyncio as aioredis

    client = use_hiredis_packing(aioredis.from_url(redis_url, socket_timeout=None))
    settings = load_settings(redis_url=redis_url)
    pool = GatewayPool(
        GatewayDeps(settings=settings, redis=client), call_policy=call_policy(settings)
    )
    ids = tenant_ids(f"ip{os.urandom(3).hex()}", tenants)
    changes: dict[str, Any] = {}
    if latency_ms:
        changes["gateway_options"] = {"latency_ms": latency_ms}
    if limits not in LIMITS_KINDS:
        raise ValueError(f"limits must be one of {', '.join(LIMITS_KINDS)}")
    if limits == "none":
        changes["limits"] = TenantLimits()
    registry = {}
    for t in bench_tenants(ids):
        update = dict(changes)
        if limits == "rate" and t.limits.enforced:
            # The rate and per-payment limits alone: no daily volume, near which a payment
            # waits for the earlier ones' answers (agents/admission_order.py).
            update["limits"] = t.limits.model_copy(update={"daily_payment_volume": {}})
        registry[t.tenant_id] = t.model_copy(update=update).model_dump(mode="json")
    # PAYSTREAM_OTEL_EXPORTER as the worker would have it (none: no tracing at all).
    tracer = tracing.configure(settings, install=False)
    offsets = _Offsets(settings.partitions)
    processor = CommandProcessor(
        settings,
        Tables({}, {}, {}, {}, {}),
        {},
        registry,
        pool,
        tracing=tracer,
        committed=offsets.committed,
    )
    report = InProcessReport(
        commands=commands,
        tenants=tenants,
        provider_latency_ms=latency_ms,
        tenant_concurrency=settings.tenant_concurrency,
        limits=limits,
    )
    try:
        # As the worker does (gc_pacing): what lives for the process leaves the GC's view,
        # and full collections happen at quiet moments, here between rounds, untimed.
        young, middle, oldest = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(young, middle, 2**31 - 1)
        for n in range(rounds):
            gc.collect()
            prefix = f"r{n}-{os.urandom(4).hex()}"
            generated = generate_commands(commands, ids, prefix=prefix, seed=seed + n)
            batch = [offsets.place(_inbound(c, settings.commands_topic)) for c in generated]
            emitted: list[Emit] = []
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for part in _batches(batch, BATCH_MAX, settings.batch_tenant_max):
                emitted += await _one_batch(processor, part, settings.tenant_concurrency)
                offsets.batch_done()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            report.outcomes.update(_kinds(emitted, settings.events_topic))
            report.cpu_us.append(cpu / commands * 1e6)
            report.wall_us.append(wall / commands * 1e6)
            say(f"round {n + 1}/{rounds}: {report.cpu_us[-1]:.1f} µs CPU/command")
    finally:
        gc.set_threshold(young, middle, oldest)
        gc.unfreeze()
        await pool.aclose()
        await client.aclose()
        if tracer is not None:
            tracer.shutdown()
    return report


def _inbound(command: Any, topic: str) -> Inbound:
    rec = command.record
    return Inbound(
        key=rec.key,
        value=rec.value,
        headers=dict(rec.headers),
        timestamp_ms=int(time.time() * 1000),
        topic=topic,
    )


class _Offsets:
    """Partitions and offsets for the bench's records, and the committed offsets the
    pipeline asks about: a batch's become committed once the next one is processed (the
    worker commits a batch once it is delivered, every second)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.next: dict[int, int] = defaultdict(int)
        self.done: dict[int, int] = {}  # as of the last batch processed
        self.commits: dict[int, int] = {}

    def place(self, rec: Inbound) -> Inbound:
        partition = murmur2(rec.key or b"") % self.partitions
        offset = self.next[partition]
        self.next[partition] = offset + 1
        return dataclasses.replace(rec, partition=partition, offset=offset)

    def batch_done(self) -> None:
        self.commits = dict(self.done)
        self.done = dict(self.next)

    def committed(self, partition: int) -> int:
        return self.commits.get(partition, -1)


def _batches(records: list[Inbound], max_: int, per_key_max: int) -> Iterator[list[Inbound]]:
    """A backlog cut as the agent's take_batches cuts it: at most ``max_`` records, a batch
    ending before the record that would be the (``per_key_max`` + 1)th of its key."""
    batch: list[Inbound] = []
    per_key: dict[bytes | None, int] = {}
    for rec in records:
        if len(batch) >= max_ or per_key.get(rec.key, 0) >= per_key_max:
            yield batch
            batch, per_key = [], {}
        batch.append(rec)
        per_key[rec.key] = per_key.get(rec.key, 0) + 1
    if batch:
        yield batch


async def _one_batch(
    processor: CommandProcessor, batch: list[Inbound], concurrency: int
) -> list[Emit]:
    """One batch as the agent runs it: tenants concurrently, each in order (but for
    chains that may run side by side, agents/tenant_chains.py)."""
    by_tenant: dict[bytes | None, list[Inbound]] = defaultdict(list)
    for rec in batch:
        by_tenant[rec.key].append(rec)

    async def run(group: list[Inbound]) -> list[Emit]:
        async def one(i: int) -> list[Emit]:
            return await processor.process(group[i])

        runs = await run_tenant(processor, group, one, concurrency)
        return [e for emits in runs for e in emits]

    return [
        e for emits in await asyncio.gather(*(run(g) for g in by_tenant.values())) for e in emits
    ]


def _kinds(emitted: list[Emit], events_topic: str) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for e in emitted:
        if e.topic != events_topic:
            kinds[f"({e.topic})"] += 1
            continue
        event = decode_record(e.record.key, e.record.value, dict(e.record.headers))
        kinds[event.get_type().removeprefix("com.paystream.")] += 1
    return kinds
