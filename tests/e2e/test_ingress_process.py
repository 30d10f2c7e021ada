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


async def test_a_background_part_that_dies_fails_the_process() -> None:
    """The registry's reader ended: the process must not serve on a frozen registry (it
    exits 1 for its supervisor); a part that is meant to end (the producer's start) does
    not fail it."""
    import asyncio

    from paystream.settings import load_settings
    from paystream.web.ingress_server import IngressServer

    server = IngressServer(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))

    async def ends() -> None:
        return None

    async def dies() -> None:
        raise RuntimeError("gone")

    await asyncio.wait_for(server._supervised(ends(), "a start", ends=True), 5)
    await asyncio.sleep(0)
    assert not server.failed.is_set()
    await asyncio.wait_for(server._supervised(ends(), "the registry reader"), 5)
    await asyncio.sleep(0)
    assert server.failed.is_set()
    server.failed.clear()
    task = server._supervised(dies(), "the registry reader")
    with pytest.raises(RuntimeError):
        await task
    await asyncio.sleep(0)
    assert server.failed.is_set()


@pytest.mark.asyncio(loop_scope="session")
async def test_senders_waiting_at_sigterm_are_answered_202_at_once(
    deployment_factory: Any,
) -> None:
    """A sender waiting for its outcome is told its command was taken (202) as soon as
    the process is told to stop, not held to the end of its wait; the process then
    exits cleanly."""
    import asyncio
    import time

    import aiohttp

    from paystream.tenancy.models import Tenant

    dep = await deployment_factory(paystream_ingress_token=TOKEN)
    with dep.worker() as worker:
        # (its provider answers after 5 s: the wait outlasts the stop)
        await dep.add_tenants(Tenant(tenant_id="slow", gateway_options={"latency_ms": 5000}))
        await asyncio.to_thread(worker.wait_ready, ["slow"], partitions=dep.settings.partitions)
        with IngressProcess(dep.env, dep.base_dir / "ingress.log", free_port()) as ingress:
            await asyncio.to_thread(ingress.wait_ready)
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/tests",
                "type": "com.paystream.command.customer.create",
                "tenantid": "slow",
                "data": {},
            }
            headers = {
                "Content-Type": "application/cloudevents+json",
                "Authorization": f"Bearer {TOKEN}",
                "Prefer": "wait=30",
            }
            async with aiohttp.ClientSession() as session:
                waiting = asyncio.ensure_future(
                    session.post(
                        f"{ingress.base_url}/v1/commands", data=json.dumps(event), headers=headers
                    )
                )
                await asyncio.sleep(1)  # (the command produced, its outcome 4 s away)
                assert ingress.proc is not None
                stopped_at = time.monotonic()
                ingress.proc.send_signal(signal.SIGTERM)
                resp = await asyncio.wait_for(waiting, 10)
                answered_after = time.monotonic() - stopped_at
                assert resp.status == 202, await resp.text()
                assert (await resp.json())["command_id"] == event["id"]
                resp.release()
            assert answered_after < 3
            assert await asyncio.to_thread(ingress.proc.wait, 20) == 0
