"""Commands already waiting when a worker starts: every one gets its outcome.

Faust clears its delivery queue when flow control resumes at the end of recovery, and
what it had fetched by then never reaches the agent. Records after the cleared ones
reveal the gap; a backlog short enough to fit one fetch has nothing after it, so the
agent must notice on its own that the partition holds records it never received. A CI
crash test lost the last 23 commands of a partition exactly this way. The first worker
starts a fresh consumer group, where only the log start tells where the backlog begins;
the second resumes from the offsets the first committed. Two rounds take both paths: each
resuming worker has met the gap on every partition (a backlog of 96 fits one fetch), so
more resuming rounds only repeated the second's.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from paystream.client import build_command
from paystream.tenancy.models import Tenant
from tests.e2e.test_crash import OutcomeLog, _committed, _diagnose, _produce, _wait_for
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


async def test_backlog_waiting_at_startup_is_fully_handled(deployment_factory: Any) -> None:
    dep: Deployment = await deployment_factory()
    tenants = [f"backlog-{i}" for i in range(8)]
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    try:
        for round_, name in enumerate(("w1", "w2")):
            # w1 starts a fresh consumer group; w2 resumes from committed offsets.
            commands = [
                build_command("customer.create", t, {"email": f"{round_}-{n}@{t}.test"})
                for n in range(12)
                for t in tenants
            ]
            ids = {c.get_id() for c in commands}
            await _produce(dep, commands, rate=100_000)
            worker = dep.worker(name).start()
            try:
                await asyncio.to_thread(
                    worker.wait_ready, tenants, partitions=dep.settings.partitions
                )
                try:
                    done = lambda ids=ids: ids <= log.by_command.keys()  # noqa: E731
                    await _wait_for(done, 60, "every outcome")
                except AssertionError:
                    raise AssertionError(await _diagnose(dep, commands, log, worker)) from None
                assert all(len(log.by_command[i]) == 1 for i in ids)
                worker.kill(signal.SIGTERM)  # commits its offsets on the way out
            finally:
                worker.stop()
            # Everything handled was committed on the way out: the next worker redoes
            # nothing (offsets are contiguous from 0, so the sum is the command count).
            committed = await _committed(dep)
            assert sum(o or 0 for o in committed.values()) == 96 * (round_ + 1), committed
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
