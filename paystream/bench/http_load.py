"""The HTTP side of the benchmark: the bench's commands sent to the worker's own ingress,
``POST /v1/commands``, as an upstream service without a Kafka client sends them.

Each command goes in binary content mode: its Kafka record's ``ce_*`` headers become
``ce-*`` HTTP headers (percent-encoded, HTTP binding §3.1.3.2) and its value the body,
so both ways in carry the very same event. Times are on the bench's monotonic clock,
as for the Kafka load (``probe.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
import orjson

from paystream.bench.load import BenchCommand
from paystream.bench.probe import Progress, SendLog

__all__ = ["HttpLog", "http_request", "post_burst", "post_paced"]

# Printable ASCII stays as it is, but for what the binding says to encode: space, '"',
# '%' and anything outside it.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


@dataclass
class HttpLog(SendLog):
    """A SendLog (when each request was due or sent) plus what the ingress answered."""

    answered_at: dict[str, float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)  # "202", "200", "error", ...
    # Outcome types read from a 200 answer (a wait the outcome met).
    outcomes: dict[str, str] = field(default_factory=dict)
    # When a request that got no answer ended (a timeout, a reset connection).
    failed_at: dict[str, float] = field(default_factory=dict)

    @property
    def answered_rate(self) -> float:
        """Answers per second from the first request to the last answer."""
        if not self.answered_at:
            return 0.0
        span = max(self.answered_at.values()) - self.started
        return len(self.answered_at) / span if span > 0 else 0.0


def http_request(command: BenchCommand) -> tuple[dict[str, str], bytes]:
    """The command's HTTP headers and body in binary mode, from its Kafka record."""
    headers: dict[str, str] = {}
    for name, value in command.record.headers:
        text = value.decode("utf-8")
        if name == "content-type":
            headers["Content-Type"] = text
        elif name.startswith("ce_"):
            headers["ce-" + name[3:]] = quote(text, safe=_SAFE)
    return headers, command.record.value


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    command_id: str,
    log: HttpLog,
) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.read()
            log.answered_at[command_id] = time.monotonic()
            log.statuses[str(resp.status)] += 1
            if resp.status == 200:
                event = orjson.loads(answer)
                log.outcomes[command_id] = str(event.get("type", "")).removeprefix("com.paystream.")
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        # Counted, not raised: the phase reports what went missing.
        log.failed_at[command_id] = time.monotonic()
        log.statuses[f"error:{type(exc).__name__}"] += 1


class _FlowOrder:
    """A follow-up (a capture, refund or cancel) goes only once every earlier request of
    its tenant has been answered, as a client sends a capture after its payment's answer:
    requests in flight on separate connections reach the broker in any order, and a
    capture produced before its create is rejected (not_found). Creates go at once."""

    def __init__(self, commands: Sequence[BenchCommand]) -> None:
        self._tenant = [c.tenant_id for c in commands]
        self._follow_up = [c.command_type != "payment.create" for c in commands]
        self._open: dict[str, set[int]] = {}  # tenant → indexes sent, not yet answered
        self._answered = asyncio.Condition()

    async def send(self, index: int, post: Awaitable[None]) -> None:
        tenant = self._tenant[index]
        if self._follow_up[index]:
            async with self._answered:
                await self._answered.wait_for(
                    lambda: all(i > index for i in self._open.get(tenant, ()))
                )
        self._open.setdefault(tenant, set()).add(index)
        try:
            await post
        finally:
            self._open[tenant].discard(index)
            async with self._answered:
                self._answered.notify_all()


async def post_burst(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    commands: Sequence[BenchCommand],
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> HttpLog:
    """Every command as fast as ``concurrency`` requests in flight allow (each answered
    202 once the broker has it); latency counts from each request's start."""
    prepared = [(c.command_id, *http_request(c)) for c in commands]
    auth = {"Authorization": f"Bearer {token}"}
    log = HttpLog(started=time.monotonic())
    order = _FlowOrder(commands)
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while next_index < len(prepared):
            index = next_index
            command_id, headers, body = prepared[index]
            next_index += 1
            log.sent_at[command_id] = time.monotonic()
            await order.send(index, _post(session, url, {**headers, **auth}, body, command_id, log))

    async def report() -> None:
        while True:
            await asyncio.sleep(1)
            if progress is not None:
                progress(len(log.answered_at), len(prepared), time.monotonic() - log.started)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(sender() for _ in range(max(1, concurrency))))
    finally:
        reporter.cancel()
    log.finished = time.monotonic()
    return log


async def post_paced(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    commands: Sequence[BenchCommand],
    rate: float,
    *,
    wait_seconds: int,
    progress: Progress | None = None,
) -> HttpLog:
    """Open-loop requests at ``rate`` per second, each asking to wait for its outcome
    (``Prefer: wait``); latency counts from each request's due time, as ``send_paced``'s
    does, so a stalled sender cannot hide waiting (coordinated omission)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    prepared = [(c.command_id, *http_request(c)) for c in commands]
    extra = {"Authorization": f"Bearer {token}", "Prefer": f"wait={wait_seconds}"}
    log = HttpLog(started=time.monotonic())
    order = _FlowOrder(commands)
    tasks: list[asyncio.Task[None]] = []
    next_report = log.started + 1
    i = 0
    while i < len(prepared):
        now = time.monotonic()
        due = min(len(prepared), int((now - log.started) * rate) + 1)
        while i < due:
            command_id, headers, body = prepared[i]
            due_at = log.started + i / rate
            log.sent_at[command_id] = due_at
            log.max_send_lag = max(log.max_send_lag, time.monotonic() - due_at)
            # (A follow-up waiting on its payment's answer counts that from its due time.)
            post = _post(session, url, {**headers, **extra}, body, command_id, log)
            tasks.append(asyncio.create_task(order.send(i, post)))
            i += 1
        if progress is not None and now >= next_report:
            progress(len(log.answered_at), len(prepared), now - log.started)
            next_report += 1
        if i < len(prepared):
            await asyncio.sleep(max(0.0, log.started + i / rate - time.monotonic()))
    log.finished = time.monotonic()
    await asyncio.gather(*tasks)
    return log
