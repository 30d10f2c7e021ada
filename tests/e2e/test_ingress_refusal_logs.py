"""`paystream ingress` (a real process, no broker needed) and what an unauthenticated
client can make it log (review h60h): a body that does not decompress, drained after its
401, is one throttled line, never a traceback."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from paystream.devstack._process import free_port
from paystream.devstack.ingress import IngressProcess
from tests.e2e.test_ingress_process import _wait_answering

pytestmark = pytest.mark.slow


def _raw(host: str, port: int, request: bytes) -> str:
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(request)
        return raw.recv(4096).decode(errors="replace").splitlines()[0]


def test_a_body_that_does_not_decompress_logs_no_traceback(tmp_path: Path) -> None:
    """bad_requests.py: a refused request is one throttled line, never a traceback. A
    request with no key and `Content-Encoding: gzip` over bytes that are no gzip is
    answered 401, then aiohttp drains the body and logs "Unhandled exception" at ERROR
    with three chained tracebacks, every time (RequestPayloadError is not an
    HttpProcessingError: the filter lets it through)."""
    env = {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",  # nothing listens there
        "PAYSTREAM_INGRESS_TOKEN": f"platform-{uuid.uuid4().hex}",
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
    }
    ingress = IngressProcess(env, tmp_path / "ingress.log")
    body = b"not gzip at all" * 4
    request = (
        b"POST /v1/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with ingress:
        _wait_answering(ingress)
        for _ in range(5):
            assert " 401 " in _raw(ingress.host, ingress.port, request)
    log = ingress.log_path.read_text(errors="replace")
    assert log.count("Traceback") == 0, log.count("Traceback")
