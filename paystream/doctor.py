"""``paystream doctor``: are the servers up, and does the broker behave the way Faust needs?

Each check is a short probe against the configured servers with its own deadline, on a
uniquely named topic or group that is deleted afterwards. The broker-behaviour checks
measure exactly the Tansu quirks listed in ``/work/shared/TANSU.md``: with
``PAYSTREAM_BROKER_FLAVOR=tansu`` they pass only because ``streams.broker_compat`` is
active; on real Kafka they pass unaided. The figures say which, so a workaround can be
dropped the day its quirk is gone.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import redis.asyncio as aioredis
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from paystream.errors import PaystreamError, described
from paystream.settings import Settings
from paystream.streams import broker_compat
from paystream.streams.admin import (
    RECORD_MAX_BYTES,
    changelog_topics,
    large_record_topics,
    undersized_topics,
)
from paystream.streams.kafka_auth import client_auth

__all__ = [
    "CheckResult",
    "measure_fetch_latency",
    "raw_latest_offset",
    "render_table",
    "run_checks",
]

#: A probe that takes longer than this has failed, whatever it was waiting for.
CHECK_TIMEOUT_S = 30.0
#: Caught-up fetch latency above this makes command→outcome latency visibly bad
#: (Tansu with Faust's 1500 ms wait: ~0.4-0.75 s; with the workaround: ~10-20 ms).
MAX_FETCH_LATENCY_MS = 300.0
#: Records produced in one batch for the end-offset check (Tansu's bug needs > 1).
BATCH_RECORDS = 10
LATENCY_SAMPLES = 7
#: A new group that takes longer than this to join makes worker start and failover slow
#: (Tansu with Faust's 60 s session timeout: ~32 s; with the 6 s workaround: ~3 s).
MAX_GROUP_JOIN_S = 20.0
_FAUST_DEFAULT_SESSION_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report."""

    name: str
    ok: bool
    figure: str
    duration: float


class CheckFailed(Exception):
    """A probe ran but the broker/server did not behave; the message is the figure."""


# The settings of the check running: its Kafka clients' TLS and login come from them.
_SETTINGS: ContextVar[Settings | None] = ContextVar("checked_settings", default=None)


def _auth() -> dict[str, Any]:
    """The Kafka clients' TLS and login (streams/kafka_auth.py). Read by the checks that
    reach the brokers only: unreadable TLS files fail those, not the database's."""
    settings = _SETTINGS.get()
    return {} if settings is None else client_auth(settings)


def _bootstrap(settings: Settings) -> str:
    return ",".join(settings.require_broker().removeprefix("kafka://").split(";"))


def _probe_name(kind: str) -> str:
    return f"paystream.doctor.{kind}.{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def _probe_topic(bootstrap: str, kind: str, partitions: int = 1) -> AsyncIterator[str]:
    """A fresh topic created explicitly (Tansu auto-creates 4 partitions otherwise)."""
    name = _probe_name(kind)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_auth())
    try:
        await admin.start()
        await admin.create_topics([NewTopic(name, partitions, 1)])
        try:
            yield name
        finally:
            # Tansu keeps everything in memory forever; don't leave probe topics behind.
            await admin.delete_topics([name])
    finally:
        await admin.close()


async def _produce_batch(bootstrap: str, topic: str, count: int) -> None:
    """``count`` records to partition 0, sent together so they share one record batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_auth(), linger_ms=100)
    try:
        await producer.start()
        futures = [
            await producer.send(topic, b"probe-%d" % i, key=b"k", partition=0) for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- the checks ------------------------------------------------------------------------


async def check_broker(settings: Settings) -> str:
    client = AIOKafkaClient(bootstrap_servers=_bootstrap(settings), **_auth())
    try:
        await client.bootstrap()
        brokers = client.cluster.brokers()
        return f"metadata ok, {len(brokers)} broker(s)"
    finally:
        await client.close()


async def check_database(settings: Settings) -> str:
    if settings.database_url is None:
        # Optional: only the ledger needs it (the workers run without one).
        return "DATABASE_URL not set: no ledger (outcomes are not stored in PostgreSQL)"
    from paystream.ledger.session import create_engine

    url = make_url(settings.database_url).set(drivername="postgresql+asyncpg")
    engine = create_engine(url, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            one = (await conn.execute(text("select 1"))).scalar_one()
            version = (await conn.execute(text("show server_version"))).scalar_one()
        if one != 1:
            raise CheckFailed(f"select 1 returned {one!r}")
        return f"select 1 ok, PostgreSQL {str(version).split()[0]}"
    finally:
        await engine.dispose()


# Tenants whose audit chain end doctor reads one at a time (an owner under RLS).
HIDDEN_CHAINS_CHECKED = 500


async def check_ledger_ready(settings: Settings) -> str:
    """What the ledger sink needs on its first batch (it would otherwise stall there): the
    master key, the application role's password and login, the schema at the latest
    migration, and row-level security binding that role."""

    from paystream.errors import ConfigurationError
    from paystream.ledger import assert_rls_enforced, create_engine
    from paystream.ledger.migrate import current, is_app_url, worker_database_url
    from paystream.ledger.migrate import head as schema_head
    from paystream.ledger.sink import asyncpg_url
    from paystream.tenancy.crypto import keyring_from_settings

    if settings.database_url is None:
        return "DATABASE_URL not set: no ledger (workers run without one)"
    try:
        keyring = keyring_from_settings(settings)
    except ConfigurationError as exc:
        raise CheckFailed(str(exc)) from exc
    password = settings.db_app_password.get_secret_value() if settings.db_app_password else ""
    given_url = asyncpg_url(settings.database_url)
    try:
        app_url = worker_database_url(given_url, password)
    except ConfigurationError as exc:
        raise CheckFailed(str(exc)) from exc
    head = schema_head()
    # The owner's URL reads the revision as the owner; the app role's own URL as itself
    # (granted since 0005: an older schema refuses it, and needs migrating anyway).
    try:
        found = await current(app_url if is_app_url(given_url) else given_url)
    except DBAPIError as exc:
        raise CheckFailed(
            f"the schema's revision is not readable as {make_url(given_url).username} "
            f"({type(exc.orig).__name__}): run `paystream migrate` (latest is {head})"
        ) from exc
    if found != head:
        raise CheckFailed(
            f"schema at {found or 'nothing'}, latest is {head}: run `paystream migrate`"
        )
    engine = create_engine(app_url, hide_parameters=True)
    held_ids = sorted({keyring.current.key_id, *(k.key_id for k in keyring.retired)})
    try:
        await assert_rls_enforced(engine)
        async with engine.connect() as conn:
            # (Tenant "" is none: every tenant's record counts. A fresh ledger passes.)
            seen = await conn.scalar(
                text("SELECT ledger_master_key_known('', CAST(:ids AS text[]), true)"),
                {"ids": held_ids},
            )
    except Exception as exc:
        raise CheckFailed(f"as paystream_app: {type(exc).__name__}: {exc}") from exc
    finally:
        await engine.dispose()
    figure = f"schema {head}, paystream_app logs in under RLS, master key {keyring.current.key_id}"
    if is_app_url(given_url):
        # Workers given only the app role's URL: RLS shows it one tenant's keys at a time.
        _refuse_unseen(seen, held_ids)
        return f"{figure} (data keys' master keys not checked: needs the owner's URL)"
    # Every master key the ledger's data keys are wrapped under must be in the keyring,
    # or the sink retries its first batch of such a tenant for ever. (As the owner: RLS
    # shows the application role one tenant's keys at a time.)
    owner = create_engine(given_url, hide_parameters=True)
    try:
        async with owner.connect() as conn:
            used = {
                str(key_id)
                for key_id in (
                    await conn.execute(text("SELECT DISTINCT master_key_id FROM data_keys"))
                ).scalars()
            }
            # Each tenant's audit chain is extended only under the master key of its
            # newest row, or past one `keys rotate` retired (audit._chain_key_held): the
            # sink stalls on any other (review h67n: doctor passed over it).
            # (Retired for that tenant: the sink reads retirements under its RLS, so
            # neither another tenant's row nor `keys rotate`'s marker ("*") counts.)
            heads = (
                await conn.execute(
                    text(
                        "SELECT a.key_id, count(*) FROM audit_heads h JOIN audit_log a "
                        "ON a.tenant_id = h.tenant_id AND a.seq = h.seq "
                        "WHERE a.key_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                        "audit_key_retirements r WHERE r.tenant_id = h.tenant_id "
                        "AND r.key_id = a.key_id) GROUP BY a.key_id"
                    )
                )
            ).all()
            # An owner held to the tenant policy (not a superuser, as on managed
            # PostgreSQL) sees no audit_log row: those heads are read tenant by tenant.
            hidden = (
                await conn.execute(
                    text(
                        "SELECT h.tenant_id, h.seq FROM audit_heads h WHERE h.seq > 0 "
                        "AND NOT EXISTS (SELECT 1 FROM audit_log a "
                        "WHERE a.tenant_id = h.tenant_id AND a.seq = h.seq) "
                        "ORDER BY h.tenant_id"
                    )
                )
            ).all()
            chain_ends = [(str(key_id), int(n)) for key_id, n in heads]
            # (Two round trips a tenant: at most HIDDEN_CHAINS_CHECKED of them, or a
            # managed database's round trips run the check past its deadline; review h67v.)
            unchecked = max(0, len(hidden) - HIDDEN_CHAINS_CHECKED)
            hidden = hidden[:HIDDEN_CHAINS_CHECKED]
            if hidden:
                by_key: dict[str, int] = {}
                # (One transaction, as the connection's: set_config(..., true) holds in it.)
                for tenant_id, seq in hidden:
                    await conn.execute(
                        text("SELECT set_config('app.current_tenant_id', :t, true)"),
                        {"t": tenant_id},
                    )
                    key_id = (
                        await conn.execute(
                            text(
                                "SELECT a.key_id FROM audit_log a WHERE a.tenant_id = :t "
                                "AND a.seq = :s AND a.key_id IS NOT NULL AND NOT EXISTS "
                                "(SELECT 1 FROM audit_key_retirements r WHERE "
                                "r.tenant_id = a.tenant_id AND r.key_id = a.key_id)"
                            ),
                            {"t": tenant_id, "s": seq},
                        )
                    ).scalar()
                    if key_id is not None:
                        by_key[key_id] = by_key.get(key_id, 0) + 1
                chain_ends += by_key.items()
    finally:
        await owner.dispose()
    held = {keyring.current.key_id, *(k.key_id for k in keyring.retired)}
    if missing := sorted(used - held):
        raise CheckFailed(
            f"ledger data keys are wrapped under master key(s) {', '.join(missing)}, not in "
            "PAYSTREAM_MASTER_KEY or PAYSTREAM_RETIRED_MASTER_KEYS"
        )
    if chains := sorted((key_id, n) for key_id, n in chain_ends if key_id not in held):
        raise CheckFailed(
            "audit chains end under master key(s) "
            + ", ".join(f"{key_id} ({n} tenant(s))" for key_id, n in chains)
            + ", neither in PAYSTREAM_MASTER_KEY or PAYSTREAM_RETIRED_MASTER_KEYS nor retired "
            "by `paystream keys rotate`: the ledger sink would stall on those tenants (is "
            "PAYSTREAM_MASTER_KEY the right key?)"
        )
    _refuse_unseen(seen, held_ids)  # (after the checks that name a tenant's key)
    if unchecked:
        figure += f" (audit chain ends of {unchecked} more tenant(s) not checked)"
    return figure


def _refuse_unseen(seen: bool, held_ids: list[str]) -> None:
    """The sink would refuse every new tenant's first write, and every chain past a
    retired key, as `config` (audit._refuse_unless_ledger_has_seen; review h71f)."""
    if not seen:
        raise CheckFailed(
            f"the ledger has seen none of this keyring's master keys ({', '.join(held_ids)}),"
            " though it has seen others: is PAYSTREAM_MASTER_KEY the right key? (After a "
            "rotation of a ledger last rotated before migration 0012: `paystream keys "
            "rotate` again, the old key retired)"
        )


async def check_tenant_secrets(settings: Settings) -> str:
    """The master key parses, and opens every tenant secret in the registry: a worker
    without it (or with another) answers each of those tenants' commands
    `gateway_not_configured`. Failures are named by tenant, secret and key id only."""
    from paystream.errors import ConfigurationError
    from paystream.tenancy.crypto import CryptoError, keyring_from_settings
    from paystream.tenancy.registry import list_tenants
    from paystream.tenancy.secrets import open_secret

    keyring = None
    if settings.master_key is not None or settings.retired_master_keys is not None:
        try:
            keyring = keyring_from_settings(settings)
        except ConfigurationError as exc:
            raise CheckFailed(str(exc)) from exc
    sealed = [
        (tenant.tenant_id, name, value)
        # (No registry topic yet: no secrets; the registry check says so.)
        for tenant in (await list_tenants(settings, missing_ok=True)).values()
        for name, value in sorted(tenant.secrets.items())
    ]
    key = "none set" if keyring is None else f"master key {keyring.current.key_id}"
    if keyring is not None and keyring.retired:
        key += f" (+{len(keyring.retired)} retired)"
    if not sealed:
        return f"{key}; no tenant secrets"
    if keyring is None:
        raise CheckFailed(
            f"PAYSTREAM_MASTER_KEY is not set, and {len(sealed)} tenant secret(s) need it"
        )
    failed = []
    for tenant_id, name, value in sealed:
        try:
            open_secret(keyring, tenant_id, name, value)
        except (CryptoError, ValueError) as exc:
            failed.append(f"{tenant_id} {name} ({type(exc).__name__})")
    if failed:
        raise CheckFailed(
            f"{len(failed)} of {len(sealed)} tenant secrets do not open with {key}: "
            + ", ".join(failed[:5])
            + (" ..." if len(failed) > 5 else "")
        )
    return f"{key}; {len(sealed)} tenant secret(s) open"


async def check_redis(settings: Settings) -> str:
    if settings.redis_url is None:
        # Optional: only the simulator gateway keeps state there. Needed once a tenant of
        # the registry uses it: each of its commands would be answered
        # gateway_not_configured.
        try:
            simulated = await _simulator_tenants(settings)
        except (KafkaError, OSError) as exc:
            # (Redis was never asked: the broker's error on this row sent a reader to Redis.)
            # (Unreachable, or an answer refusing it: a registry topic's ACL, say.)
            why = (
                "broker unreachable"
                if isinstance(exc, OSError | KafkaConnectionError | KafkaTimeoutError)
                else f"the tenant registry could not be read ({described(exc)})"
            )
            raise CheckFailed(
                "REDIS_URL not set; whether a tenant uses the simulator gateway, which "
                f"keeps its state there, is unknown: skipped, {why}"
            ) from exc
        if simulated:
            raise CheckFailed(
                f"REDIS_URL is not set, and {len(simulated)} tenant(s) use the simulator "
                f"gateway, which keeps its state there: {', '.join(simulated[:5])}"
                + (" ..." if len(simulated) > 5 else "")
            )
        return "REDIS_URL not set: no tenant uses the simulator (Stripe tenants need none)"
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        if not await client.ping():
            raise CheckFailed("PING not answered")
        info = await client.info("server")
        memory = await client.info("memory")
        persistence = await client.info("persistence")
    finally:
        await client.aclose()
    # It stands in for a provider's own storage: an evicted idempotency record makes a
    # re-sent charge a second one (every key there has a TTL, so volatile-* evict too).
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    limit = int(memory.get("maxmemory", 0) or 0)
    if policy != "noeviction" and limit:
        raise CheckFailed(
            f"maxmemory-policy {policy} evicts keys under memory pressure: the simulator's "
            "idempotency records among them; set noeviction"
        )
    if policy != "noeviction":  # (no memory limit: nothing is evicted yet)
        policy = f"{policy} (would evict once maxmemory is set: set noeviction)"
    kept = (
        "AOF on"
        if persistence.get("aof_enabled") in (1, "1")
        else "AOF off (a restart loses what no snapshot holds: development only)"
    )
    return f"PING ok, Redis {info.get('redis_version', '?')}, {policy}, {kept}"


async def _simulator_tenants(settings: Settings) -> list[str]:
    """Registered tenants on the simulator gateway (none if the broker has no registry)."""
    from paystream.tenancy.registry import list_tenants

    if settings.kafka_broker_url is None:
        return []
    tenants = await list_tenants(settings, missing_ok=True)
    return sorted(t.tenant_id for t in tenants.values() if t.gateway == "simulator")


async def check_headers(settings: Settings) -> str:
    """CloudEvents binary mode puts every attribute in record headers."""
    bootstrap = _bootstrap(settings)
    headers = [("ce_id", b"doctor-1"), ("ce_type", b"com.paystream.doctor"), ("empty", b"")]
    async with _probe_topic(bootstrap, "headers") as topic:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_auth())
        try:
            await producer.start()
            await producer.send_and_wait(topic, b"{}", key=b"k", headers=headers)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, **_auth(), auto_offset_reset="earliest"
        )
        try:
            await consumer.start()
            record = await consumer.getone()
        finally:
            await consumer.stop()
    got = [(k, bytes(v)) for k, v in record.headers]
    if got != headers or record.key != b"k":
        raise CheckFailed(f"sent {headers}, got {got}")
    return f"{len(headers)} headers and key round-trip"


async def check_idempotent_producer(settings: Settings) -> str:
    """``enable_idempotence=True`` needs InitProducerId (v3 on Tansu, via the workaround)."""
    bootstrap = _bootstrap(settings)
    async with _probe_topic(bootstrap, "idempotence") as topic:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_auth(), enable_idempotence=True)
        try:
            await producer.start()
            meta = await producer.send_and_wait(topic, b"once", partition=0)
        finally:
            await producer.stop()
    return f"producer id assigned, record at offset {meta.offset}"


async def check_group_join(settings: Settings) -> str:
    """Time for a new consumer group to get its assignment, with the app's session timeout."""
    bootstrap = _bootstrap(settings)
    overrides = broker_compat.faust_overrides(settings)
    session_s = float(overrides.get("broker_session_timeout", _FAUST_DEFAULT_SESSION_TIMEOUT_S))
    heartbeat_s = float(overrides.get("broker_heartbeat_interval", 3.0))
    async with _probe_topic(bootstrap, "group") as topic:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            **_auth(),
            group_id=_probe_name("group"),
            session_timeout_ms=int(session_s * 1000),
            heartbeat_interval_ms=int(heartbeat_s * 1000),
            rebalance_timeout_ms=int(session_s * 1000),
            request_timeout_ms=int(max(session_s, 30.0) * 1000) + 5000,
            enable_auto_commit=False,
        )
        started = time.monotonic()
        try:
            await consumer.start()
            while not consumer.assignment():
                if time.monotonic() - started > MAX_GROUP_JOIN_S:
                    raise CheckFailed(
                        f"no assignment after {MAX_GROUP_JOIN_S:.0f} s "
                        f"(session timeout {session_s:.0f} s)"
                    )
                # getmany drives the coordinator; returns at once when nothing is there.
                await consumer.getmany(timeout_ms=100)
            joined = time.monotonic() - started
        finally:
            await consumer.stop()
    # A worker must get partitions well within a session timeout, or failover crawls.
    if joined > session_s:
        raise CheckFailed(f"joined in {joined:.1f} s (session timeout {session_s:.0f} s)")
    return f"joined in {joined:.1f} s (session timeout {session_s:.0f} s)"


async def raw_latest_offset(bootstrap: str, tp: TopicPartition) -> int:
    """The broker's own ListOffsets(LATEST) answer, bypassing any correction."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **_auth())
    await client.bootstrap()
    try:
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            await client.force_metadata_update()
            node = client.cluster.leader_for_partition(tp)
        response = await client.send(node, OffsetRequest(-1, 0, [(tp.topic, [(tp.partition, -1)])]))
        for _topic, parts in response.topics:
            for _partition, error_code, *info in parts:
                if error_code:
                    raise CheckFailed(f"ListOffsets error {error_code}")
                return int(info[-1]) if response.API_VERSION else int(info[0][0])
        raise CheckFailed("ListOffsets answered no partition")
    finally:
        await client.close()


async def check_end_offsets(settings: Settings) -> str:
    """After one batch of N records, the end offset must be N (Faust recovery relies on it)."""
    bootstrap = _bootstrap(settings)
    async with _probe_topic(bootstrap, "offsets") as topic:
        tp = TopicPartition(topic, 0)
        await _produce_batch(bootstrap, topic, BATCH_RECORDS)
        raw = await raw_latest_offset(bootstrap, tp)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **_auth())
        try:
            await consumer.start()
            end = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
    if end != BATCH_RECORDS:
        hint = f"; {_TANSU_HINT}" if not settings.embedded_broker else ""
        raise CheckFailed(f"end offset {end}, expected {BATCH_RECORDS}{hint}")
    if raw != end:
        return f"{end} (broker said {raw}, corrected by workaround)"
    return f"{end} (broker correct unaided)"


async def check_fetch_latency(settings: Settings) -> str:
    """Produce→consume latency for a caught-up consumer with the workers' fetch max wait."""
    bootstrap = _bootstrap(settings)
    wait_ms = broker_compat.worker_fetch_max_wait_ms(settings)
    async with _probe_topic(bootstrap, "latency") as topic:
        tp = TopicPartition(topic, 0)
        latencies = await measure_fetch_latency(bootstrap, tp, wait_ms, LATENCY_SAMPLES)
    p50 = statistics.median(latencies)
    figure = f"p50 {p50:.0f} ms, max {max(latencies):.0f} ms (fetch wait {wait_ms} ms)"
    if p50 > MAX_FETCH_LATENCY_MS:
        raise CheckFailed(figure)
    return figure


async def measure_fetch_latency(
    bootstrap: str, tp: TopicPartition, fetch_max_wait_ms: int, samples: int
) -> list[float]:
    """Milliseconds from send to receipt, one record at a time, consumer caught up."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **_auth(), fetch_max_wait_ms=fetch_max_wait_ms
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_auth(), linger_ms=0)
    try:
        await consumer.start()
        await producer.start()
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        latencies: list[float] = []
        for i in range(samples):
            receive = asyncio.ensure_future(consumer.getone(tp))
            # Let the consumer's background fetch go out and park on the broker first:
            # the quirk is about a fetch that is already waiting when data arrives.
            await _fetch_in_flight(consumer, deadline_s=5.0)
            sent = time.monotonic()
            await producer.send_and_wait(tp.topic, b"ping-%d" % i, partition=tp.partition)
            await receive
            latencies.append((time.monotonic() - sent) * 1000)
        return latencies
    finally:
        await producer.stop()
        await consumer.stop()


async def _fetch_in_flight(consumer: AIOKafkaConsumer, deadline_s: float) -> None:
    """Wait until the consumer's fetcher has a Fetch request outstanding."""
    fetcher = consumer._fetcher
    deadline = time.monotonic() + deadline_s
    while fetcher is not None and not fetcher._in_flight:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.001)


async def check_workarounds(settings: Settings) -> str:
    """Tansu needs every workaround; real Kafka needs none of them."""
    overrides = broker_compat.faust_overrides(settings)
    if not settings.embedded_broker:
        return "none needed (flavor=kafka)"
    active = broker_compat.active_patches()
    if not broker_compat.patches_active():
        raise CheckFailed(f"flavor=tansu but only {active or 'no'} patches active")
    if overrides.get("broker_session_timeout") != 6.0:
        raise CheckFailed(f"session timeout override missing: {overrides}")
    return f"active: {', '.join(active)}, session 6 s"


async def _topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str | None]:
    """All of a topic's configs (the embedded broker drops the connection when asked for
    named ones); an error answer is a failed check, never read as the defaults."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    (response,) = await admin.describe_configs([resource])
    (code, message, _type, _name, entries), *_ = response.resources
    if code:
        raise CheckFailed(f"cannot read {topic}'s configs: error {code} {message or ''}")
    return {e[0]: e[1] for e in entries}


async def check_registry_compacted(settings: Settings) -> str:
    """The tenant registry must be compacted: with plain retention, tenant records expire
    and their tenants' commands become `unknown_tenant`."""
    return await _check_compacted(
        settings,
        settings.tenants_topic,
        "PAYSTREAM_TENANTS_TOPIC",
        missing="workers will not run commands",
        expiring="tenant records would expire",
    )


async def check_replay_positions_compacted(settings: Settings) -> str:
    """Where `dlq replay` got to is kept, compacted, beside its consumer group's offsets
    (which Kafka drops a week after a replay's last commit): with plain retention the
    positions expire too, and every record ever parked reads as waiting again."""
    return await _check_compacted(
        settings,
        settings.replay_positions_topic,
        "PAYSTREAM_REPLAY_POSITIONS_TOPIC",
        missing="where replays got to is kept only in offsets Kafka drops",
        expiring="where replays got to would expire",
    )


async def _check_compacted(
    settings: Settings, topic: str, setting: str, *, missing: str, expiring: str
) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(settings), **_auth())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if topic not in existing:
            if settings.commands_topic in existing:
                # Topics were created, this one not (misnamed, deleted, or made by a
                # version before it).
                raise CheckFailed(
                    f"{topic} does not exist: {missing}; run `paystream topics` (or check "
                    f"{setting})"
                )
            return f"{topic} not created yet (`paystream topics` creates it compacted)"
        configs = await _topic_configs(admin, topic)
        policy = configs.get("cleanup.policy") or "delete"
        if "compact" not in policy.split(","):
            raise CheckFailed(
                f"{topic} has cleanup.policy={policy}: {expiring}; set cleanup.policy=compact"
            )
        if "delete" in policy.split(",") and (limit := _retention_limit(configs)):
            # compact,delete also deletes by age or size: the newest record of a key
            # that has not changed for that long goes too.
            raise CheckFailed(
                f"{topic} has cleanup.policy={policy} with {limit}: {expiring}; set "
                "cleanup.policy=compact"
            )
        return f"{topic} cleanup.policy={policy}"
    finally:
        await admin.close()


async def check_command_timestamps(settings: Settings) -> str:
    """Commands must carry the broker's append time: the tenant limits count by record
    time, and a producer's own timestamps can be set to any past day (each with its
    quota again)."""
    topic = settings.commands_topic
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(settings), **_auth())
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return f"{topic} not created yet (`paystream topics` creates it with LogAppendTime)"
        kind = (await _topic_configs(admin, topic)).get("message.timestamp.type")
        if kind != "LogAppendTime":
            raise CheckFailed(
                f"{topic} has message.timestamp.type={kind or 'CreateTime'}: producers set "
                "the time the tenant limits count by; set message.timestamp.type="
                "LogAppendTime on the topic"
            )
        if settings.embedded_broker:
            return f"{topic} LogAppendTime (stored; the embedded broker does not apply it)"
        return f"{topic} message.timestamp.type=LogAppendTime"
    finally:
        await admin.close()


#: How long the keep-up check watches for a commit (the agents commit every second).
KEEP_UP_WATCH_S = 5.0


async def check_workers_keep_up(settings: Settings) -> str:
    """Commands waiting, and the workers' group committing past them: every server can
    answer while the only worker is stopped or wedged (review h59b: doctor passed, and
    `paystream send` timed out). Quiet and caught up passes whether or not a worker
    runs: nothing waits."""
    topic, group = settings.commands_topic, settings.app_id
    bootstrap = _bootstrap(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_auth())
    # (Committed records only, as the workers read: an upstream producer's transaction
    # markers take offsets no record holds.)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", **_auth()
    )
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return f"{topic} not created yet"
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]

        async def committed() -> dict[TopicPartition, int]:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

        first = await committed()
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        behind = {
            tp: ends[tp] - max(first.get(tp, 0), starts[tp])
            for tp in tps
            if ends[tp] > max(first.get(tp, 0), starts[tp])
        }
        behind = await _holding_records(consumer, behind, first, starts)
        if not behind:
            return f"caught up: nothing waiting on {len(tps)} partition(s)"
        waiting = sum(behind.values())
        await asyncio.sleep(KEEP_UP_WATCH_S)
        then = await committed()
        moved = [tp for tp in behind if then.get(tp, -1) > first.get(tp, -1)]
    finally:
        await consumer.stop()
        await admin.close()
    where = f"{waiting} command(s) waiting on {len(behind)} partition(s)"
    stuck = sorted(tp.partition for tp in behind if tp not in moved)
    if not stuck:
        return f"{where}, committed past on each in {KEEP_UP_WATCH_S:g} s"
    # Each partition waiting must move: one wedged worker among several that heartbeat
    # holds its own partitions while the others' move (review h59p).
    shown = ", ".join(map(str, stuck[:10])) + (", ..." if len(stuck) > 10 else "")
    raise CheckFailed(
        f"{where} and group {group} committed past none on partition(s) {shown} in "
        f"{KEEP_UP_WATCH_S:g} s: no worker runs them (stopped, wedged, rebalancing, or "
        "every batch waiting on its provider): see each worker's /readyz and its log"
    )


async def _holding_records(
    consumer: AIOKafkaConsumer,
    behind: dict[TopicPartition, int],
    committed: dict[TopicPartition, int],
    starts: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Of the partitions whose end is past their committed offset, those with a record
    there to read: a transaction's commit marker after the last record takes the end
    offset one further (review h59e: it read as a command waiting, for good)."""
    if not behind:
        return behind
    consumer.assign(list(behind))
    for tp in behind:
        consumer.seek(tp, max(committed.get(tp, 0), starts[tp]))
    found: set[TopicPartition] = set()
    deadline = time.monotonic() + 2.0
    while len(found) < len(behind) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500, max_records=len(behind) * 10)
        found |= {tp for tp, records in batch.items() if records}
    return {tp: n for tp, n in behind.items() if tp in found}


def _retention_limit(configs: dict[str, str | None]) -> str | None:
    """The age or size limit a topic deletes by, if any (``retention.bytes`` left out:
    a broker that does not report it applies none, as Kafka's default)."""
    if configs.get("retention.ms") != "-1":
        return f"retention.ms={configs.get('retention.ms') or 'broker default'}"
    if configs.get("retention.bytes") not in (None, "-1"):
        return f"retention.bytes={configs['retention.bytes']}"
    return None


async def check_parked_retention(settings: Settings) -> str:
    """Parked commands and dead letters must stay until a person handles them: a parked
    payment the provider may have charged, expired by retention, is gone unseen."""
    topics = (settings.retry_topic, settings.dlq_topic, settings.ledger_dlq_topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(settings), **_auth())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [t for t in topics if t in existing]
        if not present:
            return "not created yet (`paystream topics` creates them with retention.ms=-1)"
        if missing := [t for t in topics if t not in existing]:
            # Declared later by whoever first writes one, with the broker's defaults.
            raise CheckFailed(
                f"{', '.join(missing)} not created: run `paystream topics` (or check "
                "PAYSTREAM_RETRY_TOPIC, PAYSTREAM_DLQ_TOPIC, PAYSTREAM_LEDGER_DLQ_TOPIC)"
            )
        expiring = []
        for topic in present:
            configs = await _topic_configs(admin, topic)
            if limit := _retention_limit(configs):
                expiring.append(f"{topic} ({limit})")
            elif "compact" in (configs.get("cleanup.policy") or "delete").split(","):
                # Parked records are keyed by tenant: compaction keeps each tenant's newest.
                expiring.append(f"{topic} (cleanup.policy={configs['cleanup.policy']})")
        if expiring:
            raise CheckFailed(
                f"parked commands and dead letters are deleted unseen on {', '.join(expiring)}: "
                "set retention.ms=-1, retention.bytes=-1 and cleanup.policy=delete on them"
            )
    finally:
        await admin.close()
    return f"{len(present)} topics keep their records (retention.ms=-1); {await _waiting(settings)}"


async def _waiting(settings: Settings) -> str:
    """What waits there for `paystream dlq replay` (the figure only: a backlog is the
    operators' to handle, PaystreamParkedUnreplayed, not a broken setup)."""
    from paystream.dlq import age_text, backlog, parked_topics

    topics = parked_topics(settings)
    try:
        found = await asyncio.wait_for(backlog(settings, list(topics.values())), 15)
    except (KafkaError, OSError, TimeoutError, PaystreamError) as exc:
        return f"waiting for a replay: not read ({type(exc).__name__})"
    now_ms = time.time() * 1000
    said = []
    for label, topic in topics.items():
        got = found[topic]
        age = ""
        if got.waiting and got.oldest_ms is not None:
            age = f", oldest {age_text(now_ms - got.oldest_ms)} ago"
        said.append(f"{label} {got.waiting}{age}")
    return "waiting for a replay: " + "; ".join(said)


async def check_record_limits(settings: Settings) -> str:
    """Every topic paystream writes (its own and its tables' changelogs) must take its
    largest records: a smaller limit fails the batch holding one on every redelivery."""
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(settings), **_auth())
    await admin.start()
    try:
        existing = await admin.list_topics()
    finally:
        await admin.close()
    topics = [
        t for t in (*large_record_topics(settings), *changelog_topics(settings)) if t in existing
    ]
    if not topics:
        return "no paystream topics yet"
    small, unread = await undersized_topics(settings, topics)
    if small:
        raise CheckFailed(
            f"records up to {RECORD_MAX_BYTES} bytes refused by {', '.join(small)}: "
            f"set max.message.bytes >= {RECORD_MAX_BYTES}"
        )
    if unread:
        raise CheckFailed(f"could not read the record size limits of {', '.join(unread)}")
    return f"{len(topics)} topics take records of {RECORD_MAX_BYTES} bytes"


async def _existing_topic_configs(
    settings: Settings, names: list[str]
) -> dict[str, dict[str, str | None]]:
    """The configs of those of ``names`` that exist, by topic, in their order."""
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(settings), **_auth())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        return {t: await _topic_configs(admin, t) for t in names if t in existing}
    finally:
        await admin.close()


async def check_write_durability(settings: Settings) -> str:
    """With three replicas or more, every topic paystream writes (its own and its tables'
    changelogs) must have min.insync.replicas at least 2: acks=all waits only for the
    replicas in sync, and Kafka's default lets that be the leader alone."""
    if settings.replication_factor < 3:
        return f"replication factor {settings.replication_factor}: nothing to require"
    found = await _existing_topic_configs(
        settings, [*settings.topic_names(), *changelog_topics(settings)]
    )
    weak = []
    for topic, configs in found.items():
        value = configs.get("min.insync.replicas")
        if not (value or "1").isdigit() or int(value or "1") < 2:
            weak.append(f"{topic} ({value or 'broker default'})")
    if not found:
        return "no paystream topics yet"
    if weak:
        raise CheckFailed(
            f"an acknowledged write may be on one disk only: min.insync.replicas below 2 on "
            f"{', '.join(weak[:5])}{' ...' if len(weak) > 5 else ''}; set it to 2"
        )
    return f"{len(found)} topics need 2 replicas in sync"


async def check_changelog_tombstones(settings: Settings) -> str:
    """The tables' changelogs must keep a deleted key's tombstone after compaction for
    longer than PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS: a worker's store younger than that
    is caught up from the changelog, and would keep a key whose tombstone is gone."""
    found = await _existing_topic_configs(settings, changelog_topics(settings))
    short = []
    for topic, configs in found.items():
        value = configs.get("delete.retention.ms")
        kept_ms = int(value) if value is not None and value.isdigit() else None
        if kept_ms is not None and kept_ms <= settings.table_store_max_age_seconds * 1000:
            short.append(f"{topic} ({kept_ms // 1000} s)")
    if not found:
        return "no table changelogs yet"
    if short:
        raise CheckFailed(
            f"deleted keys' tombstones go before a store that old is rebuilt "
            f"(PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS={settings.table_store_max_age_seconds}) "
            f"on {', '.join(short)}: raise their delete.retention.ms, or lower the setting"
        )
    # (A figure, not a failure: a changelog made before paystream declared it keeps a
    # key's superseded values, an erased customer's data among them, until the cleaner
    # reaches them.)
    unbounded = [
        topic
        for topic, configs in found.items()
        if (configs.get("max.compaction.lag.ms") or "").strip() in ("", str(2**63 - 1))
    ]
    lag = f"; no max.compaction.lag.ms on {len(unbounded)}" if unbounded else ""
    return f"{len(found)} changelogs keep tombstones past the store age{lag}"


_CheckFn = Callable[[Settings], Awaitable[str]]

_SERVER_CHECKS: list[tuple[str, _CheckFn]] = [
    ("broker answers", check_broker),
    ("database answers", check_database),
    ("redis answers", check_redis),
]
_BROKER_BEHAVIOUR: list[tuple[str, _CheckFn]] = [
    ("tenant registry compacted", check_registry_compacted),
    ("replay positions compacted", check_replay_positions_compacted),
    ("tenant secrets open", check_tenant_secrets),
    ("command timestamps by broker", check_command_timestamps),
    ("parked records kept", check_parked_retention),
    ("record size limits", check_record_limits),
    ("writes on two replicas", check_write_durability),
    ("changelog tombstones kept", check_changelog_tombstones),
    ("workarounds for flavor", check_workarounds),
    ("headers round-trip", check_headers),
    ("idempotent producer", check_idempotent_producer),
    ("group join time", check_group_join),
    ("end offsets after batch", check_end_offsets),
    ("caught-up fetch latency", check_fetch_latency),
    ("workers keep up", check_workers_keep_up),
]


async def _run_one(name: str, fn: _CheckFn, settings: Settings) -> CheckResult:
    started = time.monotonic()
    try:
        _SETTINGS.set(settings)
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            figure = await fn(settings)
        ok = True
    except CheckFailed as exc:
        ok, figure = False, str(exc)
    except TimeoutError:
        ok, figure = False, f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except Exception as exc:
        ok, figure = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(name, ok, _without_credentials(figure, settings), time.monotonic() - started)


def _without_credentials(text: str, settings: Settings) -> str:
    """``text`` with the servers' credentials blanked: a URL the driver cannot parse (a
    password holding an unescaped "@" or ":") comes back in its error, password and all."""
    app_password = settings.db_app_password
    passwords = [
        # (The ledger check builds the app role's URL with this one.)
        "" if app_password is None else app_password.get_secret_value(),
    ]
    for url in (settings.database_url, settings.redis_url, settings.kafka_broker_url):
        rest = (url or "").partition("://")[2]
        credentials = rest.rpartition("@")[0]  # everything up to the last "@"
        passwords.append(credentials.partition(":")[2])  # (the user name is no secret)
    for password in passwords:
        if not password:
            continue
        # The whole, decoded too, then each piece a parser may have split it into at a
        # character that ends a URL part (longest first).
        # (Escaped too: the app role's URL is built with it percent-escaped.)
        pieces = {password, unquote(password), quote(password, safe=""), quote(password)}
        pieces |= {p for whole in list(pieces) for p in re.split(r"[:@/?#]", whole)}
        for piece in sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True):
            text = text.replace(piece, "***")
    return text


async def run_checks(
    settings: Settings,
    *,
    deployment: bool = False,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every check, one after another (latency figures need a quiet machine).

    ``deployment``: the servers are the operator's own (not a fresh embedded stack), so
    also check what the workers need of them beyond answering (the ledger's set-up).
    ``progress`` gets each result as it comes (a server that never answers takes 30 s
    a check: the table alone came after a minute of silence; review finding).
    """
    # Exactly what the app does at start-up, so the checks see the workers' behaviour.
    broker_compat.apply(settings)
    results: list[CheckResult] = []

    async def run(name: str, fn: _CheckFn, skip: str | None = None) -> CheckResult:
        result = (
            CheckResult(name, False, f"skipped: {skip}", 0.0)
            if skip
            else await _run_one(name, fn, settings)
        )
        results.append(result)
        if progress is not None:
            progress(result)
        return result

    found = {name: await run(name, fn) for name, fn in _SERVER_CHECKS}
    if deployment:
        unanswered = not found["database answers"].ok
        await run(
            "ledger ready", check_ledger_ready, "database unreachable" if unanswered else None
        )
    broker_ok = found["broker answers"].ok
    for name, fn in _BROKER_BEHAVIOUR:
        await run(name, fn, None if broker_ok else "broker unreachable")
    return _flavor_said(results)


def _flavor_said(results: list[CheckResult]) -> list[CheckResult]:
    """The flavor row fails too when the broker answers end offsets as Tansu does: its
    PASS ("none needed") beside the failures the missing workarounds cause (a producer
    refused, a group never joined) sent a user pasting half the dev export line astray."""
    by_name = {r.name: i for i, r in enumerate(results)}
    offsets, flavor = by_name.get("end offsets after batch"), by_name.get("workarounds for flavor")
    if offsets is None or flavor is None or _TANSU_HINT not in results[offsets].figure:
        return results
    row = results[flavor]
    results[flavor] = CheckResult(
        row.name,
        False,
        "the broker answers as Tansu does (end offsets after batch): "
        "set PAYSTREAM_BROKER_FLAVOR=tansu",
        row.duration,
    )
    return results


_TANSU_HINT = "set PAYSTREAM_BROKER_FLAVOR=tansu"


def render_table(results: list[CheckResult]) -> str:
    """Plain-text table: check, PASS/FAIL, figure, seconds."""
    rows = [("check", "result", "figure", "time")] + [
        (r.name, "PASS" if r.ok else "FAIL", r.figure, f"{r.duration:.2f} s") for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)
