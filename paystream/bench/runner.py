"""Orchestrates one `paystream bench` run: services, deployment, phases, baselines, profile.

Phases, each with its system under test alone on the machine (the previous one stopped):

1. **pipeline, full speed** - a real `paystream worker` (simulator gateway, Redis) is
   started and warmed up (one command per tenant), then N commands are produced as
   fast as the client allows; throughput is measured at the outcome topic from the
   first to the last outcome, latency per command is outcome arrival - produce time
   (so at full speed it is mostly queueing).
2. **pipeline at a fixed rate** - ``rate * rate_seconds`` fresh commands paced
   open-loop at the offered rate; this is where p50/p95/p99 are meaningful.
3. **raw aiokafka passthrough** and 4. **bare Faust forwarder** - each in its own
   process on the same broker, over input topics pre-filled with commands of the same
   mix and sizes; throughput from the first to the last record at the output topic.

Every run uses its own app id and topic names (``bench-<tag>``), so it can share a real
broker with anything else; topics are deleted afterwards on a broker we did not start.
The ledger sink is not part of the measurement (``DATABASE_URL`` is cleared for the
worker): the bench measures command → outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient

from paystream.bench.first_record import read_first_record
from paystream.bench.http_phases import WAIT_SECONDS, HttpPhases, http_loads
from paystream.bench.ledger import LedgerPhaseSkipped, LedgerResult, ledger_phase
from paystream.bench.load import BenchCommand, bench_tenants, generate_commands, tenant_ids
from paystream.bench.measure import Say, phase_result, progress_printer
from paystream.bench.probe import (
    CpuSampler,
    OutputWatcher,
    make_producer,
    send_burst,
    send_paced,
)
from paystream.bench.profiling import PySpy, summarise
from paystream.bench.quiet_gc import between_phases, full_collections_held
from paystream.bench.stats import BenchReport, PhaseResult, percentiles_text
from paystream.devstack._process import free_port, kill_process_group, parent_death_signal
from paystream.devstack.ingress import IngressProcess
from paystream.devstack.kafka import TansuBroker
from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.redis import EmbeddedRedis
from paystream.devstack.worker import WorkerProcess
from paystream.settings import BrokerFlavor, Settings, load_settings
from paystream.streams import broker_compat
from paystream.streams.admin import bootstrap_servers, ensure_topics
from paystream.streams.kafka_auth import client_auth
from paystream.tenancy.registry import put_tenant

__all__ = ["BenchOptions", "BenchServices", "batch_series", "mean_batch", "run_bench"]


@dataclass
class BenchOptions:
    """What to run; see `paystream bench --help` for each knob."""

    commands: int = 5000
    tenants: int = 10
    rate: float = 500.0
    rate_seconds: float = 5.0
    baselines: bool = True
    ledger: bool = True  # the ledger sink phase (needs PostgreSQL: embedded unless DATABASE_URL)
    baseline_records: int | None = None  # default: max(commands, 5000)
    raw_records: int | None = None  # default: max(4 * baseline_records, 20000)
    profile: bool = False
    profile_rate: int = 250
    profile_phase: str = "full"  # "full" or "rate"
    seed: int = 7
    idle_timeout: float = 30.0
    keep_dir: Path | None = None  # keep logs and profiles here (default: temp, removed)
    latency_csv: Path | None = None  # per-command latencies of the rate phase
    http: bool = True  # the ingress phases: the same worker fed over POST /v1/commands
    http_via: str = "ingress"  # "ingress": a `paystream ingress` process; "worker": its route
    http_commands: int | None = None  # default: min(commands, 5000)
    say: Say = field(default=lambda _msg: None)

    def __post_init__(self) -> None:
        if self.commands < 2:
            raise ValueError("need at least 2 commands")
        if self.tenants < 1:
            raise ValueError("need at least 1 tenant")
        if not (math.isfinite(self.rate) and math.isfinite(self.rate_seconds)):
            raise ValueError("rate and rate_seconds must be finite numbers")
        if self.rate < 0 or self.rate_seconds <= 0:
            raise ValueError("rate must be >= 0 and rate_seconds > 0")
        if self.http_via not in ("ingress", "worker"):
            raise ValueError("http_via must be ingress or worker")
        if self.http_commands is not None and self.http_commands < 1:
            raise ValueError("need at least 1 HTTP command")
        if self.raw_records is not None and self.raw_records < 1:
            raise ValueError("need at least 1 raw passthrough record")


class BenchServices:
    """Broker and Redis: the configured ones (environment) or embedded ones we start."""

    def __init__(self, base_dir: Path, env_settings: Settings) -> None:
        self.base_dir = base_dir
        self.env_settings = env_settings
        self.broker: TansuBroker | None = None
        self.redis: EmbeddedRedis | None = None
        self.postgres: EmbeddedPostgres | None = None

    def start(self, *, postgres: bool = False) -> BenchServices:
        try:
            if self.env_settings.kafka_broker_url is None:
                self.broker = TansuBroker(self.base_dir / "tansu.log")
                self.broker.start()
            if self.env_settings.redis_url is None:
                self.redis = EmbeddedRedis(self.base_dir / "redis")
                self.redis.start()
            if postgres and self.env_settings.database_url is None:
                self.postgres = EmbeddedPostgres(self.base_dir / "postgres")
                self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in (self.broker, self.redis, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()

    @property
    def broker_url(self) -> str:
        return self.broker.url if self.broker else self.env_settings.require_broker()

    @property
    def redis_url(self) -> str:
        if self.redis is not None:
            return self.redis.url
        assert self.env_settings.redis_url is not None
        return self.env_settings.redis_url

    @property
    def database_url(self) -> str | None:
        return self.postgres.url if self.postgres else self.env_settings.database_url

    @property
    def flavor(self) -> BrokerFlavor:
        return BrokerFlavor.TANSU if self.broker else self.env_settings.broker_flavor


@dataclass
class _Deployment:
    tag: str
    settings: Settings
    worker_env: dict[str, str]
    tenants: list[str]
    extra_topics: list[str]


def _deployment(services: BenchServices, base: Path, options: BenchOptions) -> _Deployment:
    tag = uuid.uuid4().hex[:8]
    topics = {
        f"PAYSTREAM_{name.upper()}_TOPIC": f"bench-{tag}.{name}"
        for name in (
            "commands", "events", "dlq", "retry", "ledger_dlq", "tenants", "fraud", "analytics",
        )
    }  # fmt: skip
    env = {
        "KAFKA_BROKER_URL": services.broker_url,
        "REDIS_URL": services.redis_url,
        "DATABASE_URL": "",  # no ledger sink: the bench measures command → outcome
        "PAYSTREAM_BROKER_FLAVOR": services.flavor.value,
        "PAYSTREAM_APP_ID": f"bench-{tag}",
        "PAYSTREAM_DATA_DIR": str(base / "data"),
        "PAYSTREAM_LOG_LEVEL": os.environ.get("PAYSTREAM_LOG_LEVEL", "info"),
        # The ingress phases send under the platform token (one of this run's own).
        "PAYSTREAM_INGRESS_TOKEN": secrets.token_urlsafe(32),
        # Not inside a measured phase: a consumer's start and a round of broker requests
        # (the bench's parked topics are empty anyway).
        "PAYSTREAM_PARKED_MEASURE_SECONDS": "0",
        **topics,
    }
    fields = {
        k.removeprefix("PAYSTREAM_").lower(): v
        for k, v in env.items()
        if k.startswith("PAYSTREAM_") and k != "PAYSTREAM_INGRESS_TOKEN"
    }
    settings = load_settings(
        kafka_broker_url=env["KAFKA_BROKER_URL"],
        redis_url=env["REDIS_URL"],
        database_url=None,
        **fields,
    )
    extra = [
        f"bench-{tag}.{n}"
        for n in ("raw-in", "raw-out", "fwd-in", "fwd-out", "floor-in", "floor-out")
    ]
    return _Deployment(tag, settings, env, tenant_ids(tag, options.tenants), extra)


@contextlib.contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    base = Path(tempfile.mkdtemp(prefix="paystream-bench-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


class _Child:
    """A baseline process in its own process group, logging to a file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self._log: IO[bytes] = log_path.open("ab")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.proc.args!r} exited with {self.proc.returncode}; log: {self.log_path}"
            )

    def stop(self) -> None:
        kill_process_group(self.proc, term_timeout=10)
        self._log.close()


# The worker's batch histograms the bench reads: (sum, count) of each.
_BATCH_SERIES = {
    "paystream_batch_size": "batch",
    'paystream_batch_seconds{stage="process"}': "process",
    'paystream_batch_seconds{stage="publish"}': "publish",
}


def _batch_counters(worker: WorkerProcess) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of the worker's batch size and batch stage-time histograms."""
    try:
        with worker.open("/metrics", timeout=2) as resp:
            return batch_series(resp.read().decode())
    except OSError:
        return None


def batch_series(text: str) -> dict[str, tuple[float, float]] | None:
    """(sum, count) per _BATCH_SERIES label found in a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    found: dict[str, tuple[float, float]] = {}
    for series, label in _BATCH_SERIES.items():
        base, brace, labels = series.partition("{")
        total = values.get(f"{base}_sum{brace}{labels}")
        count = values.get(f"{base}_count{brace}{labels}")
        if total is not None and count is not None:
            found[label] = (total, count)
    return found if "batch" in found else None


def mean_batch(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None
) -> tuple[float | None, dict[str, float]]:
    """Mean commands per batch between two readings, and each stage's mean ms per batch."""
    if before is None or after is None:
        return None, {}
    means: dict[str, float] = {}
    for label, (total, count) in after.items():
        if label in before and count > before[label][1]:
            means[label] = (total - before[label][0]) / (count - before[label][1])
    size = means.pop("batch", None)
    return size, {label: round(1000 * mean, 1) for label, mean in means.items()}


def _write_latencies(
    path: Path, commands: Sequence[BenchCommand], sent_at: dict[str, float], watcher: OutputWatcher
) -> None:
    """CSV: send offset (s from the first send), latency (ms), command and outcome types,
    and the absolute send time (``time.monotonic()``, to line up with other logs)."""
    start = min(sent_at.values())
    with path.open("w") as f:
        f.write("sent_s,latency_ms,command,outcome,sent_monotonic\n")
        for c in commands:
            got = watcher.arrivals.get(c.command_id)
            latency = "" if got is None else f"{1000 * (got - sent_at[c.command_id]):.2f}"
            outcome = watcher.types.get(c.command_id, "")
            sent = sent_at[c.command_id]
            f.write(f"{sent - start:.4f},{latency},{c.command_type},{outcome},{sent:.4f}\n")


def _latency_split(
    commands: Sequence[BenchCommand], sent_at: dict[str, float], watcher: OutputWatcher
) -> str:
    """Where rate-phase latency goes: until the worker produced the outcome (fetch, queue,
    processing) and after (broker acknowledgement, our fetch), from record timestamps."""
    worker, delivery = [], []
    for c in commands:
        got, lag = watcher.arrivals.get(c.command_id), watcher.delivery.get(c.command_id)
        if got is not None and lag is not None:
            total = got - sent_at[c.command_id]
            delivery.append(1000 * lag)
            worker.append(1000 * (total - lag))

    if not worker:
        return "rate latency split: no outcomes"
    return (
        f"rate latency p50/p95/p99 ms: command due → outcome produced {percentiles_text(worker)}; "
        f"outcome produced → read {percentiles_text(delivery)}"
    )


def _redis_commands(url: str) -> int | None:
    """Redis's ``total_commands_processed`` (server-wide), or None if it does not answer."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


async def _register_tenants(settings: Settings, tenants: Sequence[str]) -> None:
    for tenant in bench_tenants(tenants):
        await put_tenant(settings, tenant)


def _probe_wait_ms(settings: Settings) -> int:
    # The watcher is a measuring instrument: on Tansu (which re-checks a waiting fetch
    # only every max_wait/2) a shorter wait keeps its own delay out of the latency.
    return 10 if settings.embedded_broker else broker_compat.worker_fetch_max_wait_ms(settings)


async def _pipeline_phases(
    dep: _Deployment, options: BenchOptions, base: Path, report_notes: list[str], cpu: CpuSampler
) -> _WorkerPhases:
    settings, say = dep.settings, options.say
    say(f"starting worker (app id {settings.app_id}, {len(dep.tenants)} tenants)…")
    worker = WorkerProcess(dep.worker_env, base / "worker.log", free_port())
    producer = make_producer(settings.require_broker())
    watcher = OutputWatcher(
        settings.require_broker(),
        settings.events_topic,
        id_header="ce_causationid",
        fetch_max_wait_ms=_probe_wait_ms(settings),
    )
    with worker:
        started = time.monotonic()
        await asyncio.to_thread(worker.wait_ready, dep.tenants, partitions=settings.partitions)
        say(f"worker ready in {time.monotonic() - started:.1f} s")
        if worker.proc is not None:
            cpu.add("worker", worker.proc.pid)
        await producer.start()
        await watcher.start()
        try:
            # Warm-up: a command per tenant builds gateways, Redis connections, caches.
            warm = [
                c
                for i, tenant in enumerate(dep.tenants)
                for c in generate_commands(1, [tenant], prefix=f"w{i}-", seed=options.seed)
            ]
            await send_burst(producer, settings.commands_topic, warm)
            got = await watcher.wait_for(
                [c.command_id for c in warm], idle_timeout=options.idle_timeout
            )
            if got < len(warm):
                raise RuntimeError(f"warm-up: {got}/{len(warm)} outcomes; see {worker.log_path}")

            load = generate_commands(
                options.commands, dep.tenants, prefix=f"{dep.tag}-f-", seed=options.seed
            )
            between_phases()
            spy = _spy(options, worker, base, "full")
            counters = _batch_counters(worker)
            redis_before = await asyncio.to_thread(_redis_commands, dep.worker_env["REDIS_URL"])
            say(f"pipeline: producing {len(load)} commands at full speed…")
            sent = await send_burst(producer, settings.commands_topic, load)
            say(f"  produced in {sent.finished - sent.started:.2f} s ({sent.rate:,.0f}/s)")
            await watcher.wait_for(
                [c.command_id for c in load],
                idle_timeout=options.idle_timeout,
                progress=progress_printer(say, "outcomes"),
            )
            cpu.sample()
            profile = None
            if spy is not None:
                profile = _stop_spy(spy, options, len(load))
                report_notes.append("full-speed throughput measured under py-spy sampling")
            full = phase_result("pipeline", load, watcher, sent.sent_at, cpu, "worker")
            counters, before = _batch_counters(worker), counters
            full.mean_batch, full.batch_stage_ms = mean_batch(before, counters)
            redis_after = await asyncio.to_thread(_redis_commands, dep.worker_env["REDIS_URL"])
            # Each INFO call counts itself once.
            full.redis_commands = _delta(redis_before, redis_after)
            if full.redis_commands is not None:
                full.redis_commands -= 1

            rate_result = None
            if options.rate > 0:
                count = max(1, int(options.rate * options.rate_seconds))
                paced = generate_commands(
                    count, dep.tenants, prefix=f"{dep.tag}-r-", seed=options.seed + 1
                )
                say(f"rate: {count} commands at {options.rate:g}/s…")
                between_phases()
                spy = _spy(options, worker, base, "rate")
                sent_r = await send_paced(
                    producer,
                    settings.commands_topic,
                    paced,
                    options.rate,
                    progress=progress_printer(say, "sent"),
                )
                await watcher.wait_for(
                    [c.command_id for c in paced], idle_timeout=options.idle_timeout
                )
                cpu.sample()
                if spy is not None:
                    profile = _stop_spy(spy, options, len(paced))
                    report_notes.append("rate-phase latency measured under py-spy sampling")
                rate_result = phase_result(
                    "rate",
                    paced,
                    watcher,
                    sent_r.sent_at,
                    cpu,
                    "worker",
                    offered_rate=options.rate,
                    achieved_rate=sent_r.rate,
                )
                rate_result.mean_batch, rate_result.batch_stage_ms = mean_batch(
                    counters, _batch_counters(worker)
                )
                report_notes.append(_latency_split(paced, sent_r.sent_at, watcher))
                report_notes.append(
                    "rate latency counts from each command's due time (start + i/rate); "
                    f"the bench sent at most {1000 * sent_r.max_send_lag:.1f} ms late"
                )
                if options.latency_csv is not None:
                    _write_latencies(options.latency_csv, paced, sent_r.sent_at, watcher)
            http: tuple[PhaseResult | None, PhaseResult | None] = (None, None)
            if options.http:
                http = await _http_phases(worker, dep, options, watcher, cpu, report_notes, base)
            if watcher.duplicates:
                report_notes.append(f"{watcher.duplicates} duplicate outcome(s) (redelivery)")
            duplicates = watcher.duplicates
        finally:
            await watcher.stop()
            await producer.stop()
    cpu.pids.pop("worker", None)
    return _WorkerPhases(full, rate_result, profile, *http, duplicates=duplicates)


@dataclass
class _WorkerPhases:
    full: PhaseResult
    rate: PhaseResult | None
    profile: dict[str, object] | None
    http: PhaseResult | None
    http_rate: PhaseResult | None
    # Outcomes read twice (a redelivery: byte-identical, but a sign of a batch redone).
    duplicates: int = 0


async def _http_phases(
    worker: WorkerProcess,
    dep: _Deployment,
    options: BenchOptions,
    watcher: OutputWatcher,
    cpu: CpuSampler,
    notes: list[str],
    base: Path,
) -> tuple[PhaseResult, PhaseResult | None]:
    """The same worker fed over HTTP (paystream/bench/http_phases.py): through a
    `paystream ingress` process of its own, or the worker's own route."""
    count = options.http_commands or min(options.commands, 5000)
    paced_count = max(1, int(options.rate * options.rate_seconds)) if options.rate > 0 else 0
    warm, load, paced = http_loads(dep.tag, dep.tenants, count, paced_count, options.seed)
    between_phases()
    with contextlib.ExitStack() as running:
        url = worker.base_url
        if options.http_via == "ingress":
            ingress = running.enter_context(
                IngressProcess(dep.worker_env, base / "ingress.log", free_port())
            )
            await asyncio.to_thread(ingress.wait_ready)
            assert ingress.proc is not None
            cpu.add("ingress", ingress.proc.pid)
            cpu.sample()  # (a reading before its first request: its CPU is cut from there)
            url = ingress.base_url
        phases = HttpPhases(
            url,
            dep.worker_env["PAYSTREAM_INGRESS_TOKEN"],
            watcher,
            cpu,
            idle_timeout=options.idle_timeout,
            say=options.say,
            notes=notes,
        )
        # No connection limit: paced requests must not queue in the client (the
        # full-speed phase bounds itself by its senders).
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=options.idle_timeout + WAIT_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # Full speed first: no sender waits there, and the outcome reader the warm-up
            # starts (for the paced senders' waits) must not run beside it.
            full = await phases.full_speed(session, load)
            at_rate = None
            if paced:
                await phases.warm_up(session, warm)
                between_phases()
                at_rate = await phases.at_rate(session, paced, options.rate)
    cpu.pids.pop("ingress", None)
    for phase in (full, at_rate):
        if phase is not None:
            phase.via = options.http_via
    return full, at_rate


def _spy(options: BenchOptions, worker: WorkerProcess, base: Path, phase: str) -> PySpy | None:
    if not options.profile or options.profile_phase != phase or worker.proc is None:
        return None
    return PySpy(worker.proc.pid, base / "profile.txt", options.profile_rate)


def _stop_spy(spy: PySpy, options: BenchOptions, commands: int) -> dict[str, Any]:
    out = spy.stop()
    text = out.read_text() if out.exists() else ""
    profile = summarise(text, rate=options.profile_rate, commands=commands)
    profile["raw_path"] = str(out)
    profile["phase"] = options.profile_phase
    return profile


async def _baseline(
    name: str,
    argv: Sequence[str],
    child_env: dict[str, str],
    src: str,
    dst: str,
    records: Sequence[BenchCommand],
    dep: _Deployment,
    options: BenchOptions,
    base: Path,
    cpu: CpuSampler,
) -> PhaseResult:
    settings, say = dep.settings, options.say
    between_phases()
    producer = make_producer(settings.require_broker())
    await producer.start()
    try:
        await send_burst(producer, src, records)
    finally:
        await producer.stop()
    watcher = OutputWatcher(
        settings.require_broker(),
        dst,
        id_header="ce_id",
        fetch_max_wait_ms=_probe_wait_ms(settings),
    )
    await watcher.start()
    say(f"{name}: forwarding {len(records)} pre-filled records…")
    child = _Child(argv, child_env, base / f"{name}.log")
    cpu.add(name, child.proc.pid)
    try:
        ids = [c.command_id for c in records]

        def progress(done: int, total: int, elapsed: float) -> None:
            child.check()
            if done:
                progress_printer(say, name)(done, total, elapsed)

        # The Faust worker needs a few seconds to join its group: allow for it.
        await watcher.wait_for(ids, idle_timeout=options.idle_timeout + 30, progress=progress)
        cpu.sample()
    finally:
        child.stop()
        await watcher.stop()
    started = read_first_record(child.log_path)
    result = phase_result(name, records, watcher, None, cpu, name, started=started)
    del cpu.pids[name]
    return result


async def _passthrough_at_rate(
    child_env: dict[str, str],
    src: str,
    dst: str,
    dep: _Deployment,
    options: BenchOptions,
    base: Path,
    cpu: CpuSampler,
) -> PhaseResult:
    """The broker's own latency floor: the rate phase's load, at the same offered rate and
    for as long, through the raw aiokafka passthrough (two hops, like the pipeline, and
    the worker's fetch settings), over topics that hold what the pipeline's held by its
    rate phase (the full-speed phase's commands, in the same bursts, passed through
    first): the embedded broker slows as a topic fills (``--broker-drift``), and a floor
    on empty topics was the lower for it. Whatever this takes, no pipeline on this
    broker beats.
    """
    settings, say = dep.settings, options.say
    broker, wait_ms = settings.require_broker(), _probe_wait_ms(settings)
    watcher = OutputWatcher(broker, dst, id_header="ce_id", fetch_max_wait_ms=wait_ms)
    producer = make_producer(broker)
    await watcher.start()
    await producer.start()
    child = _Child(
        [sys.executable, "-m", "paystream.bench.raw_passthrough", src, dst],
        child_env,
        base / "floor.log",
    )
    cpu.add("floor", child.proc.pid)
    try:
        # Warm-up: the passthrough is reading (and the producer connected) before timing.
        warm = generate_commands(len(dep.tenants), dep.tenants, prefix=f"{dep.tag}-fw-", seed=5)
        await send_burst(producer, src, warm)
        await watcher.wait_for([c.command_id for c in warm], idle_timeout=options.idle_timeout)
        fill = generate_commands(
            options.commands, dep.tenants, prefix=f"{dep.tag}-ff-", seed=options.seed
        )
        say(f"broker floor: {len(fill)} records first, as the pipeline's full-speed phase…")
        await send_burst(producer, src, fill)
        got = await watcher.wait_for(
            [c.command_id for c in fill], idle_timeout=options.idle_timeout
        )
        if got < len(fill):
            child.check()  # (it died: its log says why)
            raise RuntimeError(f"broker floor: {got}/{len(fill)} records passed through")
        count = max(1, int(options.rate * options.rate_seconds))
        paced = generate_commands(
            count, dep.tenants, prefix=f"{dep.tag}-fr-", seed=options.seed + 1
        )
        say(f"broker floor: {count} records at {options.rate:g}/s through raw aiokafka…")
        between_phases()
        sent = await send_paced(producer, src, paced, options.rate)
        await watcher.wait_for([c.command_id for c in paced], idle_timeout=options.idle_timeout)
        child.check()
        cpu.sample()
    finally:
        child.stop()
        await producer.stop()
        await watcher.stop()
    result = phase_result(
        "floor",
        paced,
        watcher,
        sent.sent_at,
        cpu,
        "floor",
        offered_rate=options.rate,
        achieved_rate=sent.rate,
    )
    result.outcome_types = {}  # records forwarded unchanged: there are no outcomes
    del cpu.pids["floor"]
    return result


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.require_broker()), **client_auth(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def _run(services: BenchServices, options: BenchOptions, base: Path) -> BenchReport:
    dep = _deployment(services, base, options)
    settings = dep.settings
    broker_compat.apply(settings)
    await ensure_topics(settings, extra=dep.extra_topics if options.baselines else None)
    await _register_tenants(settings, dep.tenants)
    notes: list[str] = []
    pids = {"bench": os.getpid()}
    for svc_name, svc in (("broker", services.broker), ("redis", services.redis)):
        if svc is not None and svc.pid is not None:
            pids[svc_name] = svc.pid
    cpu = CpuSampler(pids)
    cpu.start()
    try:
        with full_collections_held():
            phases = await _pipeline_phases(dep, options, base, notes, cpu)
            full, rate, profile = phases.full, phases.rate, phases.profile
            ledger: LedgerResult | None = None
            if options.ledger and services.database_url:
                between_phases()
                try:
                    ledger = await ledger_phase(
                        settings,
                        {k: v for k, v in dep.worker_env.items() if k != "DATABASE_URL"},
                        services.database_url,
                        base,
                        idle_timeout=options.idle_timeout,
                        say=options.say,
                    )
                except LedgerPhaseSkipped as skipped:
                    notes.append(str(skipped))
                    options.say(str(skipped))
            raw = faust = floor = None
            if options.baselines:
                count = options.baseline_records or max(options.commands, 5000)
                # The raw client is ~10x faster than anything else: give it a longer window.
                raw_count = options.raw_records or max(4 * count, 20_000)
                child_env = {k: v for k, v in dep.worker_env.items() if k != "DATABASE_URL"}
                raw_in, raw_out, fwd_in, fwd_out, floor_in, floor_out = dep.extra_topics
                raw_load = generate_commands(raw_count, dep.tenants, prefix=f"{dep.tag}-x-", seed=3)
                raw = await _baseline(
                    "raw",
                    [sys.executable, "-m", "paystream.bench.raw_passthrough", raw_in, raw_out],
                    child_env, raw_in, raw_out, raw_load, dep, options, base, cpu,
                )  # fmt: skip
                if options.rate > 0:
                    floor = await _passthrough_at_rate(
                        child_env, floor_in, floor_out, dep, options, base, cpu
                    )
                fwd_load = generate_commands(count, dep.tenants, prefix=f"{dep.tag}-y-", seed=4)
                fwd_env = {
                    **child_env,
                    "BENCH_FORWARD_SRC": fwd_in,
                    "BENCH_FORWARD_DST": fwd_out,
                    "BENCH_FORWARD_APP_ID": f"bench-{dep.tag}-fwd",
                    "BENCH_FORWARD_DATADIR": str(base / "fwd-data"),
                }
                faust = await _baseline(
                    "faust",
                    [sys.executable, "-m", "paystream.bench.faust_forwarder"],
                    fwd_env, fwd_in, fwd_out, fwd_load, dep, options, base, cpu,
                )  # fmt: skip
    finally:
        await cpu.stop()
        if services.broker is None:  # a shared broker: leave it as we found it
            with contextlib.suppress(Exception):
                await _delete_topics(settings, [*settings.topic_names(), *dep.extra_topics])
    return BenchReport(
        commands=options.commands,
        tenants=options.tenants,
        broker=services.flavor.value,
        pipeline=full,
        rate=rate,
        raw=raw,
        faust=faust,
        floor=floor,
        ledger=ledger,
        profile=profile,
        notes=notes,
        http=phases.http,
        http_rate=phases.http_rate,
        duplicate_outcomes=phases.duplicates,
    )


def run_bench(options: BenchOptions) -> BenchReport:
    """Start what is not configured, run every phase, stop everything; blocking."""
    env_settings = load_settings()
    with _work_dir(options.keep_dir) as base:
        services = BenchServices(base, env_settings)
        options.say("starting embedded services (where not configured)…")
        services.start(postgres=options.ledger)
        try:
            report = asyncio.run(_run(services, options, base))
        finally:
            services.stop()
        if options.profile and options.keep_dir is None and report.profile is not None:
            report.profile.pop("raw_path", None)
        return report
