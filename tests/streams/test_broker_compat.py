"""Tansu workarounds: off for Kafka, idempotent, and measurably fixing the quirks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.structs import TopicPartition

from paystream.doctor import raw_latest_offset
from paystream.errors import ConfigurationError
from paystream.settings import Settings, load_settings
from paystream.streams import broker_compat

NewTopic = Callable[..., Awaitable[str]]


def _in_fresh_process(code: str) -> object:
    """Run ``code`` (which prints JSON) in a new interpreter: patches are process-wide."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_faust_overrides_only_for_tansu() -> None:
    kafka = broker_compat.faust_overrides(load_settings(broker_flavor="kafka", partitions=6))
    assert kafka == {"topic_partitions": 6}
    tansu = broker_compat.faust_overrides(load_settings(broker_flavor="tansu"))
    assert tansu == {
        "topic_partitions": 4,
        "broker_session_timeout": 6.0,
        "broker_rebalance_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_request_timeout": 30.0,
    }
    # Faust's own constraints: heartbeat < session/3, request timeout >= session timeout.
    assert tansu["broker_heartbeat_interval"] < tansu["broker_session_timeout"] / 3
    assert tansu["broker_request_timeout"] >= tansu["broker_session_timeout"]


def test_the_request_timeout_is_a_setting_not_below_the_session() -> None:
    """PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS: how long a silent connection holds the
    worker (tests/e2e/test_blackholed_connections.py); unset, the defaults above."""
    tansu = load_settings(broker_flavor="tansu", broker_request_timeout_seconds=8)
    assert broker_compat.faust_overrides(tansu)["broker_request_timeout"] == 8.0
    kafka = load_settings(broker_flavor="kafka", broker_request_timeout_seconds=75)
    assert broker_compat.faust_overrides(kafka)["broker_request_timeout"] == 75.0
    # Faust refuses a request timeout below the session timeout: said at start, by name.
    with pytest.raises(ConfigurationError, match="PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS=8 "):
        load_settings(broker_flavor="kafka", broker_request_timeout_seconds=8)
    short = kafka.model_copy(update={"broker_request_timeout_seconds": 8})  # (unvalidated)
    with pytest.raises(ConfigurationError, match="PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS=8 "):
        broker_compat.faust_overrides(short)
    with pytest.raises(ConfigurationError, match="broker_request_timeout_seconds"):
        load_settings(broker_flavor="tansu", broker_request_timeout_seconds=5)


def test_apply_patches_nothing_for_kafka() -> None:
    code = (
        "import json; from paystream.settings import load_settings;"
        "from paystream.streams import broker_compat as bc;"
        "print(json.dumps(bc.apply(load_settings(broker_flavor='kafka'))))"
    )
    assert _in_fresh_process(code) == []


def test_apply_is_idempotent_for_tansu() -> None:
    code = (
        "import json; from paystream.settings import load_settings;"
        "from paystream.streams import broker_compat as bc;"
        "from aiokafka.consumer.fetcher import Fetcher;"
        "s = load_settings(broker_flavor='tansu'); first = bc.apply(s);"
        "fn = Fetcher._proc_offset_request; second = bc.apply(s);"
        "print(json.dumps([first, second, Fetcher._proc_offset_request is fn,"
        " bc.patches_active()]))"
    )
    names = ["end_offsets", "fetch_wait", "init_producer_id_v3", "leave_group_at_generation_0"]
    assert _in_fresh_process(code) == [names, names, True, True]


async def test_faust_worker_consumer_gets_short_fetch_wait(
    stack_settings: Settings, kafka_url: str
) -> None:
    # Faust would otherwise make (and leak) an event loop of its own.
    app = faust.App("paystream-compat-probe", broker=kafka_url, loop=asyncio.get_running_loop())
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    try:
        expected = broker_compat.worker_fetch_max_wait_ms(stack_settings)
        assert consumer._fetch_max_wait_ms == expected
    finally:
        await consumer.stop()  # never started; marks it closed
        thread.thread_loop.close()  # the consumer thread's own loop, never run
    if stack_settings.embedded_broker:
        assert expected == broker_compat.TANSU_FETCH_MAX_WAIT_MS
        assert consumer._fetch_min_bytes == broker_compat.TANSU_FETCH_MIN_BYTES


async def _produce_batches(bootstrap: str, topic: str, sizes: list[int]) -> None:
    """Each size is one record batch on partition 0 (sent together, one linger window)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100)
    await producer.start()
    try:
        for size in sizes:
            futures = [await producer.send(topic, b"v%d" % i, partition=0) for i in range(size)]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_end_offsets_correct_after_batched_produce(
    stack_settings: Settings, kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=2)
    tp, empty = TopicPartition(topic, 0), TopicPartition(topic, 1)
    await _produce_batches(kafka_bootstrap, topic, [10, 5])
    raw = await raw_latest_offset(kafka_bootstrap, tp)
    if stack_settings.embedded_broker:
        # The quirk itself (base offset of the last batch + 1): proves the test bites.
        assert raw == 11

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        assert await consumer.end_offsets([tp, empty]) == {tp: 15, empty: 0}
        assert await consumer.beginning_offsets([tp]) == {tp: 0}
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        assert await consumer.position(tp) == 15
    finally:
        await consumer.stop()

    # auto_offset_reset='latest' goes through the same corrected path.
    latest = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="latest")
    await latest.start()
    try:
        latest.assign([tp])
        assert await latest.position(tp) == 15
    finally:
        await latest.stop()


async def _group_members(bootstrap: str, group: str) -> list[object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group])
        [answer] = described.groups  # (error_code, group, state, protocol_type, protocol, members)
        return list(answer[5])
    finally:
        await admin.close()


async def test_a_stopped_consumer_leaves_its_group_at_once(
    stack_settings: Settings, kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    """A member stopped in its group's first generation (Tansu's 0) says LeaveGroup:
    without it the group kept it, its partitions with it, until its session ran out."""
    broker_compat.apply(stack_settings)  # (what every paystream process does first)
    topic, group = await new_topic(partitions=2), f"leave-probe-{stack_settings.app_id}"
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, session_timeout_ms=10_000
    )
    await consumer.start()
    try:
        for _ in range(100):  # joined once it holds partitions
            await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                break
        assert consumer.assignment(), "the probe never joined its group"
        generation = consumer._coordinator.generation
        if stack_settings.embedded_broker:
            assert generation == 0, "Tansu's first generation is no longer 0: drop the patch"
        assert len(await _group_members(kafka_bootstrap, group)) == 1
    finally:
        await consumer.stop()
    # At once, not after the 10 s session: the member left.
    assert await _group_members(kafka_bootstrap, group) == []


class _JoiningMeanwhile:
    """Just the coordinator attributes the wrapper reads: a rejoin (the coordination task's,
    beside aiokafka's idle-heartbeat leave) completes while the LeaveGroup is in flight."""

    group_id, member_id, _group_instance_id = "g", "m-0", None

    def __init__(self) -> None:
        self.generation = 0
        self.sent: list[tuple[int, str]] = []

    async def _send_req(self, request: Any) -> None:
        self.sent.append((self.generation, self.member_id))
        await asyncio.sleep(0)
        if self.generation == 0:  # the coordination task's rejoin completes meanwhile
            self.generation, self.member_id = 1, "m-1"

    def reset_generation(self) -> None:
        self.generation, self.member_id = -1, ""


async def test_a_stopped_member_says_leave_group_once() -> None:
    broker_compat.apply(load_settings(broker_flavor="tansu"), worker_consumers=False)
    coordinator = _JoiningMeanwhile()
    await GroupCoordinator._maybe_leave_group(coordinator)  # type: ignore[arg-type]
    assert len(coordinator.sent) == 1, f"LeaveGroup sent {coordinator.sent}"


async def test_idempotent_producer_starts(kafka_bootstrap: str, new_topic: NewTopic) -> None:
    topic = await new_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await asyncio.wait_for(producer.start(), 30)
    try:
        sent = [await producer.send_and_wait(topic, b"x", partition=0) for _ in range(3)]
        assert [m.offset for m in sent] == [0, 1, 2]
    finally:
        await producer.stop()


@pytest.mark.parametrize("flavor", ["kafka", "tansu"])
def test_worker_fetch_wait_by_flavor(flavor: str) -> None:
    wait = broker_compat.worker_fetch_max_wait_ms(load_settings(broker_flavor=flavor))
    assert wait == (20 if flavor == "tansu" else 1500)
