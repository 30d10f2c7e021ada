"""The registry mirror: every tenant record, on every worker, kept current."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner

from paystream.cli import cli
from paystream.settings import load_settings
from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import (
    UnreadableTenant,
    put_tenant,
    registered_tenant,
    tenant_record,
)


@contextlib.asynccontextmanager
async def _running(mirror: RegistryMirror) -> AsyncIterator[None]:
    task = asyncio.create_task(mirror.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


def _mirror() -> RegistryMirror:
    return RegistryMirror(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))


def _value(tenant: Tenant) -> bytes:
    return json.dumps(tenant_record(tenant)).encode()


def test_records_tombstones_and_updates() -> None:
    mirror = _mirror()
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme")))
    mirror.apply(b'"beta"', _value(Tenant(tenant_id="beta")))
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme", status=TenantStatus.SUSPENDED)))
    mirror.apply(b'"beta"', None)
    assert list(mirror.tenants) == ["acme"]
    assert mirror.tenants["acme"].status is TenantStatus.SUSPENDED


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, b"{}"),
        (b"not json", b"{}"),
        (b"42", b"{}"),
        (b'"acme"', b"not json"),
        (b'"acme"', b'{"tenant_id": "acme", "field_from_a_newer_version": 1}'),
        (b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="other"))).encode()),
    ],
    ids=["no-key", "key-not-json", "key-not-a-string", "value-not-json", "unknown-field",
         "id-mismatch"],
)  # fmt: skip
def test_a_bad_record_is_skipped_and_the_last_good_one_kept(key: Any, value: bytes) -> None:
    mirror = _mirror()
    good = Tenant(tenant_id="acme", limits=TenantLimits(commands_per_second=3))
    mirror.apply(b'"acme"', _value(good))
    mirror.apply(key, value)
    assert mirror.tenants == {"acme": good} and mirror.invalid == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_loads_the_whole_registry_then_follows_it(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    before = [Tenant(tenant_id=f"m-{i}") for i in range(12)]  # on every partition
    await dep.add_tenants(*before)
    mirror = RegistryMirror(dep.settings, poll_ms=100)
    # Left from an earlier read (before a broker error): deleted since, so not met again.
    mirror.tenants["gone"] = Tenant(tenant_id="gone")
    async with _running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 30)
        # Ready means loaded: every tenant registered before the start is known.
        assert set(mirror.tenants) == {t.tenant_id for t in before}
        await put_tenant(dep.settings, Tenant(tenant_id="m-0", status=TenantStatus.SUSPENDED))
        await put_tenant(dep.settings, Tenant(tenant_id="m-new"))
        await dep.produce(dep.settings.tenants_topic, (b'"m-1"', None, None))
        await _until(
            lambda: (
                "m-new" in mirror.tenants
                and "m-1" not in mirror.tenants
                and mirror.tenants["m-0"].status is TenantStatus.SUSPENDED
            )
        )


@pytest.mark.asyncio(loop_scope="session")
async def test_an_absent_registry_topic_means_no_tenants_yet(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    absent = dep.settings.model_copy(update={"tenants_topic": f"{dep.settings.app_id}.none"})
    mirror = RegistryMirror(absent, poll_ms=100)
    async with _running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 30)
        assert mirror.tenants == {}


def test_an_unreadable_latest_record_is_noted_until_a_readable_one() -> None:
    mirror = _mirror()
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme")))
    mirror.apply(b'"acme"', b'{"tenant_id": "acme", "field_from_a_newer_version": 1}')
    assert mirror.unreadable == {"acme"} and "acme" in mirror.tenants
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme", name="A")))
    assert mirror.unreadable == set()
    mirror.apply(b'"beta"', b"junk")
    mirror.apply(b'"beta"', None)
    assert mirror.unreadable == set()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_cli_never_rewrites_a_tenant_from_an_older_record(
    deployment_factory: Any,
) -> None:
    """Suspending (or any change) would write back the last record this version can read,
    undoing a newer change it cannot: refused."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="newer"))
    newer = {**tenant_record(Tenant(tenant_id="newer")), "status": "suspended", "x": 1}
    await dep.produce(dep.settings.tenants_topic, (b'"newer"', json.dumps(newer).encode(), None))
    with pytest.raises(UnreadableTenant, match="cannot be read"):
        await registered_tenant(dep.settings, "newer")
    for args in (["tenants", "suspend", "newer"], ["tenants", "add", "newer", "--name", "N"]):
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=dep.env)
        assert result.exit_code == 1 and "cannot be read" in result.output, result.output
    assert await registered_tenant(dep.settings, "other") is None


@pytest.mark.asyncio(loop_scope="session")
async def test_a_recreated_registry_topic_is_read_afresh(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    settings = dep.settings.model_copy(update={"tenants_topic": f"{dep.settings.app_id}.reg2"})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.tenants_topic, 2, 1)])
        for t in ("old-a", "old-b"):
            await put_tenant(settings, Tenant(tenant_id=t))
        mirror = RegistryMirror(settings, poll_ms=100, topic_check_seconds=0.2)
        async with _running(mirror):
            await asyncio.wait_for(mirror.ready.wait(), 30)
            assert set(mirror.tenants) == {"old-a", "old-b"}
            await admin.delete_topics([settings.tenants_topic])

            async def deleted() -> None:
                while settings.tenants_topic in await admin.list_topics():
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(deleted(), 30)
            await admin.create_topics([NewTopic(settings.tenants_topic, 2, 1)])
            await put_tenant(settings, Tenant(tenant_id="new-c"))
            await _until(lambda: set(mirror.tenants) == {"new-c"})
    finally:
        await admin.close()
