"""Review h73e of h73b (a worker / ingress on a chosen port started again when taken)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from paystream.devstack import paystream_process as paystream_process_module
from paystream.devstack._process import ServiceError, free_port
from paystream.devstack.ingress import IngressProcess
from paystream.devstack.worker import WorkerProcess


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # (a zombie leader still answers killpg: look at its state)
    try:
        state = Path(f"/proc/{pgid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Interrupted(BaseException):
    """What pytest-timeout's signal method (or a Ctrl-C) raises in the main thread."""


def test_a_start_interrupted_while_it_waits_for_the_bind_leaves_no_process(
    tmp_path: Path,
) -> None:
    """start() on a chosen port now waits (seconds, up to bind_timeout x PORT_ATTEMPTS)
    for the bind. Interrupted meanwhile (pytest-timeout's SIGALRM, the suite's 300 s),
    `with ingress:` raises from __enter__, so __exit__/stop() never runs: the child,
    in a session of its own, lives on for the rest of the session."""
    env = {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",
        "PAYSTREAM_INGRESS_TOKEN": f"platform-{uuid.uuid4().hex}",
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
    }
    ingress = IngressProcess(env, tmp_path / "ingress.log")

    def interrupt(*_: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # (the child's imports take longer)
    try:
        with pytest.raises(_Interrupted), ingress:
            pytest.fail("start() returned before the alarm")  # pragma: no cover
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ingress.proc is not None
    pgid = ingress.proc.pid
    try:
        assert not _group_alive(pgid), "the interrupted start's ingress is still running"
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            ingress.proc.wait(timeout=10)


def test_a_worker_exiting_for_another_reason_is_not_moved_on_an_earlier_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coverage (passes): only what this attempt logged is read. The log holds an
    earlier run's "address already in use"; the worker now exits on a refused
    configuration: started once, and its wait names that, not a taken port."""
    log = tmp_path / "w.log"
    log.write_text("OSError: [Errno 98] ... address already in use\n")
    spawned: list[int] = []
    real_spawn = paystream_process_module.PaystreamProcess._spawn

    def spawn(self: paystream_process_module.PaystreamProcess) -> None:
        real_spawn(self)
        assert self.proc is not None
        spawned.append(self.proc.pid)

    monkeypatch.setattr(paystream_process_module.PaystreamProcess, "_spawn", spawn)
    env = {
        "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{free_port()}",
        "PAYSTREAM_APP_ID": f"ps-{uuid.uuid4().hex[:8]}",
        "PAYSTREAM_DATA_DIR": str(tmp_path / "data"),
        "PAYSTREAM_WEB_HOST": "0.0.0.0",  # (no token: refused, exit 1)
    }
    env.pop("PAYSTREAM_WEB_TOKEN", None)
    monkeypatch.delenv("PAYSTREAM_WEB_TOKEN", raising=False)
    monkeypatch.delenv("PAYSTREAM_WEB_OPEN", raising=False)
    worker = WorkerProcess(env, log)
    with worker, pytest.raises(ServiceError) as raised:
        worker.wait_ready(timeout=30)
    assert len(spawned) == 1
    assert "is taken" not in str(raised.value)
    assert "PAYSTREAM_WEB_HOST=0.0.0.0" in log.read_text()


def test_the_session_postgres_fixture_still_raises_a_non_port_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coverage (passes): tests/fixtures/postgres.py on_a_free_port with its own error
    type: a CalledProcessError with no mark is raised at once, not retried."""
    from paystream.devstack._process import on_a_free_port

    log = tmp_path / "log"
    log.write_text("FATAL: address already in use\n")  # (an earlier start's)
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        with log.open("a") as f:
            f.write("FATAL: could not load library\n")
        raise subprocess.CalledProcessError(1, "pg_ctl")

    with pytest.raises(subprocess.CalledProcessError):
        on_a_free_port(
            start, log_path=log, take_port=lambda _: None,
            errors=(subprocess.CalledProcessError,),
        )  # fmt: skip
    assert calls == [1]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known gap (review h73e): a waiting worker's chosen port taken in the moment between "
    "its probe server closing and Faust binding it is not moved (the retry is at start() only)",
)
@pytest.mark.asyncio(loop_scope="session")
async def test_a_waiting_worker_whose_chosen_port_is_taken_at_the_hand_over_moves(
    deployment_factory: object,
) -> None:
    """A worker started before the brokers answer serves its probes on its (chosen) web
    port; once they answer it closes that server and Faust binds the port again,
    seconds later (its producer starts first). Another process binding the port in
    between (a parallel test's server: the same race free_port() loses) exits the
    worker 1 on "address already in use": the retry is at start() only, so the port
    ours to choose is not moved, and the worker's wait fails."""
    import asyncio
    import socket
    import threading

    from paystream.tenancy.models import Tenant
    from tests.e2e.test_worker_waits_for_brokers import _waiting
    from tests.e2e.threaded_proxy import ThreadedProxy
    from tests.fixtures.pipeline import Deployment

    dep: Deployment = await deployment_factory()  # type: ignore[operator]
    await dep.add_tenants(Tenant(tenant_id="acme"))
    broker_port = int(dep.settings.require_broker().rsplit(":", 1)[1])
    proxy = ThreadedProxy(broker_port)  # its port held, nothing listening on it yet
    env = {**dep.env, "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{proxy.port}"}
    worker = WorkerProcess(env, dep.base_dir / "handover.log")
    grabbed: list[socket.socket] = []
    stop = threading.Event()

    def grab(port: int) -> None:
        """The other process: binds the port the moment it is free."""
        while not stop.is_set():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sock.listen()
            grabbed.append(sock)
            return

    try:
        with worker:
            await _waiting(worker)
            thief = threading.Thread(target=grab, args=(worker.web_port,), daemon=True)
            thief.start()
            proxy.start()  # the brokers answer: the waiting server closes
            await asyncio.to_thread(thief.join, 60)
            assert grabbed, "the port was never free (the hand-over did not happen)"
            # A port ours to choose: started again on another, as at start().
            await asyncio.to_thread(worker.wait_ready, ["acme"], timeout=90)
    finally:
        stop.set()
        for sock in grabbed:
            sock.close()
        proxy.stop()
