"""`paystream ingress` as a process of its own: what it says while it cannot take a command
yet, and how it stops. (What it answers once ready: tests/e2e/test_http_ingress.py runs
every case against it and against a worker's own route.)"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from paystream.devstack._process import free_port
from paystream.devstack.ingress import IngressProcess

pytestmark = pytest.mark.slow

TOKEN = f"platform-{uuid.uuid4().hex}"


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/cloudevents+json",
            "Authorization": f"Bearer {TOKEN}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.load(err)


def test_without_a_broker_it_runs_answers_503_and_stops_cleanly(tmp_path: Path) -> None:
    """A broker away (a restart, a network partition) is no reason to exit: readiness
    says 503, a command is answered 503 with Retry-After (send it again), and SIGTERM
    still ends it at once, cleanly."""
    env = {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",  # nothing listens there
        "PAYSTREAM_INGRESS_TOKEN": TOKEN,
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
    }
    ingress = IngressProcess(env, tmp_path / "ingress.log", free_port())
    with ingress:

        def answering() -> bool:
            try:
                _get(f"{ingress.base_url}/healthz")
                return True
            except OSError:
                return False

        from paystream.devstack._process import wait_until

        wait_until(answering, timeout=30, what="ingress web port", interval=0.05)
        # Alive (nothing to restart), not ready (no request should be sent to it).
        assert _get(f"{ingress.base_url}/healthz") == (200, {"alive": True})
        status, ready = _get(f"{ingress.base_url}/readyz")
        assert (status, ready["ready"], ready["registry_loaded"]) == (503, False, False)
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/tests",
            "type": "com.paystream.command.customer.create",
            "tenantid": "shop",
            "data": {},
        }
        status, headers, answer = _post(f"{ingress.base_url}/v1/commands", event)
        assert status == 503, answer
        assert answer["error"] == "unavailable" and headers["Retry-After"] == "1"
        assert "was not taken" in answer["message"]  # (never handed to a producer)
        assert ingress.proc is not None
        ingress.proc.send_signal(signal.SIGTERM)
        assert ingress.proc.wait(timeout=20) == 0
    log = ingress.log_path.read_text(errors="replace")
    assert TOKEN not in log and "Traceback" not in log
