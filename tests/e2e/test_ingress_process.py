"""`paystream ingress` as a process of its own: what it says while it cannot take a command
yet, and how it stops. (What it answers once ready: tests/e2e/test_http_ingress.py runs
every case against it and against a worker's own route.)"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from paystream.devstack._process import free_port, wait_until
from paystream.devstack.ingress import NOT_FOR_THE_INGRESS, IngressProcess
from tests.test_docs import published, response_schema, validator

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


def _wait_answering(ingress: IngressProcess) -> None:
    """Until its port answers (it need not be ready)."""

    def answering() -> bool:
        try:
            _get(f"{ingress.base_url}/healthz")
            return True
        except OSError:
            return False

    wait_until(answering, timeout=30, what="ingress web port", interval=0.05)


def test_without_a_broker_it_runs_answers_503_and_stops_cleanly(tmp_path: Path) -> None:
    """A broker away (a restart, a network partition) is no reason to exit: readiness
    says 503, a command is answered 503 with Retry-After (send it again), and SIGTERM
    still ends it at once, cleanly."""
    env = {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",  # nothing listens there
        "PAYSTREAM_INGRESS_TOKEN": TOKEN,
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
        "PAYSTREAM_INGRESS_HOST": "0.0.0.0",  # (beyond loopback: /metrics is warned of)
    }
    ingress = IngressProcess(env, tmp_path / "ingress.log")
    with ingress:
        _wait_answering(ingress)
        # Alive (nothing to restart), not ready (no request should be sent to it).
        assert _get(f"{ingress.base_url}/healthz") == (200, {"alive": True})
        status, ready = _get(f"{ingress.base_url}/readyz")
        assert (status, ready["ready"], ready["registry_loaded"]) == (503, False, False)
        # As openapi.yaml documents the route's answers (review finding: only a worker's).
        validator(published("openapi"), response_schema("/healthz", 200)).validate({"alive": True})
        validator(published("openapi"), response_schema("/readyz", 503)).validate(ready)
        # Errors in JSON, aiohttp's own too (they were text/plain), and no versions told.
        assert _get(f"{ingress.base_url}/nope") == (
            404,
            {"error": "not_found", "message": "no such path: /nope"},
        )
        status, answer = _get(f"{ingress.base_url}/v1/commands")
        assert (status, answer["error"]) == (405, "method_not_allowed")
        with urllib.request.urlopen(f"{ingress.base_url}/healthz", timeout=5) as resp:
            assert resp.headers["Server"] == "paystream"
        # Also on the parser's own refusals, answered before any route or hook runs.
        with socket.create_connection((ingress.host, ingress.port), timeout=5) as raw:
            raw.sendall(b"GARBAGE\r\n\r\n")
            head = raw.recv(4096).decode(errors="replace")
        assert " 400 " in head.splitlines()[0] and "Server: paystream" in head, head
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
        # Its own metrics only, and not to a page that re-pointed its domain here.
        with urllib.request.urlopen(f"{ingress.base_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "paystream_ingress_requests_total" in text and "process_cpu" in text
        assert "paystream_command" not in text and "paystream_batch" not in text
        rebound = urllib.request.Request(
            f"{ingress.base_url}/metrics", headers={"Host": "pay.evil.example.com"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=5)
        assert refused.value.code == 403
        assert ingress.proc is not None
        ingress.proc.send_signal(signal.SIGTERM)
        assert ingress.proc.wait(timeout=20) == 0
    log = ingress.log_path.read_text(errors="replace")
    assert TOKEN not in log and "Traceback" not in log
    assert "set PAYSTREAM_METRICS_TOKEN" in log  # its /metrics open beyond loopback


def _metrics_status(base_url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{base_url}/metrics", headers=headers), timeout=5
        ) as resp:
            assert "paystream_ingress_requests_total" in resp.read().decode()
            assert resp.headers["Cache-Control"] == "no-store"
            return int(resp.status)
    except urllib.error.HTTPError as err:
        assert TOKEN not in err.read().decode()
        return err.code


def test_with_a_metrics_token_its_metrics_answer_that_alone(tmp_path: Path) -> None:
    """Its /metrics names every tenant with its request counts: with
    PAYSTREAM_METRICS_TOKEN set, only a scraper bearing it reads them (security review
    finding: it was open to whoever reached the port)."""
    scrape = f"scrape-{uuid.uuid4().hex}"
    env = {
        "KAFKA_BROKER_URL": f"127.0.0.1:{free_port()}",  # (none needed to answer this)
        "PAYSTREAM_INGRESS_TOKEN": TOKEN,
        "PAYSTREAM_METRICS_TOKEN": scrape,
        "PAYSTREAM_APP_ID": f"ingress-{uuid.uuid4().hex[:8]}",
        "PAYSTREAM_INGRESS_HOST": "0.0.0.0",
    }
    ingress = IngressProcess(env, tmp_path / "ingress.log")
    with ingress:
        _wait_answering(ingress)
        assert _metrics_status(ingress.base_url, {}) == 401
        assert _metrics_status(ingress.base_url, {"Authorization": f"Bearer {TOKEN}"}) == 401
        assert _metrics_status(ingress.base_url, {"Authorization": "Bearer wrong"}) == 401
        assert _metrics_status(ingress.base_url, {"Authorization": f"bearer {scrape}"}) == 200
        # The token, not the Host header, decides now (a cookie-less bearer is no
        # rebinding risk).
        named = {"Authorization": f"Bearer {scrape}", "Host": "metrics.example.com"}
        assert _metrics_status(ingress.base_url, named) == 200
    log = ingress.log_path.read_text(errors="replace")
    assert scrape not in log and "set PAYSTREAM_METRICS_TOKEN" not in log


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
        with IngressProcess(dep.env, dep.base_dir / "ingress.log") as ingress:
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
            before = await _commands_end(dep)
            # A second request whose body is still arriving when the stop comes.
            arriving = {**event, "id": str(uuid.uuid4())}
            body = json.dumps(arriving).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
            head = (
                "POST /v1/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/cloudevents+json\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body[:20])
            await writer.drain()
            async with aiohttp.ClientSession() as session:
                waiting = asyncio.ensure_future(
                    session.post(
                        f"{ingress.base_url}/v1/commands", data=json.dumps(event), headers=headers
                    )
                )
                # Waiting once its command is on the topic (its outcome 5 s away).
                await _until_produced(dep, before)
                assert ingress.proc is not None
                stopped_at = time.monotonic()
                ingress.proc.send_signal(signal.SIGTERM)
                resp = await asyncio.wait_for(waiting, 10)
                answered_after = time.monotonic() - stopped_at
                assert resp.status == 202, await resp.text()
                assert (await resp.json())["command_id"] == event["id"]
                resp.release()
            assert answered_after < 3
            # The body's rest, a second later: the request is finished and answered.
            await asyncio.sleep(1)
            writer.write(body[20:])
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
            assert arriving["id"].encode() in answer
            exit_status = await asyncio.to_thread(ingress.proc.wait, 20)
            assert exit_status == 0
            assert time.monotonic() - stopped_at < 10  # (not the whole grace)


def test_the_ingress_process_gets_none_of_a_worker_s_secrets(tmp_path: Path) -> None:
    env = {
        "KAFKA_BROKER_URL": "kafka://127.0.0.1:9",
        "PAYSTREAM_MASTER_KEY": "k",
        "DATABASE_URL": "postgresql://u:p@db/x",
        "PAYSTREAM_DB_APP_PASSWORD": "p",
        "REDIS_URL": "redis://r",
        "PAYSTREAM_WEB_TOKEN": "t",
        "PAYSTREAM_INGRESS_TOKEN": TOKEN,
    }
    given = IngressProcess(env, tmp_path / "ingress.log", 1).env
    assert given["KAFKA_BROKER_URL"] == "kafka://127.0.0.1:9"
    assert given["PAYSTREAM_INGRESS_TOKEN"] == TOKEN
    assert not NOT_FOR_THE_INGRESS & given.keys()


async def _commands_end(dep: Any) -> int:
    """How many records the commands topic holds (its end offsets' sum)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from paystream.streams.admin import bootstrap_servers

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(dep.settings.require_broker()))
    await consumer.start()
    try:
        topic = dep.settings.commands_topic
        tps = [TopicPartition(topic, p) for p in range(dep.settings.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _until_produced(dep: Any, before: int, timeout: float = 15) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while await _commands_end(dep) <= before:
        assert time.monotonic() < deadline, "the command never reached the topic"
        await asyncio.sleep(0.05)
