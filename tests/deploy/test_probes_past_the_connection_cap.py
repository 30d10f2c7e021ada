"""The chart's liveness probes go through the same connection cap
(PAYSTREAM_WEB_MAX_CONNECTIONS, http_limits.py) as every client of the port, and are
served past it (review h64i: they were refused 503 with the rest).

A peer that opens PAYSTREAM_WEB_MAX_CONNECTIONS connections to a worker's web port and
sends nothing keeps them for 75 s (HANDLER_LIMITS' keepalive_timeout). Meanwhile every
kubelet probe, a new connection each, was answered 503 unread, and the liveness probe
(period x failureThreshold = 60 s) failed: the kubelet restarted a healthy worker (a group
rebalance for the whole fleet, table recovery for it). The cap that should stop a
connection flood from taking a worker's memory turns it into restarts instead; legitimate
load (senders holding a connection with `Prefer: wait=N` on the workers' own
/v1/commands) reaches the same cap."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp.web
import pytest

from paystream.devstack._process import free_port
from paystream.web import http_limits
from tests.deploy.test_helm import _commands_server, _worker, render

WHOLE = b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:6066\r\nConnection: close\r\n\r\n"


async def _status(port: int, path: str) -> bytes:
    """A kubelet HTTP probe: a fresh connection, one GET, the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(WHOLE.replace(b"/healthz", path.encode()))
        await writer.drain()
        return (await asyncio.wait_for(reader.read(), 5.0)).split(b"\r\n", 1)[0]
    finally:
        writer.close()


def _liveness(container: dict[str, Any]) -> tuple[str, float]:
    probe = container["livenessProbe"]
    assert probe["httpGet"]["port"] == "http"  # the capped web port, not one of its own
    return probe["httpGet"]["path"], probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.asyncio
async def test_a_worker_answers_its_liveness_probe_while_its_connection_cap_is_full() -> None:
    import faust

    path, budget = _liveness(_worker(render()))
    # One burst of idle connections is enough: held longer than the liveness probe may
    # fail (60 s) before the kubelet restarts the container.
    assert http_limits.HANDLER_LIMITS["keepalive_timeout"] > budget
    port = free_port()
    app = faust.App("h64i-probe-cap", web_bind="127.0.0.1", web_port=port, env={})

    @app.page(path)
    async def alive(web: Any, request: Any) -> Any:  # the worker's HealthView, healthy
        return web.json({"ok": True})

    cap = 4
    http_limits.limit_faust_web(app.web, cap)
    await app.web.start_server()
    idle: list[asyncio.StreamWriter] = []
    try:
        assert await _status(port, path) == b"HTTP/1.1 200 OK"
        # A peer connects `cap` times and sends nothing (held 75 s by the server).
        for _ in range(cap):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            idle.append(writer)
        server = app.web._runner.server
        for _ in range(250):
            if len(server.connections) == cap:
                break
            await asyncio.sleep(0.02)
        assert len(server.connections) == cap
        # The kubelet's liveness probe of a healthy worker: refused 503, unread.
        assert await _status(port, path) == b"HTTP/1.1 200 OK"
    finally:
        for writer in idle:
            writer.close()
        await app.web._runner.cleanup()


@pytest.mark.asyncio
async def test_the_commands_server_answers_its_liveness_probe_while_its_cap_is_full() -> None:
    """`paystream ingress` (commands.server) as the chart runs it: the same."""
    from paystream.settings import load_settings
    from paystream.web.ingress_server import IngressServer, make_runner

    deployment = _commands_server(render({"commands": {"server": {"enabled": True}}}))
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    path, budget = _liveness(container)
    assert http_limits.HANDLER_LIMITS["keepalive_timeout"] > budget
    cap = 4
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9", web_max_connections=cap)
    runner = make_runner(IngressServer(settings).app(), settings.web_max_connections)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    idle: list[asyncio.StreamWriter] = []
    try:
        assert await _status(port, path) == b"HTTP/1.1 200 OK"
        for _ in range(cap):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            idle.append(writer)
        assert runner.server is not None
        for _ in range(250):
            if len(runner.server.connections) == cap:
                break
            await asyncio.sleep(0.02)
        assert len(runner.server.connections) == cap
        assert await _status(port, path) == b"HTTP/1.1 200 OK"
    finally:
        for writer in idle:
            writer.close()
        await runner.cleanup()
