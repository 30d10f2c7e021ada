"""The registry mirror: every tenant record, on every worker, kept current."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import OffsetOutOfRangeError
from click.testing import CliRunner

from paystream.cli import cli
from paystream.settings import load_settings
from paystream.streams.admin import bootstrap_servers, ensure_topics
from paystream.tenancy import mirror as mirror_module
from paystream.tenancy import registry as registry_module
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.mirror import RegistryMirror, RegistryState
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import (
    RegistryChanged,
    UnreadableTenant,
    put_tenant,
    put_tenant_unless_changed,
    put_tenants_unless_changed,
    read_registry,
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
async def test_an_absent_registry_topic_keeps_the_worker_unready_until_it_exists(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing topic is a misnamed or deleted one (`paystream topics` creates it before
    workers start): ready with no tenants would reject every command for good."""
    monkeypatch.setattr(mirror_module, "MISSING_TOPIC_RETRY_SECONDS", 0.2)
    dep = await deployment_factory()
    absent = dep.settings.model_copy(update={"tenants_topic": f"{dep.settings.app_id}.later"})
    mirror = RegistryMirror(absent, poll_ms=100)
    async with _running(mirror):
        await asyncio.sleep(1.5)
        assert not mirror.ready.is_set()
        await ensure_topics(absent)
        await put_tenant(absent, Tenant(tenant_id="late"))
        await asyncio.wait_for(mirror.ready.wait(), 30)
        await _until(lambda: "late" in mirror.tenants)


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
    """A change would write back the last record this version can read, undoing a newer
    change it cannot: refused (a suspension is not: see the next test)."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="newer"))
    newer = {**tenant_record(Tenant(tenant_id="newer")), "status": "suspended", "x": 1}
    await dep.produce(dep.settings.tenants_topic, (b'"newer"', json.dumps(newer).encode(), None))
    with pytest.raises(UnreadableTenant, match="cannot be read"):
        await registered_tenant(dep.settings, "newer")
    for args in (["tenants", "activate", "newer"], ["tenants", "add", "newer", "--name", "N"]):
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=dep.env)
        assert result.exit_code == 1 and "cannot be read" in result.output, result.output
    assert await registered_tenant(dep.settings, "other") is None


@pytest.mark.asyncio(loop_scope="session")
async def test_a_tenant_whose_latest_record_is_unreadable_can_still_be_suspended(
    deployment_factory: Any,
) -> None:
    """Review finding: an unreadable latest record (a newer version's, a corrupt or
    hand-written one) made `tenants suspend` exit 1 while workers served the older,
    active record: the kill switch was gone until an upgrade, or for good."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="newer"), Tenant(tenant_id="broken"))
    newer = {**tenant_record(Tenant(tenant_id="newer")), "x": 1}  # a newer version's, active
    await dep.produce(dep.settings.tenants_topic, (b'"newer"', json.dumps(newer).encode(), None))
    await dep.produce(dep.settings.tenants_topic, (b'"broken"', b"{not json", None))
    for tenant_id, how in (("newer", "other fields kept"), ("broken", "last readable record")):
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["tenants", "suspend", tenant_id], env=dep.env
        )
        assert result.exit_code == 0 and how in result.output, result.output
    registry = await read_registry(dep.settings)
    # The newer record, patched: still unreadable here (its "x"), honoured as suspended,
    # its fields kept for the version that wrote it.
    assert "newer" in registry.unreadable
    assert registry.tenants["newer"].status is TenantStatus.SUSPENDED
    assert json.loads(registry.unreadable_raw["newer"]) == {**newer, "status": "suspended"}
    # The corrupt one replaced by the last readable record, suspended.
    assert "broken" not in registry.unreadable
    assert registry.tenants["broken"].status is TenantStatus.SUSPENDED


def test_a_record_under_another_tenants_key_saying_suspended_is_honoured() -> None:
    """Review finding: a record whose tenant id is not its key's was ignored, even when it
    said suspended (an unparseable one saying so was honoured)."""
    state = RegistryState()
    state.apply(b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="acme"))).encode())
    other = {**tenant_record(Tenant(tenant_id="other")), "status": "suspended"}
    state.apply(b'"acme"', json.dumps(other).encode())
    assert "acme" in state.unreadable
    assert state.tenants["acme"].status is TenantStatus.SUSPENDED


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


def test_a_suspension_in_a_record_this_version_cannot_read_is_still_honoured() -> None:
    mirror = _mirror()
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme", name="Acme")))
    newer = {**tenant_record(Tenant(tenant_id="acme")), "status": "suspended", "x": 1}
    mirror.apply(b'"acme"', json.dumps(newer).encode())
    assert mirror.unreadable == {"acme"}
    kept = mirror.tenants["acme"]
    assert kept.status is TenantStatus.SUSPENDED and kept.name == "Acme"
    # an unreadable record that says active does not lift a suspension it cannot read
    mirror.apply(b'"acme"', json.dumps({**newer, "status": "active"}).encode())
    assert mirror.tenants["acme"].status is TenantStatus.SUSPENDED


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_a_re_read_finding_only_an_unreadable_record_keeps_serving_the_tenant(
    status: str,
) -> None:
    """Compaction left only a record a newer paystream wrote: the tenant stays served
    from the record this worker read before (suspended if the new one says so), rather
    than vanishing and having every command rejected `unknown_tenant`."""
    mirror = _mirror()
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme", name="Acme")))
    newer = {**tenant_record(Tenant(tenant_id="acme")), "status": status, "x": 1}
    loaded = RegistryState()
    loaded.apply(b'"acme"', json.dumps(newer).encode())
    loaded.apply(b'"gone"', None)
    mirror._swap_in(loaded)
    assert mirror.tenants["acme"].name == "Acme"
    assert mirror.tenants["acme"].status is TenantStatus(status)
    assert mirror.unreadable == {"acme"}


def test_hostile_nesting_in_a_registry_record_is_skipped() -> None:
    mirror = _mirror()
    mirror.apply(b'"acme"', _value(Tenant(tenant_id="acme")))
    deep = b"[" * 100_000 + b"]" * 100_000
    assert mirror.apply(deep, b"{}") is None
    mirror.apply(b'"acme"', b'{"status": ' + deep + b"}")
    assert mirror.unreadable == {"acme"} and mirror.invalid == 2


_TP = TopicPartition("paystream.tenants", 0)


class _FetchInTwo:
    """A stand-in consumer whose partition comes in two fetches, as real Kafka splits a
    partition larger than a fetch (the embedded broker sends it whole)."""

    def __init__(self, fetches: list[list[tuple[Tenant, int]]], **_: Any) -> None:
        self.fetches = list(fetches)
        self.pos = 0
        self.out_of_range = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[TopicPartition]) -> None: ...

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.pos = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {_TP: sum(len(f) for f in _FETCHES)}

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.01)
        if not self.fetches:
            return {}
        fetch = self.fetches.pop(0)
        self.pos = fetch[-1][1] + 1
        return {_TP: [_Record(t, offset) for t, offset in fetch]}


class _Record:
    def __init__(self, tenant: Tenant, offset: int) -> None:
        self.offset = offset
        self.timestamp = 1_000 + offset
        self.key = json.dumps(tenant.tenant_id).encode()
        self.value = _value(tenant)


_ACTIVE = Tenant(tenant_id="x")
_SUSPENDED = Tenant(tenant_id="x", status=TenantStatus.SUSPENDED)
_FETCHES = [[(_ACTIVE, 0), (Tenant(tenant_id="f"), 1)], [(_SUSPENDED, 2)]]


@pytest.mark.asyncio(loop_scope="session")
async def test_reading_afresh_never_serves_an_older_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def partitions(consumer: Any, topic: str) -> list[TopicPartition]:
        return [_TP]

    monkeypatch.setattr(mirror_module, "AIOKafkaConsumer", lambda **kw: _FetchInTwo(_FETCHES))
    monkeypatch.setattr(mirror_module, "topic_partitions", partitions)
    mirror = _mirror()
    # Loaded before a broker error: the mirror now reads the topic from the beginning.
    mirror.tenants["x"] = _SUSPENDED
    mirror.ready.set()
    served = mirror.tenants
    seen: list[TenantStatus] = []
    async with _running(mirror):
        while "f" not in mirror.tenants:
            seen.append(mirror.tenants["x"].status)
            await asyncio.sleep(0.001)
    assert TenantStatus.ACTIVE not in seen and mirror.tenants["x"] == _SUSPENDED
    assert mirror.tenants is served  # the processor's dict, updated in place


@pytest.mark.asyncio(loop_scope="session")
async def test_a_position_gone_out_of_range_reads_the_topic_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real Kafka answers OFFSET_OUT_OF_RANGE for a position past a recreated topic's end;
    the mirror must not quietly start over on top of the old tenants."""
    consumers: list[_FetchInTwo] = []

    def consumer(**kw: Any) -> _FetchInTwo:
        assert kw["auto_offset_reset"] == "none"
        made = _FetchInTwo([[(Tenant(tenant_id="old"), 0)]] if not consumers else [])
        consumers.append(made)
        return made

    async def partitions(consumer: Any, topic: str) -> list[TopicPartition]:
        return [_TP]

    real_getmany = _FetchInTwo.getmany

    async def getmany(self: _FetchInTwo, timeout_ms: int = 0) -> Any:
        if self is consumers[0] and not self.fetches and mirror.ready.is_set():
            raise OffsetOutOfRangeError({_TP: self.pos})
        return await real_getmany(self, timeout_ms)

    async def ends(self: _FetchInTwo, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {_TP: 1 if self is consumers[0] else 0}

    monkeypatch.setattr(_FetchInTwo, "getmany", getmany)
    monkeypatch.setattr(_FetchInTwo, "end_offsets", ends)
    monkeypatch.setattr(mirror_module, "AIOKafkaConsumer", consumer)
    monkeypatch.setattr(mirror_module, "topic_partitions", partitions)
    mirror = _mirror()
    async with _running(mirror):
        await _until(lambda: len(consumers) >= 2 and "old" not in mirror.tenants, timeout=10)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_change_made_meanwhile_is_never_overwritten(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="race"))
    base = await registered_tenant(dep.settings, "race")
    suspended = Tenant(tenant_id="race", status=TenantStatus.SUSPENDED)
    await put_tenant(dep.settings, suspended)  # another operator, meanwhile
    with pytest.raises(RegistryChanged, match="changed while this command ran"):
        await put_tenant_unless_changed(dep.settings, base, Tenant(tenant_id="race", name="R"))
    assert await registered_tenant(dep.settings, "race") == suspended

    # The CLI: the other operator suspends while this one types a secret at the prompt.
    def prompt_while_suspended(*args: Any, **kwargs: Any) -> str:
        suspended = Tenant(tenant_id="race2", gateway="stripe", status="suspended")
        asyncio.run(put_tenant(dep.settings, suspended))
        return "sk_test_typed"

    await dep.add_tenants(Tenant(tenant_id="race2", gateway="stripe"))  # (reads api_key)
    monkeypatch.setattr("click.prompt", prompt_while_suspended)
    env = {**dep.env, "PAYSTREAM_MASTER_KEY": base64.b64encode(bytes(32)).decode()}
    args = ["tenants", "add", "race2", "--secret", "api_key"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert result.exit_code == 1 and "changed while this command ran" in result.output, (
        result.output
    )
    after = await registered_tenant(dep.settings, "race2")
    assert after is not None and after.status is TenantStatus.SUSPENDED and not after.secrets


@pytest.mark.asyncio(loop_scope="session")
async def test_a_change_landing_between_the_check_and_the_write_is_put_back_on_top(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka has no compare-and-set: a suspension written after the check (a long key
    rotation's writes) would be replaced by ours. It is found after the writes and
    written again on top, and the tenant is reported as changed."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="late-a"), Tenant(tenant_id="late-b"))
    bases = [await registered_tenant(dep.settings, t) for t in ("late-a", "late-b")]
    suspended = Tenant(tenant_id="late-b", status=TenantStatus.SUSPENDED)
    checked = registry_module._read_registry_with_ends

    async def check_then_suspend(settings: Any) -> Any:
        found = await checked(settings)
        await put_tenant(dep.settings, suspended)  # another operator, after the check
        return found

    monkeypatch.setattr(registry_module, "_read_registry_with_ends", check_then_suspend)
    changes = [(b, b.model_copy(update={"name": "renamed"})) for b in bases if b is not None]
    changed = await put_tenants_unless_changed(dep.settings, changes)
    assert changed == ["late-b"]
    monkeypatch.undo()
    assert await registered_tenant(dep.settings, "late-b") == suspended
    after_a = await registered_tenant(dep.settings, "late-a")
    assert after_a is not None and after_a.name == "renamed"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_topic_recreated_during_the_first_load_does_not_leave_it_waiting_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumers: list[_FetchInTwo] = []

    def consumer(**kw: Any) -> _FetchInTwo:
        first = not consumers
        made = _FetchInTwo([[(Tenant(tenant_id="a" if first else "b"), 0)]])
        made.asked = 0  # type: ignore[attr-defined]
        consumers.append(made)
        return made

    async def partitions(consumer: Any, topic: str) -> list[TopicPartition]:
        return [_TP]

    async def ends(self: _FetchInTwo, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked += 1  # type: ignore[attr-defined]
        # The first topic ended at 3 when the load began; it was recreated holding one.
        first_ask = self is consumers[0] and self.asked == 1  # type: ignore[attr-defined]
        return {_TP: 3 if first_ask else 1}

    monkeypatch.setattr(_FetchInTwo, "end_offsets", ends)
    monkeypatch.setattr(mirror_module, "AIOKafkaConsumer", consumer)
    monkeypatch.setattr(mirror_module, "topic_partitions", partitions)
    mirror = RegistryMirror(
        load_settings(kafka_broker_url="kafka://127.0.0.1:9"), topic_check_seconds=0.05
    )
    async with _running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        assert set(mirror.tenants) == {"b"}


async def test_a_write_over_a_record_this_version_cannot_read_is_refused(
    deployment_factory: Any,
) -> None:
    """Even from the last record it can read, which the base matches: whatever the newer
    record says beyond what this version reads would be undone (mutation testing: only
    the CLI's earlier read stood in the way)."""
    dep = await deployment_factory()
    base = Tenant(tenant_id="newest")
    await dep.add_tenants(base)
    newer = {**tenant_record(base), "x": 1}  # active, as the base: only x is new
    await dep.produce(dep.settings.tenants_topic, (b'"newest"', json.dumps(newer).encode(), None))
    with pytest.raises(RegistryChanged):
        await put_tenant_unless_changed(dep.settings, base, base.model_copy(update={"name": "N"}))
    with pytest.raises(UnreadableTenant):
        await registered_tenant(dep.settings, "newest")  # the newer record still stands


def test_a_record_under_a_key_paystream_does_not_write_counts_only_to_suspend() -> None:
    """Review finding: the mirror read ' "acme"' or '"\\u0061cme"' as acme's key, which
    Kafka compacts and partitions apart from acme's own: an active record so written
    could win on a re-read, a removal never compacted the real one."""
    state = RegistryState()
    state.apply(b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="acme"))).encode())
    suspended = json.dumps({**tenant_record(Tenant(tenant_id="acme")), "status": "suspended"})
    state.apply(b' "acme"', json.dumps(tenant_record(Tenant(tenant_id="acme", name="X"))).encode())
    state.apply(b'"\\u0061cme"', None)  # no removal either
    assert state.tenants["acme"] == Tenant(tenant_id="acme")
    state.apply(b' "acme"', suspended.encode())
    assert state.tenants["acme"].status is TenantStatus.SUSPENDED


@pytest.mark.asyncio(loop_scope="session")
async def test_caught_up_returns_once_what_the_topic_held_when_asked_is_applied(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insights ask it of a tenant they do not know (InsightsRunner.await_tenants):
    written before the question, it is known after the answer, even where the reader
    applies what it fetched late (a busy worker)."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="cu-0"))
    mirror = RegistryMirror(dep.settings, poll_ms=500)
    fetched = mirror_module.AIOKafkaConsumer.getmany

    async def late(self: Any, *args: Any, **kwargs: Any) -> Any:
        got = await fetched(self, *args, **kwargs)
        if got and mirror.ready.is_set():
            await asyncio.sleep(1.5)  # fetched (positions moved), not applied yet
        return got

    monkeypatch.setattr(mirror_module.AIOKafkaConsumer, "getmany", late)
    async with _running(mirror):
        await asyncio.wait_for(mirror.caught_up(), 30)  # (waits for the first load too)
        assert mirror.ready.is_set() and "cu-0" in mirror.tenants
        await asyncio.wait_for(mirror.caught_up(), 30)  # nothing new
        for n in range(1, 4):
            await put_tenant(dep.settings, Tenant(tenant_id=f"cu-{n}"))
            await asyncio.wait_for(mirror.caught_up(), 30)
            assert f"cu-{n}" in mirror.tenants


@pytest.mark.asyncio(loop_scope="session")
async def test_caught_up_asked_while_the_reader_restarts_asks_the_new_reader(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its question in flight on the reader's consumer when the reader stops it (a
    recreated or truncated topic, a broker error) waited out the consumer's request
    timeout, 40 s, and the outcome agent, ledger and all, with it (review h62e)."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="rr-0"))
    mirror = RegistryMirror(dep.settings)
    restart, entered, asked = asyncio.Event(), asyncio.Event(), asyncio.Event()
    getmany = mirror_module.AIOKafkaConsumer.getmany
    end_offsets = mirror_module.AIOKafkaConsumer.end_offsets

    async def restarting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if restart.is_set():
            restart.clear()
            entered.set()
            await asyncio.wait_for(asked.wait(), 10)
            await asyncio.sleep(0.05)  # the question on the wire, behind the fetch
            raise OffsetOutOfRangeError({})  # read afresh: the reader restarts
        return await getmany(self, *args, **kwargs)

    async def asking(self: Any, *args: Any, **kwargs: Any) -> Any:
        if entered.is_set():
            asked.set()
        return await end_offsets(self, *args, **kwargs)

    monkeypatch.setattr(mirror_module.AIOKafkaConsumer, "getmany", restarting)
    monkeypatch.setattr(mirror_module.AIOKafkaConsumer, "end_offsets", asking)
    async with _running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 30)
        restart.set()
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.wait_for(mirror.caught_up(), 15)  # (not the 40 s request timeout)
        assert "rr-0" in mirror.tenants


async def test_caught_up_with_the_topic_gone_after_a_load_answers_at_once() -> None:
    """No tenant can be added meanwhile; the insights count on the tenants as last read
    (commands run on them too), rather than wait for a topic that may never come."""
    mirror = _mirror()
    mirror.ready.set()
    mirror._topic_missing = True
    await asyncio.wait_for(mirror.caught_up(), 1)
