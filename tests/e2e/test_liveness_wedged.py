"""A worker whose command agent is wedged fails /healthz, and passes it again once it moves.

What wedges the agent for real: a broker that stops answering (SIGSTOP: alive, listening,
never answering) while the worker holds a command it has fetched but not committed. The
agent then waits for the broker to acknowledge the command's outcome (retried for as long
as the broker is in trouble: short of a rebalance, nothing in the worker gives up on it),
and committing the offset needs the broker too: no progress is possible, while the
worker's web server answers. A hung Redis would not do: provider calls have a deadline
and a circuit breaker, and the command is parked (progress) once they run out.

The lag is counted from the broker's high watermark as of the worker's latest fetch, so
the worker must have *fetched* the command before the broker stops, and not yet committed
it. A command is handled and committed within a second of its fetch; rather than race
that, the test holds it in the worker: Redis is stopped first (the command's simulator
call waits on it, well inside its 10 s deadline), the lag shows the command fetched, the
broker is stopped, and Redis resumes: the command's outcome then waits on the broker
alone. The tests own both servers.

Before it wedges the agent, a broker that stops answering shows on the worker's /metrics:
the lag stands as of the broker's last answer, so a hung broker does not show there;
``paystream_consumer_fetch_age_seconds`` does (the first test here, with no command in
flight). Both tests run on one broker, Redis and worker, which each leaves answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from paystream.client import build_command
from paystream.devstack._process import ServiceProcess
from paystream.devstack.kafka import TansuBroker
from paystream.devstack.redis import EmbeddedRedis
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.e2e.own_servers import json_page
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

T = TypeVar("T")
TENANT = "wedge-a"
# What the agent logs when a batch's records are still unacknowledged after 5 s.
# The command handled, its outcome waits on the broker: its acknowledgement, or (if the
# batch took longer than a session timeout to run, as under a loaded CI host) the
# heartbeat that confirms the worker is still a member before it may write.
_WAITING_ON_BROKER = ("1 commands waiting on the broker", "waits: no heartbeat of this worker")


def _command_lag(worker: WorkerProcess) -> int:
    """Records the command agent has fetched but not durably handled (all partitions)."""
    with worker.open("/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "paystream_consumer_lag_records"
            for sample in family.samples
            if sample.labels["agent"] == "commands"
        )
    )


async def _until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


class _Freezer:
    """SIGSTOP / SIGCONT of the test's own servers; whatever is frozen is thawed at exit."""

    def __init__(self) -> None:
        self.frozen: set[int] = set()

    def freeze(self, server: ServiceProcess) -> None:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        self.frozen.add(server.pid)

    def thaw(self, server: ServiceProcess) -> None:
        assert server.pid is not None
        self.frozen.discard(server.pid)
        os.kill(server.pid, signal.SIGCONT)

    def thaw_all(self) -> None:
        for pid in list(self.frozen):
            self.frozen.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@dataclass
class OwnServers:
    broker: TansuBroker
    redis: EmbeddedRedis
    dep: Deployment
    worker: WorkerProcess
    freezer: _Freezer


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own(deployment_factory: Any) -> AsyncIterator[OwnServers]:
    """A broker and Redis of the module's own (its tests freeze them), a deployment on
    them, and its worker, ready for TENANT; whatever a test froze is thawed after it."""
    root = Path(tempfile.mkdtemp(prefix="paystream-wedge-"))
    broker = TansuBroker(root / "tansu.log")
    redis = EmbeddedRedis(root / "redis")
    freezer = _Freezer()
    try:
        broker.start()
        redis.start()
        dep: Deployment = await deployment_factory(
            kafka_broker_url=broker.url,
            paystream_broker_flavor="tansu",
            redis_url=redis.url,
            paystream_stall_seconds="5",
            paystream_liveness_stall_seconds="5",
        )
        await dep.add_tenants(Tenant(tenant_id=TENANT))
        with dep.worker() as worker:
            await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=dep.settings.partitions)
            yield OwnServers(broker, redis, dep, worker, freezer)
    finally:
        freezer.thaw_all()
        broker.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def servers(own: OwnServers) -> Iterator[OwnServers]:
    try:
        yield own
    finally:
        own.freezer.thaw_all()


def _fetch_ages(worker: WorkerProcess) -> list[float]:
    """The command agent's fetch age on each partition this worker owns."""
    with worker.open("/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "paystream_consumer_fetch_age_seconds"
        for sample in family.samples
        if sample.labels["agent"] == "commands"
    ]


async def test_a_broker_that_stops_answering_shows_in_the_fetch_age(
    servers: OwnServers,
) -> None:
    worker, broker = servers.worker, servers.broker
    partitions = servers.dep.settings.partitions
    await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=partitions)

    def answering() -> list[float] | None:
        ages = _fetch_ages(worker)
        return ages if len(ages) == partitions and max(ages) < 2 else None

    await _until(answering, 30, "every partition fetched from within 2 s")
    servers.freezer.freeze(broker)  # alive, listening, never answering

    def hung() -> list[float] | None:
        ages = _fetch_ages(worker)
        return ages if len(ages) == partitions and min(ages) >= 3 else None

    await _until(hung, 20, "every partition's fetch age to pass 3 s")
    servers.freezer.thaw(broker)
    await _until(answering, 60, "fetches answered again once the broker resumed")


async def test_a_worker_wedged_on_its_broker_fails_liveness_until_it_moves(
    servers: OwnServers,
) -> None:
    broker, redis, worker, freezer = servers.broker, servers.redis, servers.worker, servers.freezer
    await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=servers.dep.settings.partitions)
    async with servers.dep.client() as client:
        # A first command end to end: Redis connected, the outcome topics known.
        first = await client.command("customer.create", TENANT, {}, timeout=60)
        assert first.get_type() == "com.paystream.customer.created"
        status, body = await asyncio.to_thread(json_page, worker, "/healthz")
        assert (status, body["ok"], body["failing"]) == (200, True, []), body

        await _until(
            lambda: True if _command_lag(worker) == 0 else None,
            30,
            "the first command's offset to be committed",
        )
        # Hold a command in the worker: fetched (the lag shows it), not handled.
        freezer.freeze(redis)
        held = build_command("customer.create", TENANT, {})
        outcome = client.expect(TENANT, held.get_id())
        # (Should the test fail first, the client's stop fails it: not a stray error.)
        outcome.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        await client.publish(held)
        lag = await _until(
            lambda: _command_lag(worker) or None, 30, "the worker to fetch the command"
        )
        assert lag == 1, lag  # that command alone: the first one is committed
        # Its outcome now waits on the broker alone.
        freezer.freeze(broker)
        freezer.thaw(redis)

        def wedged() -> dict[str, Any] | None:
            status, body = json_page(worker, "/healthz")
            return body if status == 503 else None

        body = await _until(wedged, 60, "/healthz to answer 503")
        assert body["ok"] is False
        [reason] = body["failing"]
        assert reason.startswith("commands agent wedged: 1 records behind"), reason
        assert "PAYSTREAM_LIVENESS_STALL_SECONDS=5" in reason
        # Readiness gave up on it first (PAYSTREAM_STALL_SECONDS).
        status, ready = await asyncio.to_thread(json_page, worker, "/readyz")
        assert status == 503, ready
        assert any(w.startswith("commands agent stalled") for w in ready["waiting_for"])
        # The command was handled: its outcome waits for the broker's acknowledgement.
        await _until(
            lambda: (
                True if any(w in worker.log_path.read_text() for w in _WAITING_ON_BROKER) else None
            ),
            30,
            "the worker to log its outcome waiting on the broker",
        )
        assert not worker.exited()

        # The broker answers again: the outcome lands, the offset is committed.
        freezer.thaw(broker)

        def alive() -> dict[str, Any] | None:
            status, body = json_page(worker, "/healthz")
            return body if status == 200 else None

        body = await _until(alive, 60, "/healthz to answer 200 again")
        assert (body["ok"], body["failing"]) == (True, []), body
        answered = await asyncio.wait_for(outcome, 60)
        assert answered.get_type() == "com.paystream.customer.created"
        await _until(
            lambda: True if _command_lag(worker) == 0 else None,
            60,
            "the command's offset to be committed",
        )
    assert not worker.exited(), worker.log_path.read_text()[-4000:]
