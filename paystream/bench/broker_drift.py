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
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from paystream.bench.runner import _delete_topics, _work_dir
from paystream.bench.stats import percentile
from paystream.devstack.kafka import TansuBroker
from paystream.settings import BrokerFlavor, Settings, load_settings
from paystream.streams import broker_compat
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth

__all__ = ["DriftReport", "DriftWindow", "run_drift"]

WINDOW_SECONDS = 5.0
# About a bench command's size (binary mode: the data, plus ce_* headers).
RECORD_BYTES = 400


@dataclass
class DriftWindow:
    start_s: float
    held: int  # records sent to the topic by the window's end (acks=-1, 1 ms linger)
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
    max_send_lag_ms: float  # how late the sender was at worst (latency counts from due)

    def as_json(self) -> dict[str, Any]:
        return {
            "broker_drift_rate": self.rate,
            "broker_drift_seconds": self.seconds,
            "partitions": self.partitions,
            "broker": self.flavor,
            "lost": self.lost,
            "max_send_lag_ms": round(self.max_send_lag_ms, 1),
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
        lines.append(
            f"latency counts from each record's due time; the sender was at most "
            f"{self.max_send_lag_ms:.1f} ms late"
            + (" (it could not keep the rate: part of the latency is its own)" if
               self.max_send_lag_ms > 100 else "")
        )  # fmt: skip
        if self.lost:
            lines.append(f"{self.lost} record(s) never read back")
        return "\n".join(lines)


def run_drift(seconds: float, rate: float, say: Callable[[str], None]) -> DriftReport:
    env = load_settings()
    topic = f"paystream-bench-drift-{uuid.uuid4().hex[:8]}"
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
            try:
                return asyncio.run(_drift(settings, topic, seconds, rate, say))
            finally:
                if broker is None:  # a shared broker: leave it as we found it
                    with contextlib.suppress(Exception):
                        asyncio.run(_delete_topics(settings, [topic]))
        finally:
            if broker is not None:
                broker.stop()


async def _drift(
    settings: Settings, topic: str, seconds: float, rate: float, say: Callable[[str], None]
) -> DriftReport:
    servers = bootstrap_servers(settings.require_broker())
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **client_auth(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, settings.partitions, settings.replication_factor)]
        )
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
        for i in range(max(1, math.ceil(seconds / WINDOW_SECONDS)))
    ]
    due_at: dict[int, float] = {}
    read = 0
    late = 0.0
    started: list[AIOKafkaProducer | AIOKafkaConsumer] = []
    reader: asyncio.Task[None] | None = None

    async def read_back(t0: float) -> None:
        nonlocal read
        while read < count:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for rec in records:
                    due = due_at.pop(int(rec.key or b"-1"), None)
                    if due is not None:
                        _window(windows, due - t0).latencies_ms.append((now - due) * 1000)
                        read += 1

    try:
        for client in (producer, consumer):
            await client.start()
            started.append(client)
        t0 = time.monotonic()
        reader = asyncio.create_task(read_back(t0))
        filler = b"x" * RECORD_BYTES
        said = 1  # windows reported on so far, plus one
        for n in range(count):
            due = t0 + n / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            else:
                late = max(late, -wait)
            if reader.done():
                reader.result()  # it failed (the broker gone): say so now, not after SECONDS
            due_at[n] = due
            await producer.send(topic, filler, key=str(n).encode())
            _window(windows, n / rate).held = n + 1
            while said < len(windows) and time.monotonic() >= t0 + said * WINDOW_SECONDS:
                got = sorted(windows[said - 1].latencies_ms)
                p50 = f"{percentile(got, 50):.1f} ms" if got else "-"
                say(
                    f"  {n + 1:,}/{count:,} sent; {windows[said - 1].start_s:.0f}s window p50 {p50}"
                )
                said += 1
        try:
            await asyncio.wait_for(reader, timeout=30)
        except TimeoutError:
            say("  some records were not read back within 30 s")
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for client in reversed(started):
            await client.stop()
    for before, window in itertools.pairwise(windows):  # (a window no record was due in)
        window.held = max(window.held, before.held)
    flavor = settings.broker_flavor.value
    return DriftReport(
        rate, seconds, settings.partitions, flavor, windows, count - read, late * 1000
    )


def _window(windows: list[DriftWindow], at_s: float) -> DriftWindow:
    return windows[min(int(at_s // WINDOW_SECONDS), len(windows) - 1)]
