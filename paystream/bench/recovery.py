"""`paystream bench --recovery N`: how long a worker takes to recover N table records.

A worker that takes partitions over replays their changelogs before it is ready: a
rollout is one recovery per worker. This puts N payment records straight into a fresh
deployment's payments changelog (what a worker that had written them would have left),
starts a worker on an empty data directory and times it until ``/readyz`` says ready,
with its CPU; then the same with a handful of records, for the start-up alone. The
difference is the recovery. The table store is the worker's (``PAYSTREAM_TABLE_STORE``);
the broker and Redis are ``KAFKA_BROKER_URL`` / ``REDIS_URL`` when set, else embedded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from paystream.bench.probe import process_cpu_seconds
from paystream.bench.runner import (
    BenchOptions,
    BenchServices,
    _Deployment,
    _deployment,
    _work_dir,
)
from paystream.devstack._process import free_port, wait_until
from paystream.devstack.worker import WorkerProcess
from paystream.settings import Settings, load_settings
from paystream.streams.admin import bootstrap_servers, ensure_topics
from paystream.streams.kafka_auth import client_auth

__all__ = ["RecoveryReport", "run_recovery"]

# Records behind the start-up-only measurement.
BASELINE_RECORDS = 10
# One payment as the command agent stores it (a succeeded charge with its one outcome).
_PAYMENT = {
    "entity_type": "payment",
    "tenant_id": "bench",
    "version": 1,
    "provider": "simulator",
    "status": "succeeded",
    "amount": 1999,
    "currency": "USD",
    "capture_method": "automatic",
    "amount_captured": 1999,
    "provider_payment_id": "pi_" + "a" * 24,
}


@dataclass
class RecoveryReport:
    records: int
    store: str
    ready_s: float  # worker start → ready, with ``records`` to recover
    cpu_s: float  # the worker's CPU meanwhile (all threads)
    baseline_ready_s: float  # the same with BASELINE_RECORDS
    baseline_cpu_s: float

    @property
    def records_per_s(self) -> float:
        return self.records / max(self.ready_s - self.baseline_ready_s, 1e-3)

    @property
    def cpu_us_per_record(self) -> float:
        return (self.cpu_s - self.baseline_cpu_s) / self.records * 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            "recovery_records": self.records,
            "table_store": self.store,
            "ready_s": round(self.ready_s, 2),
            "baseline_ready_s": round(self.baseline_ready_s, 2),
            "worker_cpu_s": round(self.cpu_s, 2),
            "baseline_worker_cpu_s": round(self.baseline_cpu_s, 2),
            "recovery_records_per_s": round(self.records_per_s),
            "recovery_cpu_us_per_record": round(self.cpu_us_per_record, 1),
        }

    def render(self) -> str:
        return "\n".join(
            [
                f"table recovery: {self.records} payment records, store {self.store}",
                f"  ready after {self.ready_s:.1f} s (worker CPU {self.cpu_s:.1f} s); with "
                f"{BASELINE_RECORDS} records {self.baseline_ready_s:.1f} s "
                f"(CPU {self.baseline_cpu_s:.1f} s)",
                f"  recovery: {self.records_per_s:,.0f} records/s, "
                f"{self.cpu_us_per_record:.0f} µs of worker CPU per record",
            ]
        )


def run_recovery(records: int, say: Callable[[str], None]) -> RecoveryReport:
    env_settings = load_settings()
    with _work_dir(None) as base:
        services = BenchServices(base, env_settings).start()
        try:
            small_dep, full_dep = _declared(services, [base / "baseline", base / "full"])
            say(f"start-up alone ({BASELINE_RECORDS} records)…")
            small = _measure(small_dep, base / "baseline", BASELINE_RECORDS, say)
            say(f"recovering {records} records…")
            full = _measure(full_dep, base / "full", records, say)
        finally:
            services.stop()
    return RecoveryReport(records, env_settings.table_store, *full, *small)


def _declared(services: BenchServices, bases: list[Path]) -> list[_Deployment]:
    """A fresh deployment per directory, its tables' changelog topics declared by a
    first worker, whose state is then dropped. The workers run at once (each its own
    app id, so its own group): one start-up waited for, not one per measurement, and
    none runs while a measured worker starts."""
    deps = [_deployment(services, base, BenchOptions(commands=2, tenants=1)) for base in bases]
    for dep in deps:
        asyncio.run(ensure_topics(dep.settings))
    with contextlib.ExitStack() as running:
        first = [
            running.enter_context(WorkerProcess(dep.worker_env, base / "declare.log", free_port()))
            for dep, base in zip(deps, bases, strict=True)
        ]
        for worker in first:
            worker.wait_ready(timeout=120)
    return deps


def _measure(
    dep: _Deployment, base: Path, records: int, say: Callable[[str], None]
) -> tuple[float, float]:
    """(seconds from start to ready, worker CPU seconds meanwhile), ``records`` put
    into ``dep``'s (declared) payments changelog first."""
    asyncio.run(_fill(dep.settings, f"{dep.settings.app_id}-payments-changelog", records))
    shutil.rmtree(dep.settings.data_dir, ignore_errors=True)
    worker = WorkerProcess(dep.worker_env, base / "recover.log", free_port())
    said = [time.monotonic()]

    def ready() -> bool:
        if time.monotonic() - said[0] >= 5:  # progress, every 5 s
            said[0] = time.monotonic()
            left = _remaining(worker)
            if left:  # (0 too until the worker has read the changelogs' ends)
                say(f"  {left} records left to recover…")
        return _ready(worker)

    def alive() -> str | None:
        return f"exited; log: {worker.log_path}" if worker.exited() else None

    worker.start()
    try:
        assert worker.proc is not None
        took = wait_until(
            ready, timeout=max(120.0, records / 1000), what="recovering worker", alive=alive
        )
        return took, process_cpu_seconds(worker.proc.pid) or 0.0
    finally:
        worker.stop()


async def _fill(settings: Settings, topic: str, records: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        pending = []
        for i in range(records):
            key = f"bench-{i % 50}:pay_{i}"
            outcome = {"type": "payment.succeeded", "data": {"object": {"id": f"pay_{i}"}}}
            value = json.dumps(
                {
                    **_PAYMENT,
                    "id": f"pay_{i}",
                    "created_by": f"cmd-{i}",
                    "applied": {f"cmd-{i}": {**outcome, "salt": f"0:{i}"}},
                }
            )
            pending.append(
                await producer.send(
                    topic,
                    value.encode(),
                    key=json.dumps(key).encode(),
                    partition=i % settings.partitions,
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _ready(worker: WorkerProcess) -> bool:
    try:
        with worker.open("/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _remaining(worker: WorkerProcess) -> int | None:
    try:
        with worker.open("/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "paystream_table_recovery_remaining_records":
            return int(sum(s.value for s in family.samples if s.labels.get("kind") == "active"))
    return None
