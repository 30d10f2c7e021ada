"""`paystream bench --broker-drift SECONDS`: does the broker get slower as it fills?

One hop, no worker: records produced at a fixed rate to a fresh topic and read back as
the worker fetches (its fetch max wait and min bytes), for SECONDS; the latency of each
window of WINDOW_SECONDS, beside how many records the topic held by then. On the
embedded Tansu broker latency climbs as the topic fills (a fetch costs it time in
proportion to the record batches in the partitions fetched, and at a fixed rate each
record is a batch), so a fixed-rate phase's figures depend on how long it ran; Apache
Kafka finds a fetch offset through an index, and should stay flat. The broker is
KAFKA_BROKER_URL when set, else an embedded Tansu started for the run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from paystream.bench.runner import _work_dir
from paystream.bench.stats import percentile
from paystream.devstack.kafka import TansuBroker
from paystream.settings import BrokerFlavor, Settings, load_settings
from paystream.streams import broker_compat
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth

__all__ = ["DriftReport", "run_drift"]

WINDOW_SECONDS = 5.0
# About a bench command's size (binary mode: the data, plus ce_* headers).
RECORD_BYTES = 400


@dataclass
class DriftWindow:
    start_s: float
    held: int  # records the topic held at the window's end
    latencies_ms: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        got = sorted(self.latencies_ms)
        return {
            "start_s": self.start_s,
            "held": self.held,
            "records": len(got),
            "p50_ms": round(percentile(got, 50), 2) if got else None,
            "p99_ms": round(percentile(got, 99), 2) if got else None,
        }


@dataclass
class DriftReport:
    rate: float
    seconds: float
    partitions: int
    flavor: str
    windows: list[DriftWindow]
    lost: int  # produced and never read back

    def as_json(self) -> dict[str, Any]:
        return {
            "broker_drift_rate": self.rate,
            "broker_drift_seconds": self.seconds,
            "partitions": self.partitions,
            "broker": self.flavor,
            "lost": self.lost,
            "windows": [w.as_json() for w in self.windows],
        }

    def render(self) -> str:
        lines = [
            f"broker drift ({self.flavor}): one hop at {self.rate:g} records/s for "
            f"{self.seconds:g} s, {self.partitions} partitions, the worker's fetch settings",
            f"{'window':>8} {'held':>8} {'p50 ms':>8} {'p99 ms':>8}",
        ]
        for w in self.windows:
            row = w.as_json()
            p50, p99 = row["p50_ms"], row["p99_ms"]
            lines.append(
                f"{w.start_s:>7.0f}s {w.held:>8,} "
                + (f"{p50:>8.1f} {p99:>8.1f}" if p50 is not None else f"{'-':>8} {'-':>8}")
            )
        if self.lost:
            lines.append(f"{self.lost} record(s) never read back")
        return "\n".join(lines)


def run_drift(
    seconds: float, rate: float, partitions: int, say: Callable[[str], None]
) -> DriftReport:
    env = load_settings()
    with _work_dir(None) as base:
        broker = None if env.kafka_broker_url else TansuBroker(Path(base) / "tansu.log")
        try:
            if broker is not None:
                broker.start()
                settings = env.model_copy(
                    update={"kafka_broker_url": broker.url, "broker_flavor": BrokerFlavor.TANSU}
                )
            else:
                settings = env
            return asyncio.run(_drift(settings, seconds, rate, partitions, say))
        finally:
            if broker is not None:
                broker.stop()


async def _drift(
    settings: Settings,
    seconds: float,
    rate: float,
    partitions: int,
    say: Callable[[str], None],
) -> DriftReport:
    topic = f"paystream-bench-drift-{uuid.uuid4().hex[:8]}"
    servers = bootstrap_servers(settings.require_broker())
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **client_auth(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, settings.replication_factor)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, **client_auth(settings), linger_ms=1, acks=-1
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        **client_auth(settings),
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=broker_compat.worker_fetch_max_wait_ms(settings),
        fetch_min_bytes=broker_compat.worker_fetch_min_bytes(settings),
    )
    count = int(seconds * rate)
    windows = [
        DriftWindow(start_s=i * WINDOW_SECONDS, held=0)
        for i in range(max(1, int(-(-seconds // WINDOW_SECONDS))))
    ]
    due_at: dict[int, float] = {}
    read = 0
    await producer.start()
    await consumer.start()
    try:
        t0 = time.monotonic()

        async def read_back() -> None:
            nonlocal read
            while read < count:
                batches = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batches.values():
                    for rec in records:
                        n = int(rec.key or b"-1")
                        due = due_at.pop(n, None)
                        if due is not None:
                            _window(windows, due - t0).latencies_ms.append((now - due) * 1000)
                            read += 1

        reader = asyncio.create_task(read_back())
        filler = b"x" * RECORD_BYTES
        next_say = t0 + WINDOW_SECONDS
        for n in range(count):
            due = t0 + n / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            due_at[n] = due
            await producer.send(topic, filler, key=str(n).encode())
            _window(windows, n / rate).held = n + 1
            if time.monotonic() >= next_say:
                done = windows[int((next_say - t0) // WINDOW_SECONDS) - 1]
                p50 = statistics.median(done.latencies_ms) if done.latencies_ms else float("nan")
                say(f"  {n + 1:,}/{count:,} sent; {done.start_s:.0f}s window p50 {p50:.1f} ms")
                next_say += WINDOW_SECONDS
        try:
            await asyncio.wait_for(reader, timeout=30)
        except TimeoutError:
            say("  some records were not read back within 30 s")
    finally:
        await producer.stop()
        await consumer.stop()
    flavor = settings.broker_flavor.value
    return DriftReport(rate, seconds, partitions, flavor, windows, count - read)


def _window(windows: list[DriftWindow], at_s: float) -> DriftWindow:
    return windows[min(int(at_s // WINDOW_SECONDS), len(windows) - 1)]
