"""`paystream ingress` writes its throttled warnings' held-back counts once their minute
has ended, as a worker does (log_limits.py): refused requests that stopped coming
were never counted in its log."""

from __future__ import annotations

import asyncio
import logging

import aiohttp.web
import pytest

from paystream.log_limits import ThrottledLog
from paystream.settings import load_settings
from paystream.web import ingress_server
from paystream.web.ingress_server import IngressServer

pytestmark = pytest.mark.asyncio


async def test_the_ingress_writes_held_back_counts_while_it_runs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_server, "_FLUSH_SECONDS", 0.01)
    now = [0.0]
    throttled = ThrottledLog(logging.getLogger("t.ingress.held"), clock=lambda: now[0])
    # (No broker answers: the process runs on, retrying, as it does in an outage.)
    server = IngressServer(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    running = server._running(aiohttp.web.Application())
    with caplog.at_level(logging.WARNING, logger="t.ingress.held"):
        await running.__anext__()
        try:
            for _ in range(3):
                throttled.warning("refused", "refused a request: %s", "too large")
            now[0] = 60.0
            async with asyncio.timeout(10):
                while len(_said(caplog)) < 2:
                    await asyncio.sleep(0.01)
        finally:
            await running.aclose()
    assert _said(caplog) == [
        "refused a request: too large",
        "refused a request: too large (and 2 more like it in the last 60 s)",
    ]
    assert not server.failed.is_set()


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "t.ingress.held"]
