"""`paystream dlq replay` stopped by a signal mid-run, then run again (review h61d: a lost
SSH session's SIGHUP killed it outright, lease held and its sends since the last commit
re-sent by the next run; a re-send in flight at a Ctrl-C or SIGTERM was re-sent again)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from paystream.dlq import ParkedRecord, read_parked
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.cli_signals import Cli, run

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

BACKLOG = 60  # at 20/s (burst 5): ~3 s of pace, stopped before the periodic commit (5 s)


async def _topic(settings: Any, topic: str, committed_only: bool) -> list[ParkedRecord]:
    recs, consumer = await read_parked(settings, [topic], committed_only=committed_only)
    await consumer.stop()
    return recs


async def _setup(deployment_factory: Any) -> Any:
    dep = await deployment_factory()
    await dep.add_tenants(
        Tenant(tenant_id="slow", limits=TenantLimits(commands_per_second=20, burst=5))
    )
    await dep.produce(
        dep.settings.retry_topic, *((b"slow", b"slow %d" % i, 0) for i in range(BACKLOG))
    )
    return dep


async def _interrupt(dep: Any, sig: int) -> tuple[int, str]:
    cli = Cli(dep.env, "dlq", "replay", "--topic", "retry", "--without-master-key")
    await asyncio.to_thread(cli.wait_for, "waiting for the pace of slow (20/s)")
    await asyncio.sleep(0.5)  # a few more re-sent past the burst
    cli.signal(sig)
    status = await asyncio.to_thread(cli.finish)
    return status, cli.text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_a_replay_stopped_by_a_signal_commits_what_it_re_sent(
    deployment_factory: Any, sig: int
) -> None:
    dep = await _setup(deployment_factory)
    status, text = await _interrupt(dep, sig)
    resent = await _topic(dep.settings, dep.settings.commands_topic, committed_only=False)
    left = await _topic(dep.settings, dep.settings.retry_topic, committed_only=True)
    # A rerun right away: the lease must not be left behind, nothing re-sent twice.
    # (Unpaced: how the rest is paced is test_dlq_pacing.py's; paced, it took 2 s more.)
    again = run(
        dep.env, "dlq", "replay", "--topic", "retry", "--without-master-key",
        "--rate-per-tenant", "0",
    )  # fmt: skip
    assert status == 130, text
    assert "interrupted: replayed" in text and "Traceback" not in text
    assert len(resent) + len(left) == BACKLOG, "re-sent records still count as waiting"
    assert again.returncode == 0, again.stderr
    values = [r.value for r in await _topic(dep.settings, dep.settings.commands_topic, False)]
    assert len(values) == len(set(values)) == BACKLOG, "a record was re-sent twice"


# A re-send's delivery awaited when the stop lands: the record is with the producer,
# its delivery held until the test has sent the signal (and says so: STOP_SENT appears)
# and a moment more, for the command's loop to take the signal first.
IN_FLIGHT = """
import os, sys, asyncio, time
from aiokafka import AIOKafkaProducer
_orig_send, _n = AIOKafkaProducer.send, [0]
async def _send_and_wait(self, *a, **k):
    fut = await _orig_send(self, *a, **k)
    _n[0] += 1
    if _n[0] == 3:
        sys.stderr.write("IN FLIGHT\\n"); sys.stderr.flush()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["STOP_SENT"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
    return await fut
AIOKafkaProducer.send_and_wait = _send_and_wait
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_re_send_in_flight_at_the_stop_is_not_re_sent_again(
    deployment_factory: Any, sig: int, tmp_path: Path
) -> None:
    dep = await deployment_factory()
    await dep.produce(dep.settings.retry_topic, *((b"t", b"cmd %d" % i, 0) for i in range(10)))
    stop_sent = tmp_path / "stop-sent"
    cli = Cli(
        {**dep.env, "STOP_SENT": str(stop_sent)},
        *("dlq", "replay", "--topic", "retry", "--without-master-key"),
        prelude=IN_FLIGHT,
    )
    await asyncio.to_thread(cli.wait_for, "IN FLIGHT")
    cli.signal(sig)
    stop_sent.touch()
    status = await asyncio.to_thread(cli.finish)
    assert status == 130, cli.text
    assert "interrupted: replayed 3 record(s)" in cli.text, cli.text
    again = run(dep.env, "dlq", "replay", "--topic", "retry", "--without-master-key")
    assert again.returncode == 0, again.stderr
    values = [r.value for r in await _topic(dep.settings, dep.settings.commands_topic, False)]
    assert sorted(values) == sorted(b"cmd %d" % i for i in range(10)), "re-sent twice"
