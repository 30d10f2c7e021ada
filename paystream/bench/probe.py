"""The load side of the benchmark: produce records (burst or paced) and watch an output topic.

Both run in the bench process on one monotonic clock, so latency is simply
*arrival at the output consumer* - *moment the record was handed to the producer*.
The watcher reads with a plain assigned consumer (no group, nothing to join), from the
beginning of a topic created for this run, and identifies records by a header
(``ce_causationid`` on outcomes, ``ce_id`` on forwarded commands).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from paystream.bench.load import BenchCommand
from paystream.settings import load_settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth

__all__ = [
    "CpuSampler",
    "OutputWatcher",
    "Progress",
    "SendLog",
    "make_producer",
    "process_cpu_seconds",
    "send_burst",
    "send_paced",
]

#: ``progress(done, total, elapsed_seconds)``, called about once a second.
Progress = Callable[[int, int, float], None]


def make_producer(broker_url: str) -> AIOKafkaProducer:
    """The load producer: acks from all replicas, tiny linger (latency matters at low rates)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(broker_url),
        **client_auth(load_settings()),
        acks="all",
        linger_ms=1,
        max_batch_size=256 * 1024,
    )


@dataclass
class SendLog:
    """When each record was due (paced sends) or handed to the producer (bursts), in
    monotonic seconds: latency is measured from there."""

    sent_at: dict[str, float] = field(default_factory=dict)
    # Paced sends: the most any record went out after it was due.
    max_send_lag: float = 0.0
    started: float = 0.0
    finished: float = 0.0

    @property
    def rate(self) -> float:
        """Sends per second: N sends span N - 1 intervals (the first at ``started``)."""
        span, sends = self.finished - self.started, len(self.sent_at)
        return (sends - 1) / span if sends > 1 and span > 0 else 0.0


async def send_burst(
    producer: AIOKafkaProducer, topic: str, commands: Sequence[BenchCommand]
) -> SendLog:
    """Produce everything as fast as the client allows, then wait for every ack."""
    log = SendLog(started=time.monotonic())
    futures = []
    for cmd in commands:
        rec = cmd.record
        log.sent_at[cmd.command_id] = time.monotonic()
        futures.append(
            await producer.send(topic, rec.value, key=rec.key, headers=list(rec.headers))
        )
    await asyncio.gather(*futures)
    log.finished = time.monotonic()
    return log


async def send_paced(
    producer: AIOKafkaProducer,
    topic: str,
    commands: Sequence[BenchCommand],
    rate: float,
    progress: Progress | None = None,
) -> SendLog:
    """Open-loop sends at ``rate`` per second: never waits for outcomes or acks in line.

    Each record is due at ``start + i / rate``; a late loop sends what is due at once, so
    the offered rate holds even when the event loop hiccups. Latency counts from the due
    time, not the send: a stall of this process (the worker holding the CPU) is waiting
    a real producer's command would have done, and must not drop out of the figures
    (coordinated omission).
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    log = SendLog(started=time.monotonic())
    futures = []
    next_report = log.started + 1
    i = 0
    while i < len(commands):
        now = time.monotonic()
        due = min(len(commands), int((now - log.started) * rate) + 1)
        while i < due:
            rec = commands[i].record
            due_at = log.started + i / rate
            log.sent_at[commands[i].command_id] = due_at
            log.max_send_lag = max(log.max_send_lag, time.monotonic() - due_at)
            futures.append(
                await producer.send(topic, rec.value, key=rec.key, headers=list(rec.headers))
            )
            i += 1
        if progress is not None and now >= next_report:
            progress(i, len(commands), now - log.started)
            next_report += 1
        if i < len(commands):
            await asyncio.sleep(max(0.0, log.started + i / rate - time.monotonic()))
    log.finished = time.monotonic()
    await asyncio.gather(*futures)
    return log


class OutputWatcher:
    """Consume ``topic`` from the beginning and note when each identified record arrived."""

    def __init__(
        self, broker_url: str, topic: str, *, id_header: str, fetch_max_wait_ms: int
    ) -> None:
        self.topic = topic
        self.id_header = id_header
        self.arrivals: dict[str, float] = {}
        # Seconds from the outcome record's timestamp (set when the worker produced it)
        # to our reading it: the broker's acknowledgement plus our fetch. Wall clock.
        self.delivery: dict[str, float] = {}
        self.types: dict[str, str] = {}
        self.duplicates = 0
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(broker_url),
            **client_auth(load_settings()),
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        tps = await topic_partitions(self._consumer, self.topic)
        if not tps:
            raise RuntimeError(f"topic {self.topic!r} has no partitions (was it created?)")
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def __aenter__(self) -> OutputWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _read(self) -> None:
        header = self.id_header
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            now, wall_ms = time.monotonic(), time.time() * 1000
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or ())
                    raw_id = headers.get(header)
                    ctype = headers.get("ce_type")
                    if raw_id is None and r.value:  # structured mode: attributes in the body
                        with contextlib.suppress(ValueError, AttributeError):
                            body = json.loads(r.value)
                            attr = header.removeprefix("ce_")
                            raw_id = str(body.get(attr, "")).encode() or None
                            ctype = str(body.get("type", "")).encode()
                    if raw_id is None:
                        continue
                    rid = raw_id.decode()
                    if rid in self.arrivals:
                        self.duplicates += 1
                        continue
                    self.arrivals[rid] = now
                    self.delivery[rid] = (wall_ms - r.timestamp) / 1000
                    if ctype:
                        self.types[rid] = ctype.decode().removeprefix("com.paystream.")
            if batch:
                self._changed.set()

    def seen(self, ids: Collection[str]) -> int:
        return sum(1 for i in ids if i in self.arrivals)

    async def wait_for(
        self,
        ids: Collection[str],
        *,
        idle_timeout: float,
        progress: Progress | None = None,
    ) -> int:
        """Wait until every id arrived, or nothing new came for ``idle_timeout`` s.

        Returns how many of ``ids`` arrived.
        """
        wanted = set(ids)
        pending = {i for i in wanted if i not in self.arrivals}
        started = last_change = time.monotonic()
        next_report = started + 1
        while pending:
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise a consumer failure
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.25)
            before = len(pending)
            pending = {i for i in pending if i not in self.arrivals}
            now = time.monotonic()
            if len(pending) != before:
                last_change = now
            elif now - last_change > idle_timeout:
                break
            if progress is not None and now >= next_report:
                progress(len(wanted) - len(pending), len(wanted), now - started)
                next_report = now + 1
        return len(wanted) - len(pending)

    def outcome_types(self, ids: Collection[str]) -> dict[str, int]:
        return dict(Counter(self.types[i] for i in ids if i in self.types))


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process, all threads (Linux ``/proc``); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuSampler:
    """Samples the CPU time of named processes every ``interval`` s, in the background.

    ``between(name, t0, t1)`` interpolates the CPU seconds spent in a monotonic-time
    window, so a phase's CPU can be cut to exactly its first→last output window
    (excluding, e.g., a Faust worker's startup).
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.samples: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in pids}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.samples[name] = ([], [])

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            cpu = process_cpu_seconds(pid)
            if cpu is not None:
                times, values = self.samples[name]
                times.append(now)
                values.append(cpu)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def _at(self, name: str, t: float) -> float | None:
        times, values = self.samples.get(name, ([], []))
        if len(times) < 2 or t < times[0] or t > times[-1]:
            return None
        i = bisect.bisect_left(times, t)
        if times[i] == t:
            return values[i]
        t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def between(self, name: str, start: float, end: float) -> float | None:
        times = self.samples.get(name, ([], []))[0]
        if times and start < times[0] <= end:
            start = times[0]  # (work from before the first reading is not known: left out)
        a, b = self._at(name, start), self._at(name, end)
        return None if a is None or b is None else max(0.0, b - a)
