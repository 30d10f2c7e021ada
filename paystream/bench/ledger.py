"""The ledger sink phase: a ledger-only worker drains the run's outcomes into PostgreSQL.

It replays everything the pipeline phases put on the events topic through the real
``ledger_sink`` agent (its own consumer group), and reads the sink's own Prometheus
metrics for what it wrote and how long each SQL statement took.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from paystream.devstack._process import free_port
from paystream.devstack.worker import WorkerProcess
from paystream.ledger.migrate import APP_ROLE, create_database, upgrade
from paystream.ledger.session import create_engine
from paystream.ledger.sink import asyncpg_url
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth

__all__ = ["LedgerPhaseSkipped", "LedgerResult", "histogram_quantile", "ledger_phase", "scrape"]


@dataclass
class LedgerResult:
    outcomes: int  # records on the events topic
    events_written: int  # ledger event rows inserted
    seconds: float  # worker ready → every outcome consumed
    statements: int
    statement_p50_ms: float | None
    statement_p95_ms: float | None
    statement_p99_ms: float | None
    batch_p95_ms: float | None

    @property
    def events_per_second(self) -> float:
        return self.events_written / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "outcomes": self.outcomes,
            "events_written": self.events_written,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "db_statements": self.statements,
            "db_statement_p50_ms": _r(self.statement_p50_ms),
            "db_statement_p95_ms": _r(self.statement_p95_ms),
            "db_statement_p99_ms": _r(self.statement_p99_ms),
            "batch_p95_ms": _r(self.batch_p95_ms),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format → metric name → [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, raw = name_labels.partition("{")
        labels = {}
        for part in filter(None, raw.rstrip("}").split(",")):
            k, _, v = part.partition("=")
            labels[k] = v.strip('"')
        out.setdefault(name, []).append((labels, float(value)))
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket (seconds)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 1.0)
        prev_le, prev_count = le, count
    return prev_le


def _buckets(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str
) -> list[tuple[float, float]]:
    return [(float(lbl["le"]), v) for lbl, v in metrics.get(f"{name}_bucket", [])]


def _total(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str
) -> float:
    return sum(
        v for lbl, v in metrics.get(name, []) if all(lbl.get(k) == m for k, m in match.items())
    )


async def _topic_size(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()), **client_auth(settings)
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


def _metrics(worker: WorkerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    with worker.open("/metrics", timeout=5) as resp:
        return scrape(resp.read().decode())


class LedgerPhaseSkipped(Exception):
    """The ledger phase cannot run on this server without disturbing another ledger."""


async def _app_password(url: str, settings: Settings) -> str:
    """The password to let ``paystream_app`` log in with for the bench's database.

    The role is the whole server's, not one database's: a new password would lock out a
    ledger already running on that server (and let the bench's password into it). So
    the configured one is used (setting it again changes nothing), a fresh one only
    where the role cannot log in yet (a server of the bench's own), and otherwise the
    phase is skipped."""
    if settings.db_app_password is not None:
        return settings.db_app_password.get_secret_value()
    engine = create_engine(url, poolclass=NullPool, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            logs_in = await conn.scalar(
                text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}
            )
    finally:
        await engine.dispose()
    if logs_in:
        raise LedgerPhaseSkipped(
            f"ledger phase skipped: {APP_ROLE} already logs in on this server (another "
            "ledger's); set PAYSTREAM_DB_APP_PASSWORD to its password to run the phase"
        )
    return base64.urlsafe_b64encode(os.urandom(18)).decode()


async def ledger_phase(
    settings: Settings,
    worker_env: dict[str, str],
    database_url: str,
    base: Path,
    *,
    idle_timeout: float = 60.0,
    say: Any = lambda _msg: None,
) -> LedgerResult:
    """Run a ledger-only worker over the events topic and measure it."""
    url = await create_database(asyncpg_url(database_url), "bench_ledger")
    password = await _app_password(url, settings)
    await upgrade(url, app_password=password)
    outcomes = await _topic_size(settings)
    env = {
        **worker_env,
        "DATABASE_URL": url,
        "PAYSTREAM_DB_APP_PASSWORD": password,
        "PAYSTREAM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "PAYSTREAM_AGENTS": "ledger",
        "PAYSTREAM_APP_ID": f"{settings.app_id}-ledger",
        "PAYSTREAM_DATA_DIR": str(base / "ledger-data"),
    }
    worker = WorkerProcess(env, base / "ledger-worker.log", free_port()).start()
    try:
        await asyncio.to_thread(worker.wait_ready, partitions=settings.partitions)
        started = time.monotonic()
        say(f"ledger: draining {outcomes} outcomes into PostgreSQL…")
        last_progress, last_change = -1.0, time.monotonic()
        while True:
            metrics = await asyncio.to_thread(_metrics, worker)
            consumed = _total(metrics, "paystream_ledger_events_total") + _total(
                metrics, "paystream_ledger_outcomes_skipped_total"
            )
            stats = await asyncio.to_thread(worker.stats)
            processed = (stats or {}).get("worker", {}).get("ledger_processed", 0)
            if processed >= outcomes:
                break
            if processed != last_progress:
                last_progress, last_change = processed, time.monotonic()
                say(f"ledger: {processed}/{outcomes} outcomes stored")
            elif time.monotonic() - last_change > idle_timeout:
                raise TimeoutError(f"ledger sink stalled at {processed}/{outcomes} ({consumed})")
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - started
        metrics = await asyncio.to_thread(_metrics, worker)
    finally:
        worker.stop()
    stmt = _buckets(metrics, "paystream_ledger_db_statement_seconds")
    batch = _buckets(metrics, "paystream_ledger_batch_seconds")

    def ms(q: float, buckets: list[tuple[float, float]]) -> float | None:
        value = histogram_quantile(q, buckets)
        return None if value is None else value * 1000

    return LedgerResult(
        outcomes=outcomes,
        events_written=int(_total(metrics, "paystream_ledger_events_total", result="written")),
        seconds=seconds,
        statements=int(_total(metrics, "paystream_ledger_db_statement_seconds_count")),
        statement_p50_ms=ms(0.50, stmt),
        statement_p95_ms=ms(0.95, stmt),
        statement_p99_ms=ms(0.99, stmt),
        batch_p95_ms=ms(0.95, batch),
    )
