"""An embedded server whose port another process binds first (free_port finds a port free
only when it looks; a parallel test's server may take it before ours binds it): started
again on a new port, not failed. A CI run failed on it once: Tansu exited with status 0
on "AddrInUse" (session 72). So do a worker, an ingress and the tests' localstripe, which
exited with status 1 on "address already in use" (session 73)."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from paystream.devstack import kafka as kafka_module
from paystream.devstack import paystream_process as paystream_process_module
from paystream.devstack import postgres as postgres_module
from paystream.devstack import redis as redis_module
from paystream.devstack._process import ServiceError, free_port, listens_on
from paystream.devstack.ingress import IngressProcess
from paystream.devstack.kafka import TansuBroker, broker_answers
from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.redis import EmbeddedRedis
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.e2e.threaded_proxy import ThreadedProxy
from tests.fixtures.pipeline import Deployment
from tests.fixtures.services import devstack_dir


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _chosen_first(monkeypatch: pytest.MonkeyPatch, module: object, port: int) -> None:
    """The server's first free_port() answers ``port`` (as if taken right after)."""
    monkeypatch.setattr(module, "free_port", lambda host="127.0.0.1": port)


def test_a_broker_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, kafka_module, taken)
    broker = TansuBroker(tmp_path / "tansu.log")
    try:
        broker.start()
        assert broker.port != taken and broker.advertised_port == broker.port
        assert broker.pid is not None and listens_on(broker.pid, broker.port)
        assert broker_answers(broker.url)
        assert b"AddrInUse" in (tmp_path / "tansu.log").read_bytes()
    finally:
        broker.stop()


def test_another_broker_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing authenticates a Metadata request: the other broker answers it as ours
    would, and ours had died on the port."""
    other = TansuBroker(tmp_path / "other.log")
    other.start()
    try:
        _chosen_first(monkeypatch, kafka_module, other.port)
        broker = TansuBroker(tmp_path / "tansu.log")
        try:
            broker.start()
            assert broker.port != other.port
            assert broker.pid is not None and listens_on(broker.pid, broker.port)
        finally:
            broker.stop()
    finally:
        other.stop()


def test_a_broker_given_a_taken_port_is_not_moved(tmp_path: Path, taken: int) -> None:
    """A port the caller gave (a proxy in front of it knows it) stays: the start fails."""
    broker = TansuBroker(tmp_path / "tansu.log", port=taken)
    with pytest.raises(ServiceError, match="exited"):
        broker.start()
    assert broker.port == taken


def test_redis_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, redis_module, taken)
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        server.start()
        assert server.port != taken
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


def test_postgres_whose_chosen_port_is_taken_starts_on_another(
    taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, postgres_module, taken)
    with devstack_dir() as base:
        server = EmbeddedPostgres(base / "postgres")
        try:
            server.start()
            assert server.port != taken
            assert f":{server.port}/" in server.url
        finally:
            server.stop()


def test_a_healthy_broker_starts_where_its_sockets_cannot_be_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /proc/<pid>/fd cannot be read (a hardened /proc) the broker's own listening
    socket cannot be checked: it is taken on its answer alone, not timed out (h72j)."""
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self.name == "fd" and self.parent.parent == Path("/proc"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    broker = TansuBroker(tmp_path / "tansu.log")
    try:
        broker.start(timeout=5)
    finally:
        broker.stop()


def test_a_proxy_holds_its_port_before_it_starts() -> None:
    """A test points a worker at a proxy's port and starts the proxy seconds later: no
    other process (a parallel test's broker) may take the port meanwhile, or the waiting
    worker finds that broker (h72j)."""
    proxy = ThreadedProxy(9)
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", proxy.port))
    finally:
        proxy.start()
        proxy.stop()


class _OtherWorkersStats(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"worker": {"partitions": [0, 1]}, "tenants": ["acme"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def another_worker() -> Iterator[int]:
    """The web port of another deployment's worker (its tenant named acme too)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherWorkersStats)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_worker_is_not_ready_on_another_workers_answer(
    tmp_path: Path, another_worker: int
) -> None:
    """A worker still booting, given a web port another deployment's worker bound first,
    is not taken as ready on that worker's /v1/stats: its test would talk to a worker of
    another deployment (h72j)."""
    worker = WorkerProcess({}, tmp_path / "w.log", another_worker)
    worker.proc = subprocess.Popen(["sleep", "30"])  # ours, booting: listening on nothing
    try:
        with pytest.raises(ServiceError):
            # (The other worker answers at once: taken for ours, it was ready at the
            # first look, so a short wait shows it is not.)
            worker.wait_ready(["acme"], timeout=0.5)
    finally:
        worker.proc.kill()
        worker.proc.wait()


def test_the_tests_session_postgres_whose_port_is_taken_starts_on_another(
    taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger tests' session server (tests/fixtures/postgres.py), given a port a
    parallel test's server bound first, starts on another: failed, every database test
    of its session would error."""
    from paystream.devstack._process import free_port
    from tests.fixtures import postgres as session_postgres

    ports = iter([taken])
    monkeypatch.setattr(session_postgres, "free_port", lambda: next(ports, None) or free_port())
    with devstack_dir() as base:
        root = base / "pg"
        root.mkdir()
        url, pgdata, user = session_postgres._start_embedded(root)
        try:
            assert f":{taken}/" not in url
        finally:
            subprocess.run(
                [session_postgres._bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
                user=user,
            )


# ---- session 73: a worker's web port, the ingress's port, the tests' localstripe


def _own_taken_port_said(log: Path, port: int) -> bool:
    return f"('127.0.0.1', {port}): address already in use" in log.read_text(errors="replace")


@pytest.mark.slow
async def test_a_worker_whose_chosen_web_port_is_taken_starts_on_another(
    deployment_factory: Any, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's web server, on a port a parallel test's server bound first, exited the
    worker with status 1: the test waiting for it failed."""
    _chosen_first(monkeypatch, paystream_process_module, taken)
    dep: Deployment = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    worker = dep.worker()
    with worker:
        assert worker.web_port != taken and worker.base_url.endswith(f":{worker.web_port}")
        assert worker.env["PAYSTREAM_WEB_PORT"] == str(worker.web_port)
        await asyncio.to_thread(worker.wait_ready, ["acme"])  # (its own answer)
        assert worker.proc is not None and listens_on(worker.proc.pid, worker.web_port)
    assert _own_taken_port_said(worker.log_path, taken)


@pytest.mark.slow
async def test_a_worker_given_a_taken_web_port_is_not_moved(
    deployment_factory: Any, taken: int
) -> None:
    """A port the caller gave (`paystream dev --web-port 6066`: the dashboard's address
    it prints) stays: the worker's start fails, and says why."""
    dep: Deployment = await deployment_factory()
    worker = WorkerProcess(dep.env, dep.base_dir / "w.log", taken)
    with worker, pytest.raises(ServiceError, match=f"its port {taken} is taken"):
        await asyncio.to_thread(worker.wait_ready, timeout=60)
    assert worker.web_port == taken


def test_a_worker_waiting_for_the_brokers_on_a_taken_chosen_port_moves(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no broker answers, a worker serves its probes on its web port, and on a
    port taken lives on without them (waiting: it does not exit): moved all the same."""
    _chosen_first(monkeypatch, paystream_process_module, taken)
    env = {
        "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{free_port()}",  # nothing listens there
        "PAYSTREAM_APP_ID": f"ps-{uuid.uuid4().hex[:8]}",
        "PAYSTREAM_DATA_DIR": str(tmp_path / "data"),
    }
    worker = WorkerProcess(env, tmp_path / "w.log")
    with worker:
        assert worker.web_port != taken
        assert worker.proc is not None and listens_on(worker.proc.pid, worker.web_port)
        with worker.open("/healthz", timeout=5) as resp:
            assert resp.status == 200
    assert _own_taken_port_said(worker.log_path, taken)


def _ingress_env() -> dict[str, str]:
    return {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",  # (it answers /healthz without one)
        "PAYSTREAM_INGRESS_TOKEN": f"platform-{uuid.uuid4().hex}",
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
    }


def test_an_ingress_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chosen_first(monkeypatch, paystream_process_module, taken)
    ingress = IngressProcess(_ingress_env(), tmp_path / "ingress.log")
    with ingress:
        assert ingress.port != taken and ingress.base_url.endswith(f":{ingress.port}")
        assert ingress.proc is not None and listens_on(ingress.proc.pid, ingress.port)
        with urllib.request.urlopen(f"{ingress.base_url}/healthz", timeout=5) as resp:
            assert json.load(resp) == {"alive": True}
    assert _own_taken_port_said(ingress.log_path, taken)


def test_an_ingress_given_a_taken_port_is_not_moved(tmp_path: Path, taken: int) -> None:
    ingress = IngressProcess(_ingress_env(), tmp_path / "ingress.log", taken)
    with ingress, pytest.raises(ServiceError, match=f"its port {taken} is taken"):
        ingress.wait_ready(timeout=30)
    assert ingress.port == taken


def test_localstripe_whose_chosen_port_is_taken_starts_on_another(
    tmp_path: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests' session localstripe (tests/fixtures/localstripe.py): failed, every
    Stripe test of the session would error."""
    from tests.fixtures import localstripe

    _chosen_first(monkeypatch, localstripe, taken)
    proc, url = localstripe.start_localstripe(tmp_path)
    try:
        port = int(url.rsplit(":", 1)[1])
        assert port != taken and listens_on(proc.pid, port)
        assert localstripe._answers(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert _own_taken_port_said(tmp_path / "server.log", taken)


def test_localstripe_given_a_taken_port_is_not_moved(tmp_path: Path, taken: int) -> None:
    from tests.fixtures import localstripe

    with pytest.raises(RuntimeError, match=f"port {taken} is taken"):
        localstripe.start_localstripe(tmp_path, port=taken)
