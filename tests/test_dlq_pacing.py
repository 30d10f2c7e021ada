"""`paystream dlq replay` paces its re-sends per tenant at the tenant's rate limit.

The worker lets a re-driven command that it admitted before through the tenant's rate
limit unchecked (refusing it would give a final answer for a command the provider may
have acted on): a backlog of payments parked during an outage, re-sent at full speed,
reached the provider at full speed, which answered 429, and they were parked again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from paystream.dlq import HELD_BACK, PaceWait, ParkedRecord, _Pace, read_parked, replay
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import RawSend
from tests.test_cli import run_cli
from tests.test_dlq import cli_at_once

session_loop = pytest.mark.asyncio(loop_scope="session")

RATE, BURST, BACKLOG = 20, 5, 45
# Re-sends past the burst, at RATE a second: the least time the slow tenant's take.
LEAST_SECONDS = (BACKLOG - BURST) / RATE


async def _limited(dep: Any) -> None:
    await dep.add_tenants(
        Tenant(tenant_id="slow", limits=TenantLimits(commands_per_second=RATE, burst=BURST)),
        Tenant(tenant_id="fast"),  # no rate limit
    )


async def _resent(settings: Any) -> list[ParkedRecord]:
    """The commands topic, as the replay left it (timestamps: when each was re-sent)."""
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    return sent


async def _waiting(settings: Any) -> list[ParkedRecord]:
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    return left


def _assert_within_bucket(times_ms: list[int], rate: int, burst: int) -> None:
    """No stretch of re-sends goes faster than the bucket allows (a lower bound on time
    only, with a command's worth of slack for millisecond timestamps)."""
    for i in range(len(times_ms)):
        for j in range(i + burst + 1, len(times_ms)):
            allowed = burst + 1 + rate * (times_ms[j] - times_ms[i]) / 1000
            assert j - i + 1 <= allowed, (
                f"re-sends {i}..{j} took {times_ms[j] - times_ms[i]} ms: over {rate}/s "
                f"(burst {burst})"
            )


@session_loop
async def test_a_tenants_resends_are_spread_at_its_rate_limit_and_others_go_on(
    deployment_factory: Any,
) -> None:
    """45 parked commands of a tenant limited to 20/s (burst 5) take at least 2 s to re-send;
    an unlimited tenant's on another partition are never held up meanwhile, and its
    records behind the slow tenant's on the same partition keep their place."""
    dep = await deployment_factory()
    settings = dep.settings
    await _limited(dep)
    lane0: list[RawSend] = []  # the slow tenant's, with the fast one's now and then
    for i in range(BACKLOG):
        lane0.append(RawSend(key=b"slow", value=b"slow %d" % i, partition=0))
        if i % 10 == 9:
            lane0.append(RawSend(key=b"fast", value=b"behind %d" % i, partition=0))
    lane1 = [RawSend(key=b"fast", value=b"fast %d" % i, partition=1) for i in range(BACKLOG)]
    await dep.produce(settings.retry_topic, *lane0, *lane1)

    waits: list[PaceWait] = []
    seen: list[tuple[ParkedRecord, str]] = []
    started = time.monotonic()
    result = await replay(
        settings,
        [settings.retry_topic],
        paced=waits.append,
        observe=lambda r, what: seen.append((r, what)),
    )
    took = time.monotonic() - started

    assert sum(result.replayed.values()) == len(lane0) + len(lane1)
    assert took >= LEAST_SECONDS * 0.9, f"the whole replay took {took:.2f} s"
    resent = await _resent(settings)
    assert sorted(r.value or b"" for r in resent) == sorted(
        r.value or b"" for r in [*lane0, *lane1]
    )
    # The slow tenant's re-sends, spread as its bucket allows.
    slow = [r.timestamp_ms for r in resent if r.key == b"slow"]
    slow.sort()
    assert len(slow) == BACKLOG
    assert slow[-1] - slow[0] >= LEAST_SECONDS * 1000 * 0.9, f"{slow[-1] - slow[0]} ms"
    _assert_within_bucket(slow, RATE, BURST)
    # Only the slow tenant was waited for; the unlimited tenant never.
    assert waits and {t for w in waits for t in w.tenants} == {("slow", RATE)}
    assert result.waited_for == {"slow": RATE} and result.paced_seconds > 0
    # The unlimited tenant's own partition went on while the slow one waited: all of it
    # was re-sent before the slow tenant's last.
    order = [r.value for r, _ in seen]
    assert max(order.index(r.value) for r in lane1) < order.index(b"slow %d" % (BACKLOG - 1))
    # Order within each partition unchanged: as handled, and on the commands topic (per
    # commands partition, the records of each parked partition in their parked order).
    for lane, partition in ((lane0, 0), (lane1, 1)):
        handled = [r for r, what in seen if r.partition == partition]
        assert [r.value for r in handled] == [r.value for r in lane]
        assert all(what != HELD_BACK for r, what in seen)
        rank = {r.value: i for i, r in enumerate(lane)}
        for commands_partition in {r.partition for r in resent}:
            ranks = [
                rank[r.value]
                for r in resent
                if r.partition == commands_partition and r.value in rank
            ]
            assert ranks == sorted(ranks), f"partition {partition} reordered"
    # The records of the fast tenant behind the slow one's waited for them (order wins).
    stamp = {r.value: r.timestamp_ms for r in resent}
    assert stamp[b"behind 39"] >= stamp[b"slow 39"]
    assert await _waiting(settings) == []


@session_loop
async def test_rate_per_tenant_0_is_unpaced_and_n_paces_every_tenant(
    deployment_factory: Any,
) -> None:
    """`--rate-per-tenant 0`: nothing waits, whatever the registry says; `N`: every
    tenant at N a second (burst N), one without a rate limit of its own too."""
    dep = await deployment_factory()
    settings = dep.settings
    await _limited(dep)
    await dep.produce(settings.retry_topic, *((b"slow", b"slow %d" % i, 0) for i in range(BACKLOG)))
    unpaced = await asyncio.to_thread(
        run_cli,
        dep,
        "dlq",
        "replay",
        "--topic",
        "retry",
        "--rate-per-tenant",
        "0",
        "--without-master-key",
    )
    assert f"replayed {BACKLOG} record(s)" in unpaced.stdout
    assert "waiting for the pace" not in unpaced.stderr and "waited" not in unpaced.stdout
    assert f"records read: {BACKLOG}/{BACKLOG}" in unpaced.stderr
    assert len(await _resent(settings)) == BACKLOG

    await dep.produce(settings.retry_topic, *((b"fast", b"fast %d" % i, 1) for i in range(15)))
    paced = await asyncio.to_thread(
        run_cli,
        dep,
        "dlq",
        "replay",
        "--topic",
        "retry",
        "--rate-per-tenant",
        "10",
        "--without-master-key",
    )
    assert "replayed 15 record(s)" in paced.stdout
    assert "for the pace of fast (10/s)" in paced.stdout, paced.stdout
    fast = sorted(r.timestamp_ms for r in await _resent(settings) if r.key == b"fast")
    assert len(fast) == 15 and fast[-1] - fast[0] >= 450  # 5 past the burst of 10, at 10/s
    _assert_within_bucket(fast, 10, 10)


@session_loop
async def test_an_interrupted_paced_replay_commits_what_it_re_sent(
    deployment_factory: Any,
) -> None:
    """Ctrl-C while the replay waits for a tenant's pace: what was re-sent is committed,
    and the progress line said whose pace it was waiting for."""
    dep = await deployment_factory()
    settings = dep.settings
    await _limited(dep)
    # Four times the backlog: ~9 s of pace left when the progress line shows, for the
    # Ctrl-C to land in (with 45 it was 2 s, which a loaded host can take to deliver it).
    backlog = BACKLOG * 4
    await dep.produce(settings.retry_topic, *((b"slow", b"slow %d" % i, 0) for i in range(backlog)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paystream",
            "dlq",
            "replay",
            "--topic",
            "retry",
            "--without-master-key",
        ],
        env={**os.environ, **dep.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    err = bytearray()  # stderr so far (the progress line ends in no newline)

    def read_stderr(stream: Any) -> None:
        while chunk := stream.read1(4096):
            err.extend(chunk)

    reading = threading.Thread(target=read_stderr, args=(proc.stderr,))
    reading.start()
    try:
        deadline = time.monotonic() + 30
        while b"waiting for the pace of slow (20/s)" not in err:
            assert proc.poll() is None and time.monotonic() < deadline, err.decode()
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reading.join(timeout=30)
    out = proc.stdout.read()  # (little: the pipe does not fill up)
    text = err.decode()
    assert proc.returncode == 130, text + out.decode()
    assert "records read: " in text and "what was done is committed" in text
    replayed = int(text.split("interrupted: replayed ")[1].split(" ")[0])
    assert 0 < replayed < backlog
    assert [r.value for r in await _resent(settings)] == [b"slow %d" % i for i in range(replayed)]
    left = await _waiting(settings)
    assert [r.value for r in left] == [b"slow %d" % i for i in range(replayed, backlog)]


def test_the_bucket_lets_a_burst_go_then_one_per_interval() -> None:
    pace = _Pace(rate=RATE, burst=BURST)
    for _ in range(BURST):
        assert pace.wait_ms(1000) == 0
        pace.take(1000)
        pace.acknowledged(1000)
    assert pace.wait_ms(1000) == 1000 // RATE
    assert pace.wait_ms(1030) == 20
    assert pace.wait_ms(1050) == 0
    pace.take(1050)
    # The time until the broker acknowledged a re-send refills nothing.
    pace.acknowledged(1090)
    assert pace.wait_ms(1100) == 40
    # Idle, it fills up to its burst, no more.
    assert pace.wait_ms(60_000) == 0 and pace.tokens == BURST * 1000


@session_loop
async def test_list_all_marks_what_replays_did(deployment_factory: Any) -> None:
    """`dlq list --all` shows records replayed or passed over before: marked [done], or
    an operator chases (or re-sends) them again (review finding)."""
    dep = await deployment_factory()
    s = dep.settings
    parked = [
        RawSend(key=b"acme", value=b"{}", partition=0,
                headers=(("ce_id", c), ("ce_type", b"t"), ("paystream-park-reason", b"timeout")))
        for c in (b"c1", b"c2")
    ]  # fmt: skip
    await dep.produce(s.retry_topic, *parked)
    await asyncio.to_thread(
        run_cli, dep, "dlq", "replay", "--topic", "retry", "--limit", "1", "--without-master-key"
    )
    listed, both = await cli_at_once(
        dep, ("dlq", "list", "--topic", "retry", "--all"), ("dlq", "list", "--all")
    )  # (the second: --topic all)
    [c1] = [line for line in listed.stdout.splitlines() if "id=c1" in line]
    [c2] = [line for line in listed.stdout.splitlines() if "id=c2" in line]
    assert c1.startswith("[done] ") and not c2.startswith("[done]"), listed.stdout
    assert f"2 record(s) in {s.retry_topic}" in listed.stderr
    assert f"record(s) in {s.dlq_topic} and {s.retry_topic}" in both.stderr


@session_loop
async def test_list_by_tenant_and_reason(deployment_factory: Any) -> None:
    """`dlq list --tenant T --reason R`: whose commands wait, and why, counted over all of
    them (an incident at 3 a.m. asks "which tenants, for what?")."""
    dep = await deployment_factory()
    s = dep.settings

    def park(tenant: bytes, command_id: bytes, reason: bytes) -> RawSend:
        headers = (("ce_id", command_id), ("ce_type", b"t"), ("paystream-park-reason", reason))
        return RawSend(key=tenant, value=b"{}", partition=0, headers=headers)

    await dep.produce(
        s.retry_topic,
        park(b"acme", b"a1", b"provider_unavailable"),
        park(b"globex", b"g1", b"provider_unavailable"),
        park(b"acme", b"a2", b"timeout"),
        park(b"acme", b"a3", b"provider_unavailable"),
    )

    def ids(out: str) -> list[str]:
        return [word[3:] for line in out.splitlines() for word in line.split() if word[:3] == "id="]

    acme, down, both = await cli_at_once(
        dep,
        ("dlq", "list", "--tenant", "acme"),
        ("dlq", "list", "--reason", "provider_unavailable", "--limit", "1"),
        ("dlq", "list", "--tenant", "acme", "--tenant", "globex",
         "--reason", "provider_unavailable"),
    )  # fmt: skip
    assert ids(acme.stdout) == ["a1", "a2", "a3"], acme.stdout
    assert "3 record(s) waiting of tenant acme" in acme.stderr
    assert ids(down.stdout) == ["a1"], down.stdout
    assert "showing 1 of 3 record(s) waiting for provider_unavailable" in down.stderr
    assert ids(both.stdout) == ["a1", "g1", "a3"], both.stdout
    assert "of tenant acme or globex and for provider_unavailable" in both.stderr
