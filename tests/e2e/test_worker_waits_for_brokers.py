"""A worker started while no broker answers waits for one (broker_wait.py), alive and not
ready, instead of exiting 1 as Faust does: restarted by its liveness probe during a broker
outage, it crash-looped, and the kubelet's back-off held it down for minutes after the
brokers were back (review h60i). Once a broker answers it starts as any worker does."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from paystream.broker_wait import WAITING
from paystream.devstack._process import free_port, wait_until
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.e2e.threaded_proxy import ThreadedProxy
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _get(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    try:
        with worker.open(path, timeout=2) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def _waiting(worker: WorkerProcess) -> None:
    """Until the worker answers on its web port (waiting for the brokers, here)."""
    await asyncio.to_thread(
        wait_until, lambda: _answering(worker), timeout=60, what="the waiting worker",
        alive=worker._died, interval=0.2,
    )  # fmt: skip


def _probes_failed(worker: WorkerProcess) -> int:
    """How many probes of the brokers the worker has logged as unanswered."""
    log = worker.log_path.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if WAITING in line and "asking again" in line)


def _answering(worker: WorkerProcess) -> bool:
    try:
        return _get(worker, "/healthz")[0] == 200
    except OSError:
        return False


async def test_a_worker_started_before_the_brokers_waits_alive_then_starts(
    deployment_factory: Any,
) -> None:
    dep: Deployment = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    broker_port = int(dep.settings.require_broker().rsplit(":", 1)[1])
    proxy = ThreadedProxy(broker_port)  # its port taken, nothing listening on it yet
    env = {**dep.env, "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{proxy.port}"}
    worker = WorkerProcess(env, dep.base_dir / "waiting.log")
    with worker:
        await _waiting(worker)
        assert _get(worker, "/healthz") == (200, {"alive": True, "waiting": WAITING})
        status, body = _get(worker, "/readyz")
        assert (status, body["ready"], body["reasons"]) == (503, False, [WAITING])
        # It asks again, and stays up.
        await asyncio.to_thread(
            wait_until, lambda: _probes_failed(worker) >= 2, timeout=30,
            what="a second probe", alive=worker._died, interval=0.1,
        )  # fmt: skip
        assert worker._died() is None
        proxy.start()  # the brokers are back
        try:
            await asyncio.to_thread(worker.wait_ready, ["acme"], timeout=120)
            assert _get(worker, "/readyz")[0] == 200
        finally:
            proxy.stop()
    log = worker.log_path.read_text(errors="replace")
    assert WAITING in log
    # aiokafka's own error per try is said in ours, not logged again on its own.
    refused = [line for line in log.splitlines() if "Unable connect to" in line]
    assert refused and all(WAITING in line for line in refused), refused


async def test_a_waiting_worker_stops_cleanly_on_sigterm(deployment_factory: Any) -> None:
    dep: Deployment = await deployment_factory()
    env = {**dep.env, "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{free_port()}"}
    worker = WorkerProcess(env, dep.base_dir / "stopped.log")
    with worker:
        await _waiting(worker)
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(worker.proc.wait, 20)
        assert code == 0 and time.monotonic() - started < 20


# ---- review h60j: SIGTERM while a probe is in flight and the brokers come back in it


class SlowProxy(ThreadedProxy):
    """Forwards to the broker, each new connection 4 s late (a slow network path)."""

    opened = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        await asyncio.sleep(4)
        await super()._handle(reader, writer)


async def test_sigterm_during_the_probe_that_finds_the_brokers_stops_the_worker(
    deployment_factory: Any,
) -> None:
    dep: Deployment = await deployment_factory()
    broker_port = int(dep.settings.require_broker().rsplit(":", 1)[1])
    proxy = SlowProxy(broker_port)  # its port taken, nothing listening yet
    env = {**dep.env, "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{proxy.port}"}
    worker = WorkerProcess(env, dep.base_dir / "race.log")
    with worker:
        await _waiting(worker)
        proxy.start()  # the brokers are back, behind a slow path
        try:
            await asyncio.to_thread(
                wait_until, lambda: proxy.opened > 0, timeout=30, what="the next probe",
                interval=0.05,
            )  # fmt: skip
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)  # the kubelet stops the pod, mid-probe
            try:
                code = await asyncio.to_thread(worker.proc.wait, 30)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            proxy.stop()
    log = worker.log_path.read_text(errors="replace")
    assert code == 0, "SIGTERM ignored: still running 30 s later; log tail:\n" + log[-1500:]
