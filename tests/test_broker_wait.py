"""broker_wait.py as review h60j probed it: why the brokers do not answer names what
aiokafka saw (a refused certificate is no outage), and a SIGTERM during a probe that
finds them back still stops the worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from paystream import broker_wait
from paystream.devstack._process import free_port
from paystream.settings import load_settings
from tests.e2e.test_kafka_tls import _certificates


def _tls_listener(cert: Path, key: Path) -> tuple[int, asyncio.AbstractEventLoop]:
    """A TLS server (a certificate the worker's CA did not sign) on a thread."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    port = free_port()
    loop = asyncio.new_event_loop()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1)

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(
        asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx), loop
    ).result(5)
    return port, loop


def test_why_the_brokers_do_not_answer_names_a_tls_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong CA (or a wrong SASL password) is not an outage: the waiting worker should
    say why. The probe mutes aiokafka (which logged the cause) and reports only
    'Unable to bootstrap from [...]'; the worker waits for ever, alive, looking like an
    outage."""
    theirs = _certificates(tmp_path)  # the broker's CA
    ours_dir = tmp_path / "ours"
    ours_dir.mkdir()
    our_ca = _certificates(ours_dir)[0]  # a different CA: verification must fail
    port, loop = _tls_listener(theirs[1], theirs[2])
    settings = load_settings(
        kafka_broker_url=f"kafka://127.0.0.1:{port}",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(our_ca),
    )
    try:
        with caplog.at_level(logging.DEBUG):
            why = asyncio.run(broker_wait.brokers_answer(settings))
    finally:
        loop.call_soon_threadsafe(loop.stop)
    assert why is not None
    logged = why + "\n".join(r.getMessage() for r in caplog.records)
    assert "CERTIFICATE_VERIFY_FAILED" in logged, why


def test_sigterm_during_a_probe_that_succeeds_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM arrives while a probe is in flight (each takes up to 5 s per broker), and
    in that probe the brokers are back: the worker must stop, not start Faust."""
    calls = 0

    async def answer(_settings: Any) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            return "KafkaConnectionError: down"
        os.kill(os.getpid(), signal.SIGTERM)  # the kubelet stops the pod, mid-probe
        await asyncio.sleep(0.2)
        return None  # ... and that probe finds the brokers back

    monkeypatch.setattr(broker_wait, "brokers_answer", answer)
    monkeypatch.setattr(broker_wait, "_FIRST_PAUSE_S", 0.05)
    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9", web_port=free_port())
    assert broker_wait.waited_for_brokers(settings) is False, "SIGTERM lost: Faust would start"
