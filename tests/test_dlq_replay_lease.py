"""One `dlq replay` at a time: the replay lease (paystream/replay_lease.py), on the
Redis and the broker the suite runs against."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from paystream import dlq
from paystream.dlq import read_parked, replay
from paystream.errors import PaystreamError
from paystream.replay_lease import LeaseLost, ReplayLease, lease_key
from tests.test_cli import run_cli

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


async def _park(dep: Any, n: int) -> None:
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", f"cmd {i}".encode(), 0) for i in range(n)))


async def _resent(settings: Any) -> list[bytes]:
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    return sorted(r.value or b"" for r in sent)


async def test_a_second_replay_while_one_runs_is_refused_having_sent_nothing(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator runs `dlq replay --limit 1` while a full `dlq replay` runs (or two
    operators, or a cron job and an operator): the second stops at once, and every
    parked record is re-sent once, by the first."""
    dep = await deployment_factory()
    settings = dep.settings
    await _park(dep, 3)
    real = dlq._resend
    refused: list[BaseException] = []
    tried = False

    async def with_a_second_replay(*args: Any, **kwargs: Any) -> None:
        nonlocal tried
        if not tried:  # the full replay holds the lease and has read record 0
            tried = True  # (without a lease, the second's own re-send comes here too)
            try:
                await replay(settings, [settings.retry_topic], limit=1)
            except dlq.ConcurrentReplayError as exc:
                refused.append(exc)
            else:
                refused.append(AssertionError("the second replay ran"))
        await real(*args, **kwargs)

    monkeypatch.setattr(dlq, "_resend", with_a_second_replay)
    full = await replay(settings, [settings.retry_topic])
    assert isinstance(refused[0], dlq.ConcurrentReplayError), refused
    assert "another `paystream dlq replay` is running" in str(refused[0])
    assert sum(full.replayed.values()) == 3
    assert await _resent(settings) == [b"cmd 0", b"cmd 1", b"cmd 2"]
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    assert left == []


async def test_the_lease_is_free_again_once_a_replay_ends(deployment_factory: Any) -> None:
    """A replay deletes its lease as it ends, whether it finished or was refused, so
    the next one gets it at once; a dry run takes none, and runs beside a holder."""
    dep = await deployment_factory()
    settings = dep.settings
    await _park(dep, 2)
    first = await replay(settings, [settings.retry_topic], limit=1)
    second = await replay(settings, [settings.retry_topic])
    assert sum(first.replayed.values()) == 1
    assert sum(second.replayed.values()) == 1
    # A dry run takes no lease: it runs beside a replay that holds it.
    holder = ReplayLease(settings)
    await holder.acquire()
    try:
        dry = await replay(settings, [settings.retry_topic], dry_run=True)
        assert dry.complete
        with pytest.raises(dlq.ConcurrentReplayError):
            await replay(settings, [settings.retry_topic])
    finally:
        await holder.release()
    await replay(settings, [settings.retry_topic])


async def _expire_now(settings: Any) -> None:
    """The lease's time to live runs out now (as it would for a holder stopped or
    suspended past it)."""
    client = aioredis.from_url(settings.redis_url)
    try:
        key = lease_key(settings.commands_topic)
        await client.pexpire(key, 1)
        deadline = asyncio.get_running_loop().time() + 5
        while await client.exists(key) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert not await client.exists(key)
    finally:
        await client.aclose()


async def test_a_holder_that_could_not_renew_counts_the_lease_lost(
    deployment_factory: Any,
) -> None:
    """A holder that stops renewing (a replay stopped or suspended past the time to
    live) loses the lease to the next replay. When it comes back it knows the lease may
    be another's: it stops, and its clean-up leaves the new holder's lease alone."""
    dep = await deployment_factory()
    settings = dep.settings
    first = ReplayLease(settings)
    await first.acquire()
    second = ReplayLease(settings)
    try:
        assert first.held
        with pytest.raises(LeaseLost, match=r"another replay holds the lease \(.*expires within"):
            await ReplayLease(settings).acquire()
        assert first._renewer is not None
        first._renewer.cancel()  # stopped: no renewals
        first._renewed_at -= first.ttl_seconds  # (as long ago as that)
        await _expire_now(settings)
        await second.acquire()
        assert not first.held
        with pytest.raises(LeaseLost):
            await first.ensure_held()
        await first.release()
        assert second.held
        await second.confirm()
        client = aioredis.from_url(settings.redis_url)
        try:
            assert await client.get(lease_key(settings.commands_topic)) == second.token.encode()
        finally:
            await client.aclose()
    finally:
        await first.release()
        await second.release()


async def test_a_holder_asks_redis_once_its_last_renewal_is_a_period_old(
    deployment_factory: Any,
) -> None:
    """Trusted without asking for one renewal period less than the time to live: a
    step begun then still ends before the lease could expire. Past that, the holder
    renews before going on (and still holds it, if nobody took it)."""
    dep = await deployment_factory()
    lease = ReplayLease(dep.settings, ttl_seconds=30.0)
    await lease.acquire()
    try:
        assert lease._renewer is not None
        lease._renewer.cancel()
        lease._renewed_at -= 20.5  # past 30 s - 10 s
        assert not lease.held
        await lease.ensure_held()  # renews: Redis still has it as ours
        assert lease.held
    finally:
        await lease.release()


async def test_a_replay_that_loses_its_lease_stops_without_committing(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-run, the lease turns out to be another's (taken after it expired): the
    replay stops at its next commit or re-send (exit status 4), committing nothing
    more, so the offsets the other replay commits are not moved back."""
    dep = await deployment_factory()
    settings = dep.settings
    await _park(dep, 3)
    leases: list[ReplayLease] = []

    class Recorded(ReplayLease):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            leases.append(self)

    real = dlq._resend
    calls = 0

    async def taken_over_after_the_first(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # record 0 is committed; record 1 is being re-sent as the
            # lease expires and is taken (a re-send under way is not called back)
            client = aioredis.from_url(settings.redis_url)
            try:
                await client.set(lease_key(settings.commands_topic), "someone else")
            finally:
                await client.aclose()
            leases[0]._renewed_at -= 3600  # (as if paused since)
        await real(*args, **kwargs)

    monkeypatch.setattr(dlq, "ReplayLease", Recorded)
    monkeypatch.setattr(dlq, "_resend", taken_over_after_the_first)
    monkeypatch.setattr(dlq, "COMMIT_EVERY", 1)
    with pytest.raises(dlq.ConcurrentReplayError, match="lost its lease"):
        await replay(settings, [settings.retry_topic])
    assert await _resent(settings) == [b"cmd 0", b"cmd 1"]  # (record 2 was not)
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    assert [r.value for r in left] == [b"cmd 1", b"cmd 2"]
    client = aioredis.from_url(settings.redis_url)
    try:  # the other replay's lease is left as it is
        assert await client.get(lease_key(settings.commands_topic)) == b"someone else"
    finally:
        await client.aclose()


async def test_the_cli_refuses_a_second_replay_with_exit_status_4(
    deployment_factory: Any,
) -> None:
    """As an operator sees it: `paystream dlq replay` while another holds the lease
    exits 4 naming the holder, having re-sent nothing; once it ends, the next runs."""
    dep = await deployment_factory()
    settings = dep.settings
    await _park(dep, 1)
    holder = ReplayLease(settings)
    await holder.acquire()
    try:
        proc = run_cli(
            dep, "dlq", "replay", "--topic", "retry", "--without-master-key", check=False
        )
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "another `paystream dlq replay` is running" in proc.stdout + proc.stderr
        assert holder.token in proc.stdout + proc.stderr
        assert await _resent(settings) == []
    finally:
        await holder.release()
    run_cli(dep, "dlq", "replay", "--topic", "retry", "--without-master-key")
    assert await _resent(settings) == [b"cmd 0"]


async def test_without_redis_a_replay_refuses_to_start(
    deployment_factory: Any,
) -> None:
    """Redis unreachable: no lease can be taken, so the replay says so and re-sends
    nothing (rather than run unguarded)."""
    dep = await deployment_factory()
    await _park(dep, 1)
    nobody = dep.settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    with pytest.raises(PaystreamError, match="cannot take the replay lease"):
        await replay(nobody, [nobody.retry_topic])
    assert await _resent(dep.settings) == []


async def test_a_replay_checks_its_lease_before_each_re_send(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between commits too: once the lease may be another's, not one more record is
    re-sent (and nothing is committed)."""
    dep = await deployment_factory()
    settings = dep.settings
    await _park(dep, 3)
    real = dlq._resend
    calls = 0

    async def lapsing_after_the_first(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await real(*args, **kwargs)
        if calls == 1:  # then the replay stops (as if suspended) past its lease
            await _expire_now(settings)
            for lease in leases:
                lease._renewed_at -= lease.ttl_seconds

    leases: list[ReplayLease] = []

    class Recorded(ReplayLease):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            leases.append(self)

    monkeypatch.setattr(dlq, "ReplayLease", Recorded)
    monkeypatch.setattr(dlq, "_resend", lapsing_after_the_first)
    with pytest.raises(dlq.ConcurrentReplayError, match="lost its lease"):
        await replay(settings, [settings.retry_topic])  # (COMMIT_EVERY: 100)
    assert calls == 1
    assert await _resent(settings) == [b"cmd 0"]
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    assert [r.value for r in left] == [b"cmd 0", b"cmd 1", b"cmd 2"]


async def test_without_redis_url_a_replay_runs_unguarded_only_if_asked(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    await _park(dep, 1)
    no_redis = dep.settings.model_copy(update={"redis_url": None})
    with pytest.raises(PaystreamError, match="REDIS_URL is not set"):
        await replay(no_redis, [no_redis.retry_topic])
    assert await _resent(dep.settings) == []
    done = await replay(no_redis, [no_redis.retry_topic], take_lease=False)
    assert sum(done.replayed.values()) == 1
