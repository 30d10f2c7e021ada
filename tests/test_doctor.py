"""``paystream doctor`` logic: passes on the dev stack, fails clearly when things are down."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from paystream import doctor as _doctor
from paystream.devstack._process import free_port
from paystream.doctor import (
    CheckFailed,
    CheckResult,
    check_changelog_tombstones,
    check_command_timestamps,
    check_parked_retention,
    check_record_limits,
    check_redis,
    check_registry_compacted,
    check_replay_positions_compacted,
    check_tenant_secrets,
    check_write_durability,
    render_table,
    run_checks,
)
from paystream.settings import Settings, load_settings
from paystream.streams.admin import bootstrap_servers, ensure_topics


async def test_doctor_passes_on_the_stack(stack_settings: Settings) -> None:
    # Commands topic and group of its own: another test's commands left on the shared
    # stack's, with no worker, would fail "workers keep up" (as they should).
    tag = uuid.uuid4().hex[:8]
    stack_settings = stack_settings.model_copy(
        update={"commands_topic": f"{tag}.commands", "app_id": f"doctor-{tag}"}
    )
    results = await run_checks(stack_settings)
    table = render_table(results)
    assert all(r.ok for r in results), table
    names = [r.name for r in results]
    assert names[:3] == ["broker answers", "database answers", "redis answers"]
    assert {"end offsets after batch", "caught-up fetch latency", "group join time"} <= set(names)
    if stack_settings.embedded_broker:
        by_name = {r.name: r for r in results}
        assert "corrected by workaround" in by_name["end offsets after batch"].figure
        assert "fetch_wait" in by_name["workarounds for flavor"].figure


async def test_doctor_fails_a_redis_that_evicts_keys(stack_settings: Settings) -> None:
    """The simulator's Redis stands in for a provider's storage: an evicted idempotency
    record (every key there has a TTL) makes a re-sent charge a second one. Review
    finding (a Redis outage drill)."""
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    assert stack_settings.redis_url is not None
    assert "noeviction" in await check_redis(stack_settings)
    client = aioredis.Redis.from_url(stack_settings.redis_url)
    try:
        try:
            before = await client.config_get("maxmemory*")
            await client.config_set("maxmemory-policy", "volatile-lru")
        except ResponseError:
            pytest.skip("this Redis does not take CONFIG SET")
        try:
            # Without a memory limit nothing is evicted yet: said, not failed.
            assert "would evict once maxmemory is set" in await check_redis(stack_settings)
            await client.config_set("maxmemory", "1gb")
            with pytest.raises(CheckFailed, match="volatile-lru evicts keys"):
                await check_redis(stack_settings)
        finally:
            for name in ("maxmemory", "maxmemory-policy"):
                await client.config_set(name, before[name])
    finally:
        await client.aclose()


async def test_doctor_fails_when_nothing_answers() -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = load_settings(
        kafka_broker_url=f"kafka://{dead}",
        database_url=f"postgresql+asyncpg://postgres@{dead}/x",
        redis_url=f"redis://{dead}/0",
    )
    results = await run_checks(settings)
    assert not any(r.ok for r in results), render_table(results)
    assert all("skipped" in r.figure for r in results[3:])
    # As a deployment: each result said as it comes (a stalled server takes 30 s a
    # check), and the ledger's set-up not tried on a database that did not answer.
    said: list[str] = []
    deployed = await run_checks(settings, deployment=True, progress=lambda r: said.append(r.name))
    assert said == [r.name for r in deployed]
    ledger = next(r for r in deployed if r.name == "ledger ready")
    assert ledger.figure == "skipped: database unreachable" and ledger.duration == 0.0


def test_render_table_layout() -> None:
    table = render_table(
        [
            CheckResult("broker answers", True, "metadata ok", 0.01),
            CheckResult("end offsets", False, "end offset 1, expected 10", 0.2),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["check", "result", "figure", "time"]
    assert set(lines[1]) <= {"-", " "}
    assert "PASS" in lines[2] and "metadata ok" in lines[2]
    assert "FAIL" in lines[3] and "expected 10" in lines[3]
    # Columns line up: the result column starts at the same place on every row.
    assert (
        len({line.index(word) for line, word in zip(lines[2:], ["PASS", "FAIL"], strict=True)}) == 1
    )


async def test_doctor_fails_a_registry_topic_that_is_not_compacted(
    stack_settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(stack_settings.require_broker())
    )
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"{tag}.plain", 1, 1),
                NewTopic(f"{tag}.compact", 1, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(
                    f"{tag}.compact-delete",
                    1,
                    1,
                    topic_configs={"cleanup.policy": "compact,delete", "retention.ms": "604800000"},
                ),
                NewTopic(
                    f"{tag}.compact-delete-kept",
                    1,
                    1,
                    topic_configs={"cleanup.policy": "compact,delete", "retention.ms": "-1"},
                ),
            ]
        )
    finally:
        await admin.close()

    def with_registry(name: str, commands: str = f"{tag}.no-commands") -> Settings:
        return stack_settings.model_copy(update={"tenants_topic": name, "commands_topic": commands})

    with pytest.raises(CheckFailed, match=r"cleanup\.policy=delete"):
        await check_registry_compacted(with_registry(f"{tag}.plain"))
    assert "compact" in await check_registry_compacted(with_registry(f"{tag}.compact"))
    # compact,delete deletes by age too: a tenant unchanged for a week would be gone.
    with pytest.raises(CheckFailed, match=r"compact,delete with retention\.ms=604800000"):
        await check_registry_compacted(with_registry(f"{tag}.compact-delete"))
    assert "compact,delete" in await check_registry_compacted(
        with_registry(f"{tag}.compact-delete-kept")
    )
    assert "not created yet" in await check_registry_compacted(with_registry(f"{tag}.absent"))
    # Topics created but not this one (misnamed, deleted): workers would wait for good.
    with pytest.raises(CheckFailed, match="workers will not run commands"):
        await check_registry_compacted(with_registry(f"{tag}.absent", commands=f"{tag}.plain"))

    # Where `dlq replay` got to is kept the same way (replay_positions.py).
    def with_positions(name: str, commands: str = f"{tag}.no-commands") -> Settings:
        update = {"replay_positions_topic": name, "commands_topic": commands}
        return stack_settings.model_copy(update=update)

    with pytest.raises(CheckFailed, match="where replays got to would expire"):
        await check_replay_positions_compacted(with_positions(f"{tag}.plain"))
    assert "compact" in await check_replay_positions_compacted(with_positions(f"{tag}.compact"))
    with pytest.raises(CheckFailed, match="kept only in offsets Kafka drops"):
        await check_replay_positions_compacted(
            with_positions(f"{tag}.absent", commands=f"{tag}.plain")
        )


async def test_doctor_fails_a_commands_topic_whose_producers_set_the_time(
    stack_settings: Settings,
) -> None:
    """The limits count by record time: with CreateTime a producer can step its commands
    back a day at a time and get every day's quota again."""
    tag = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(stack_settings.require_broker())
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{tag}.plain", 1, 1)])
    finally:
        await admin.close()
    await ensure_topics(stack_settings.model_copy(update={"commands_topic": f"{tag}.made"}))

    def with_commands(name: str) -> Settings:
        return stack_settings.model_copy(update={"commands_topic": name})

    with pytest.raises(CheckFailed, match=r"message\.timestamp\.type=CreateTime"):
        await check_command_timestamps(with_commands(f"{tag}.plain"))
    assert "LogAppendTime" in await check_command_timestamps(with_commands(f"{tag}.made"))
    assert "not created yet" in await check_command_timestamps(with_commands(f"{tag}.absent"))


async def test_doctor_fails_parked_records_that_expire(stack_settings: Settings) -> None:
    """A retry topic made with the broker's default retention (7 days on Kafka) would
    delete a parked payment the provider may have charged, unseen by `dlq list`."""
    tag = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(stack_settings.require_broker())
    )
    await admin.start()
    kept = {"retention.ms": "-1"}
    try:
        await admin.create_topics(
            [
                NewTopic(f"{tag}.lone-retry", 1, 1, topic_configs=kept),
                # The broker's default retention; kept for ever by age but capped by
                # size, or compacted (parked records are keyed by tenant: compaction
                # keeps only each tenant's newest).
                *(
                    NewTopic(f"{tag}.{name}-{t}", 1, 1, topic_configs=configs)
                    for name, configs in (
                        ("plain", {}),
                        ("capped", {**kept, "retention.bytes": "1073741824"}),
                        ("compacted", {**kept, "cleanup.policy": "compact"}),
                    )
                    for t in ("retry", "dlq", "ledger-dlq")
                ),
            ]
        )
    finally:
        await admin.close()

    def with_topics(prefix: str) -> Settings:
        return stack_settings.model_copy(
            update={
                "retry_topic": f"{prefix}-retry",
                "dlq_topic": f"{prefix}-dlq",
                "ledger_dlq_topic": f"{prefix}-ledger-dlq",
            }
        )

    with pytest.raises(CheckFailed, match=rf"{tag}\.plain-retry \(retention\.ms="):
        await check_parked_retention(with_topics(f"{tag}.plain"))
    made = with_topics(f"{tag}.made")
    await ensure_topics(made)
    assert await check_parked_retention(made) == (
        "3 topics keep their records (retention.ms=-1); waiting for a replay: retry 0; dlq 0"
    )
    # What waits for a replay is told, with the oldest one's age (not a failure: the
    # operators' to handle, PaystreamParkedUnreplayed).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(made.require_broker()))
    await producer.start()
    try:
        two_hours_ago = int(time.time() * 1000) - 2 * 3_600_000
        await producer.send_and_wait(made.retry_topic, b"parked", timestamp_ms=two_hours_ago)
    finally:
        await producer.stop()
    assert (await check_parked_retention(made)).endswith(
        "waiting for a replay: retry 1, oldest 2h ago; dlq 0"
    )
    assert "not created yet" in await check_parked_retention(with_topics(f"{tag}.absent"))
    with pytest.raises(CheckFailed, match=rf"{tag}\.lone-dlq, {tag}\.lone-ledger-dlq not created"):
        await check_parked_retention(with_topics(f"{tag}.lone"))
    with pytest.raises(CheckFailed, match=rf"{tag}\.capped-retry \(retention\.bytes=1073741824\)"):
        await check_parked_retention(with_topics(f"{tag}.capped"))
    with pytest.raises(CheckFailed, match=rf"{tag}\.compacted-retry \(cleanup\.policy=compact\)"):
        await check_parked_retention(with_topics(f"{tag}.compacted"))


async def test_doctor_fails_a_topic_that_refuses_paystreams_largest_records(
    stack_settings: Settings,
) -> None:
    """A dead letter keeps its command (up to 768 KiB): a topic with a smaller record limit
    would fail the batch holding one on every redelivery."""
    tag = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(stack_settings.require_broker())
    )
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"{tag}.small", 1, 1, topic_configs={"max.message.bytes": "262144"}),
                NewTopic(f"{tag}.large", 1, 1, topic_configs={"max.message.bytes": "2097152"}),
                NewTopic(f"{tag}.events", 1, 1, topic_configs={"max.message.bytes": "1048588"}),
                # the commands topic carries small records only: its limit may be smaller
                NewTopic(f"{tag}.commands", 1, 1, topic_configs={"max.message.bytes": "300000"}),
            ]
        )
    finally:
        await admin.close()
    # Only this test's topics: the app id matches no changelog of the stack's.
    alone = {
        "app_id": f"doctor-{tag}",
        "commands_topic": f"{tag}.commands",
        "events_topic": f"{tag}.events",
    }
    for name in ("retry_topic", "ledger_dlq_topic", "tenants_topic"):
        alone[name] = f"{tag}.absent-{name}"
    for name in ("fraud_topic", "analytics_topic"):
        alone[name] = f"{tag}.absent-{name}"

    def with_dlq(name: str) -> Settings:
        return stack_settings.model_copy(update={**alone, "dlq_topic": name})

    with pytest.raises(CheckFailed, match=rf"{tag}\.small \(max\.message\.bytes=262144\)"):
        await check_record_limits(with_dlq(f"{tag}.small"))
    assert "2 topics take records of 1048576 bytes" in await check_record_limits(
        with_dlq(f"{tag}.large")
    )


async def test_doctor_says_when_it_cannot_read_the_registry_topic_s_configs(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that refuses DescribeConfigs (Kafka ACLs: error 29) answers no entries;
    read as the default policy, a compacted registry was reported as "delete"."""
    suffix = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={"tenants_topic": f"cfg-{suffix}.tenants", "commands_topic": f"cfg-{suffix}.cmd"}
    )
    await ensure_topics(settings)
    assert "compact" in await check_registry_compacted(settings)

    async def refused(self: Any, resources: Any, include_synonyms: bool = False) -> Any:
        (res,) = resources
        return [SimpleNamespace(resources=[(29, "Topic authorization failed.", 2, res.name, [])])]

    monkeypatch.setattr(AIOKafkaAdminClient, "describe_configs", refused)
    with pytest.raises(CheckFailed) as registry:
        await check_registry_compacted(settings)
    assert "cannot read" in str(registry.value) and "error 29" in str(registry.value)
    assert "cleanup.policy" not in str(registry.value)


async def test_doctor_fails_no_redis_once_a_tenant_uses_the_simulator(
    deployment_factory: Any,
) -> None:
    """Its state is in Redis: without REDIS_URL each of its commands is answered
    gateway_not_configured, and doctor passed the row with a note (review finding)."""
    from paystream.tenancy.models import Tenant

    dep = await deployment_factory()
    no_redis = dep.settings.model_copy(update={"redis_url": None})
    assert "no tenant uses the simulator" in await check_redis(no_redis)
    await dep.add_tenants(Tenant(tenant_id="stripe-only", gateway="stripe"))
    assert "no tenant uses the simulator" in await check_redis(no_redis)
    await dep.add_tenants(Tenant(tenant_id="simulated-1", gateway="simulator"))
    with pytest.raises(CheckFailed, match=r"1 tenant\(s\) use the simulator gateway.*simulated-1"):
        await check_redis(no_redis)


async def test_doctor_says_whether_the_master_key_opens_every_tenant_secret(
    deployment_factory: Any,
) -> None:
    """Without a ledger, doctor never looked at the master key: a deployment whose key
    was missing, malformed or another passed, and its workers answered every Stripe
    tenant `gateway_not_configured` (review finding)."""
    import base64

    from paystream.tenancy.crypto import MasterKey, MasterKeyring
    from paystream.tenancy.models import Tenant
    from paystream.tenancy.secrets import seal_secret

    ours, other = (MasterKeyring(MasterKey(bytes([n]) * 32)) for n in (1, 2))
    key_b64 = base64.b64encode(ours.current.key).decode()
    dep = await deployment_factory(paystream_master_key=key_b64)
    assert "no tenant secrets" in await check_tenant_secrets(dep.settings)

    def sealed_under(keyring: MasterKeyring, tenant_id: str) -> Tenant:
        key = seal_secret(keyring, tenant_id, "api_key", f"sk_test_{tenant_id}")
        return Tenant(tenant_id=tenant_id, gateway="stripe", secrets={"api_key": key})

    await dep.add_tenants(sealed_under(ours, "sealed-ours"))
    assert "1 tenant secret(s) open" in await check_tenant_secrets(dep.settings)
    await dep.add_tenants(sealed_under(other, "sealed-other"))
    with pytest.raises(CheckFailed, match="1 of 2 tenant secrets do not open") as failed:
        await check_tenant_secrets(dep.settings)
    assert "sealed-other api_key" in str(failed.value) and "sk_test" not in str(failed.value)
    unset = dep.settings.model_copy(update={"master_key": None})
    with pytest.raises(CheckFailed, match="PAYSTREAM_MASTER_KEY is not set"):
        await check_tenant_secrets(unset)


async def test_doctor_fails_writes_that_may_land_on_one_disk(stack_settings: Settings) -> None:
    """With three replicas, acks=all on a topic whose min.insync.replicas is 1 may be
    acknowledged by the leader alone (review finding). Only this app id's changelogs
    count: another deployment on the cluster is not this one's (review finding)."""
    tag = uuid.uuid4().hex[:8]
    weak, ok = {"min.insync.replicas": "1"}, {"min.insync.replicas": "2"}
    await _made(
        stack_settings,
        {
            f"{tag}-payments-changelog": weak,
            f"{tag}-refunds-changelog": ok,
            f"{tag}-staging-payments-changelog": weak,  # app id "<tag>-staging"
        },
    )
    three = _only_changelogs(stack_settings, tag).model_copy(update={"replication_factor": 3})
    with pytest.raises(CheckFailed, match=rf"{tag}-payments-changelog \(1\)") as refused:
        await check_write_durability(three)
    assert "refunds" not in str(refused.value) and "staging" not in str(refused.value)
    one = three.model_copy(update={"replication_factor": 1})
    assert "nothing to require" in await check_write_durability(one)


async def test_doctor_fails_changelogs_that_drop_tombstones_before_stores_are_rebuilt(
    stack_settings: Settings,
) -> None:
    """A store caught up after its changelog compacted a deleted key's tombstone away
    keeps the key: the tombstones must outlive PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS."""
    tag = uuid.uuid4().hex[:8]
    await _made(
        stack_settings,
        {
            f"{tag}-payments-changelog": {"delete.retention.ms": "3600000"},
            f"{tag}-refunds-changelog": {"delete.retention.ms": "86400000"},
        },
    )
    settings = _only_changelogs(stack_settings, tag)
    with pytest.raises(CheckFailed, match=rf"{tag}-payments-changelog \(3600 s\)") as refused:
        await check_changelog_tombstones(settings)
    assert "refunds" not in str(refused.value)
    longer = settings.model_copy(update={"table_store_max_age_seconds": 600})
    assert "2 changelogs keep tombstones" in await check_changelog_tombstones(longer)


async def _made(settings: Settings, topics: dict[str, dict[str, str]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 1, 1, topic_configs=configs) for name, configs in topics.items()]
        )
    finally:
        await admin.close()


def _only_changelogs(settings: Settings, app_id: str) -> Settings:
    """Settings of app ``app_id`` whose own topics do not exist: its changelogs alone."""
    names = {
        field: f"{app_id}.absent.{field}"
        for field in ("commands_topic", "events_topic", "dlq_topic", "retry_topic",
                      "ledger_dlq_topic", "tenants_topic", "fraud_topic", "analytics_topic")
    }  # fmt: skip
    return settings.model_copy(update={**names, "app_id": app_id})


def test_the_flavor_row_fails_when_the_broker_answers_as_tansu_does() -> None:
    """Half the dev export line pasted (no PAYSTREAM_BROKER_FLAVOR): the flavor row said
    "none needed" beside the failures that follow from it (new-user review)."""
    from paystream.doctor import _flavor_said

    results = [
        CheckResult("workarounds for flavor", True, "none needed (flavor=kafka)", 0.0),
        CheckResult(
            "end offsets after batch",
            False,
            "end offset 1, expected 10; set PAYSTREAM_BROKER_FLAVOR=tansu",
            0.1,
        ),
    ]
    flavor = _flavor_said(list(results))[0]
    assert not flavor.ok and "set PAYSTREAM_BROKER_FLAVOR=tansu" in flavor.figure
    fine = [results[0], CheckResult("end offsets after batch", True, "10", 0.1)]
    assert _flavor_said(list(fine)) == fine


async def test_doctor_fails_commands_that_wait_with_no_worker_committing(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every server answers while the only worker is stopped: commands wait and nothing
    commits past them (review h59b: doctor passed). Caught up, or committing, it passes."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from paystream import doctor

    monkeypatch.setattr(doctor, "KEEP_UP_WATCH_S", 1.5)
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={"commands_topic": f"{tag}.commands", "app_id": f"keepup-{tag}"}
    )
    bootstrap = bootstrap_servers(settings.require_broker())
    assert "not created yet" in await doctor.check_workers_keep_up(settings)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(settings.commands_topic, b"{}", key=b"acme", partition=0)
    finally:
        await producer.stop()
    with pytest.raises(
        CheckFailed,
        match=r"3 command\(s\) waiting on 1 partition.*committed past none on "
        r"partition\(s\) 0 ",
    ):
        await doctor.check_workers_keep_up(settings)

    tp = TopicPartition(settings.commands_topic, 0)
    worker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.app_id)
    worker.assign([tp])
    await worker.start()
    try:

        async def works_through() -> None:  # a worker committing as it goes
            for offset in (1, 2):
                await asyncio.sleep(0.4)
                await worker.commit({tp: OffsetAndMetadata(offset, "")})

        progress = asyncio.ensure_future(works_through())
        figure = await doctor.check_workers_keep_up(settings)
        await progress
        assert "committed past on each" in figure, figure
        await worker.commit({tp: OffsetAndMetadata(3, "")})
        assert (await doctor.check_workers_keep_up(settings)).startswith("caught up"), figure
    finally:
        await worker.stop()


async def test_doctor_fails_a_partition_no_worker_commits_past_beside_others_that_move(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wedged worker among several that still heartbeat: its partitions wait while
    the others' move (review h59p: passed, as any partition moved)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from paystream import doctor

    monkeypatch.setattr(doctor, "KEEP_UP_WATCH_S", 1.5)
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={"commands_topic": f"{tag}.commands", "app_id": f"keepup-{tag}"}
    )
    bootstrap = bootstrap_servers(settings.require_broker())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # (its own two partitions: the stack's other topics keep theirs)
        await admin.create_topics([NewTopic(settings.commands_topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in (0, 1):
            for _ in range(2):
                await producer.send_and_wait(
                    settings.commands_topic, b"{}", key=b"acme", partition=partition
                )
    finally:
        await producer.stop()
    moving = TopicPartition(settings.commands_topic, 0)
    worker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.app_id)
    worker.assign([moving])
    await worker.start()
    try:

        async def works_through() -> None:  # partition 0's worker; 1's is wedged
            for offset in (1, 2):
                await asyncio.sleep(0.4)
                await worker.commit({moving: OffsetAndMetadata(offset, "")})

        progress = asyncio.ensure_future(works_through())
        with pytest.raises(CheckFailed, match=r"committed past none on partition\(s\) 1 in"):
            await doctor.check_workers_keep_up(settings)
        await progress
    finally:
        await worker.stop()


def test_redis_row_names_redis_not_the_broker_when_the_broker_is_down() -> None:
    """With REDIS_URL unset and the broker down, the "redis answers" row failed with the
    broker's error: Redis was never asked (review h67a)."""
    settings = Settings(kafka_broker_url="kafka://127.0.0.1:1")
    results = asyncio.run(_doctor.run_checks(settings, deployment=True))
    row = next(r for r in results if r.name == "redis answers")
    assert "Kafka" not in row.figure, row.figure
    assert "REDIS_URL" in row.figure, row.figure
