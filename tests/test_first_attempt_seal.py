"""First-attempt times on the commands topic, end to end: a real worker with a master key,
`paystream dlq replay` as an operator runs it, the real broker.

Only a time paystream sealed counts (paystream/first_attempt.py): a producer's made-up
one neither parks its command unrun nor holds back a replay; a replayed command parked
again keeps the age the replay sealed."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from paystream.client import PaystreamClient, build_command
from paystream.dlq import ParkedRecord, read_parked
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER
from paystream.settings import CloudEventsMode
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKey
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment
from tests.test_cli import run_cli

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

_PAYMENT = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keyed(deployment_factory: Any) -> AsyncIterator[Deployment]:
    key = base64.b64encode(MasterKey.generate().key).decode()
    dep: Deployment = await deployment_factory(paystream_master_key=key)
    # (As `paystream tenants add` registers them: tests/test_cli.py runs that.)
    await dep.add_tenants(
        Tenant(tenant_id="acme", name="acme"),
        Tenant(tenant_id="down", name="down", gateway_options={"fail_first": {"*": 1000}}),
    )
    with dep.worker() as worker:
        await asyncio.to_thread(
            worker.wait_ready, ["acme", "down"], partitions=dep.settings.partitions
        )
        yield dep


async def _parked(dep: Deployment, command_id: str, count: int) -> list[ParkedRecord]:
    """The retry topic's records of ``command_id`` once there are ``count`` of them."""
    found: list[ParkedRecord] = []
    for _ in range(150):
        records, consumer = await read_parked(
            dep.settings, [dep.settings.retry_topic], committed_only=False
        )
        await consumer.stop()
        found = [r for r in records if r.command_id_and_type[0] == command_id]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(found)} parked record(s) of {command_id}, wanted {count}")


async def test_a_made_up_first_attempt_does_not_park_a_command(keyed: Deployment) -> None:
    cmd = build_command("payment.create", "acme", _PAYMENT)
    rec = encode_event(cmd, b"acme", CloudEventsMode.BINARY)
    day_ago = str(int(time.time() * 1000) - 48 * 3_600_000).encode()
    async with PaystreamClient(keyed.settings) as client:
        waiter = client.expect("acme", cmd.get_id())
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(keyed.settings.require_broker())
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                keyed.settings.commands_topic,
                rec.value,
                key=rec.key,
                headers=[*rec.headers, (FIRST_ATTEMPT_HEADER, day_ago)],
            )
        finally:
            await producer.stop()
        outcome = await asyncio.wait_for(waiter, 30)
    assert outcome.get_type() == "com.paystream.payment.succeeded"


async def test_a_replayed_command_parked_again_keeps_its_first_attempt(keyed: Deployment) -> None:
    """The provider is still down when the operator re-drives a parked payment: parked
    again, it carries the first attempt the replay sealed (not the re-send's time), so a
    later replay holds it back once the provider may have forgotten its key."""
    cmd = build_command("payment.create", "down", _PAYMENT)
    async with PaystreamClient(keyed.settings) as client:
        await client.publish(cmd)
    [first] = await _parked(keyed, cmd.get_id(), 1)
    first_attempt = dict(first.headers)[FIRST_ATTEMPT_HEADER]
    await asyncio.sleep(0.05)  # the re-send's record time is later than the first attempt
    replayed = run_cli(keyed, "dlq", "replay", "--topic", "retry")
    assert "replayed 1 record(s)" in replayed.stdout, replayed.stdout
    records, consumer = await read_parked(
        keyed.settings, [keyed.settings.commands_topic], committed_only=False
    )
    await consumer.stop()
    [resent] = [
        r
        for r in records
        if r.command_id_and_type[0] == cmd.get_id() and FIRST_ATTEMPT_HEADER in dict(r.headers)
    ]
    assert dict(resent.headers)[FIRST_ATTEMPT_HEADER] == first_attempt
    assert SEAL_HEADER in dict(resent.headers)
    assert resent.timestamp_ms > int(first_attempt)
    [_, again] = await _parked(keyed, cmd.get_id(), 2)
    assert dict(again.headers)[FIRST_ATTEMPT_HEADER] == first_attempt
