"""`paystream dlq replay` and `dlq list` against what goes wrong in operation: two
replays at once, a long backlog, one tenant's stale record, hostile keys and ids."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from paystream import dlq
from paystream.client import build_command
from paystream.dlq import read_parked, replay, stale_after_ms
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.fixtures.pipeline import RawSend
from tests.test_cli import run_cli

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

STALE = ("paystream-first-attempt-ms", b"1")


async def _resent(settings: Any) -> list[bytes | None]:
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    return [r.value for r in sent]


class _NoLease:
    """As if the lease had not kept two replays apart (say, one run without REDIS_URL
    beside one holding it): what is left to stop them is the commit fence."""

    held = True

    def __init__(self, settings: Any) -> None:
        pass

    async def acquire(self) -> None:
        pass

    async def ensure_held(self) -> None:
        pass

    async def confirm(self) -> None:
        pass

    async def release(self) -> None:
        pass


async def test_a_second_replay_at_once_stops_without_moving_the_commit_back(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator runs `dlq replay --limit 1` while a full `dlq replay` runs, and the
    lease (test_dlq_replay_lease.py) did not keep them apart. The slower one commits
    last and would move the group's offset back: the next replay would re-send
    everything the full one already did."""
    monkeypatch.setattr(dlq, "ReplayLease", _NoLease)
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", f"cmd {i}".encode(), 0) for i in range(3)))
    real = dlq._resend
    calls = 0

    async def interleaved(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the limited replay has read record 0; the full one runs now
            monkeypatch.setattr(dlq, "_resend", real)
            full = await replay(settings, [settings.retry_topic])
            assert sum(full.replayed.values()) == 3
        await real(*args, **kwargs)

    monkeypatch.setattr(dlq, "_resend", interleaved)
    with pytest.raises(dlq.ConcurrentReplayError):
        await replay(settings, [settings.retry_topic], limit=1)
    # The limited run had re-sent record 0 (the worker answers the copy from its
    # idempotency record) but did not move the full run's commit back.
    assert sorted(await _resent(settings)) == [b"cmd 0", b"cmd 0", b"cmd 1", b"cmd 2"]
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    assert [r.value for r in left] == [], "records replayed already are waiting again"


async def test_a_replay_fenced_mid_run_does_not_report_a_failed_clean_up(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fenced by a periodic commit (another replay committed meanwhile), a replay stops
    without committing: it must not try again on its way out and log that as a failed
    clean-up, traceback and all, for what is the designed outcome."""
    monkeypatch.setattr(dlq, "ReplayLease", _NoLease)
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", f"cmd {i}".encode(), 0) for i in range(3)))
    real = dlq._resend
    calls = 0

    async def interleaved(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            monkeypatch.setattr(dlq, "_resend", real)
            await replay(settings, [settings.retry_topic])
        await real(*args, **kwargs)

    monkeypatch.setattr(dlq, "_resend", interleaved)
    monkeypatch.setattr(dlq, "COMMIT_EVERY", 1)  # commit after every record, inside the run
    with pytest.raises(dlq.ConcurrentReplayError):
        await replay(settings, [settings.retry_topic])
    assert "clean-up failed" not in caplog.text


async def test_staleness_is_judged_against_the_clock_when_the_record_is_resent(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`now_ms` is read once, when the replay starts. A backlog of millions re-sent one
    `send_and_wait` at a time takes hours: a record 22.5 h old at the start is re-sent at
    24.5 h (past Stripe's key window) without being held back."""
    import time as _time

    from paystream.dlq import stale_after_ms

    dep = await deployment_factory()
    settings = dep.settings
    start = int(_time.time() * 1000)
    nearly = start - stale_after_ms(settings) + 30 * 60_000  # 30 min short of the cut
    await dep.produce(
        settings.retry_topic,
        RawSend(key=b"acme", value=b"first", partition=0),
        RawSend(key=b"acme", value=b"older", partition=0,
                headers=(("paystream-first-attempt-ms", b"%d" % nearly),)),
    )  # fmt: skip
    real_time = _time.time
    shift = 0.0
    monkeypatch.setattr(_time, "time", lambda: real_time() + shift)

    def two_hours_pass(done: int, total: int) -> None:
        nonlocal shift
        if done == 1:  # the first record took (as a long backlog would) two hours
            shift = 2 * 3600.0

    seen: list[tuple[bytes | None, str]] = []
    await replay(settings, [settings.retry_topic], progress=two_hours_pass,
                 observe=lambda r, what: seen.append((r.value, what)))  # fmt: skip
    age_h = (real_time() + shift - nearly / 1000) / 3600
    assert seen[1] == (b"older", "held back"), f"re-sent at age {age_h:.1f} h: {seen}"


async def test_a_replay_that_held_records_back_exits_3(deployment_factory: Any) -> None:
    """Records that need reconciling with the provider are left parked, with everything
    after them on their partition; the exit status says all is well, so a scheduled
    `paystream dlq replay` (cron, a runbook script) never notices."""
    import time as _time

    from paystream.dlq import stale_after_ms

    dep = await deployment_factory()
    settings = dep.settings
    old = int(_time.time() * 1000) - stale_after_ms(settings) - 60_000
    await dep.produce(
        settings.retry_topic,
        RawSend(key=b"acme", value=b"{}", partition=0,
                headers=(("paystream-first-attempt-ms", b"%d" % old),)),
        RawSend(key=b"acme", value=b"{}", partition=0),
    )  # fmt: skip
    proc = await asyncio.to_thread(
        run_cli, dep, "dlq", "replay", "--without-master-key", check=False
    )
    assert "held back 2 record(s)" in proc.stderr, proc.stderr
    assert proc.returncode == 3, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    # Each named, for the operator to check with the provider (review h59b).
    retry = settings.retry_topic
    assert f"  held back {retry}[0]@0 age=23h tenant=acme" in proc.stderr, proc.stderr
    assert f"  held back {retry}[0]@1 " in proc.stderr, proc.stderr


async def test_a_stale_record_waits_in_place_and_the_checked_one_is_marked(
    deployment_factory: Any,
) -> None:
    """A stale record holds back its partition, in place (nothing is written to a topic
    kept for ever); --include-stale-as-of then re-sends it first, marked as reconciled, and
    what waited behind it after it, unmarked."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.retry_topic,
        RawSend(key=b"evil", value=b"evil's", partition=0, headers=(STALE,)),
        RawSend(key=b"acme", value=b"acme's", partition=0),
        RawSend(key=b"evil", value=b"evil's next", partition=0),
    )
    seen: list[tuple[bytes | None, str]] = []
    result = await replay(settings, [settings.retry_topic],
                          observe=lambda r, what: seen.append((r.key, what)))  # fmt: skip
    assert [what for _, what in seen] == ["held back"] * 3
    assert result.stale == 3
    assert await _resent(settings) == []
    assert [r.offset for r in await _waiting(settings)] == [0, 1, 2]
    await replay(settings, [settings.retry_topic], stale_checked_as_of_ms=result.started_ms)
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    evil = [
        (r.value, dict(r.headers).get("paystream-reconciled")) for r in sent if r.key == b"evil"
    ]
    assert evil == [(b"evil's", b"1"), (b"evil's next", None)]
    assert [r.value for r in sent if r.key == b"acme"] == [b"acme's"]
    assert await _waiting(settings) == []


async def test_a_stale_refresh_is_resent_and_a_stale_charge_is_held(
    deployment_factory: Any,
) -> None:
    """A refresh (a read: no key, no effect) parked as long ago as the charge beside it
    is re-sent unmarked; the charge waits for a person. Either mode of CloudEvents."""
    dep = await deployment_factory()
    settings = dep.settings

    def command(kind: str, body: dict[str, Any], mode: CloudEventsMode) -> RawSend:
        raw = encode_event(build_command(kind, "acme", body), b"acme", mode)
        return RawSend(raw.key, raw.value, 0, (*raw.headers, STALE))

    refresh = command("payment.refresh", {"payment_id": "p1"}, CloudEventsMode.BINARY)
    structured = command("payment.refresh", {"payment_id": "p2"}, CloudEventsMode.STRUCTURED)
    charge = command(
        "payment.create",
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
        CloudEventsMode.BINARY,
    )
    await dep.produce(settings.retry_topic, refresh, structured, charge)
    seen: list[str] = []
    result = await replay(settings, [settings.retry_topic],
                          observe=lambda r, what: seen.append(what))  # fmt: skip
    assert seen == ["replayed", "replayed", "held back"]
    assert result.stale == 1
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    assert [r.value for r in sent] == [refresh.value, structured.value]
    assert all("paystream-reconciled" not in dict(r.headers) for r in sent)
    assert [r.value for r in await _waiting(settings)] == [charge.value]


async def test_dlq_list_escapes_a_hostile_key_and_id(
    deployment_factory: Any,
) -> None:
    """Anyone who can produce to paystream.commands chooses the key and ce_id of a dead
    letter (e.g. a not_a_cloudevent or payload_too_large record). `dlq list` echoes
    them unescaped: terminal control sequences reach the operator's terminal (rewrite
    lines, set the window title, hide records...)."""
    dep = await deployment_factory()
    settings = dep.settings
    esc = b"\x1b[2K\x1b[1A\x1b]0;pwned\x07"
    await dep.produce(
        settings.dlq_topic,
        RawSend(
            key=b"acme" + esc,
            value=b"junk",
            partition=0,
            headers=(
                ("ce_id", b"c1" + esc),
                ("paystream-dlq-reason", b"internal_error"),
            ),
        ),
    )
    shown = await asyncio.to_thread(run_cli, dep, "dlq", "list", "--topic", "dlq")
    assert "\x1b" not in shown.stdout, repr(shown.stdout)


HOSTILE_REASONS = {
    "control": (b"odd\x1b]0;pwned\x07", '"odd\\\\x1b]0;pwned\\\\x07"=1'),  # escaped, quoted
    "not-utf8": (b"odd\xff", '"odd\\ufffd"=1'),  # not UTF-8: shown, not raised on
    "separators": (b"a=5, b", '"a=5, b"=1'),  # cannot pass for two counts
}


@dataclass(frozen=True)
class Shown:
    """What `dlq list` and `dlq replay` printed for one retry or dead-letter topic."""

    topic: str
    listed: subprocess.CompletedProcess[str]
    replayed: subprocess.CompletedProcess[str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hostile_reasons_shown(deployment_factory: Any) -> Shown:
    """A parked record for each of HOSTILE_REASONS, at offsets 0, 1, 2 (in that order) of
    one retry topic, listed and replayed once."""
    dep = await deployment_factory()
    await dep.produce(
        dep.settings.retry_topic,
        *(
            RawSend(key=b"acme", value=b"{}", partition=0,
                    headers=(("paystream-park-reason", reason),))
            for reason, _ in HOSTILE_REASONS.values()
        ),
    )  # fmt: skip
    listed = await asyncio.to_thread(run_cli, dep, "dlq", "list", "--topic", "retry")
    proc = await asyncio.to_thread(
        run_cli, dep, "dlq", "replay", "--topic", "retry", "--without-master-key"
    )
    return Shown(dep.settings.retry_topic, listed, proc)


@pytest.mark.parametrize("case", list(HOSTILE_REASONS))
async def test_dlq_replay_and_list_show_a_hostile_park_reason(
    hostile_reasons_shown: Shown, case: str
) -> None:
    """`dlq replay` counts what it re-sent by park reason, a header any producer to the
    retry topic chooses; `dlq list` shows it: neither prints it raw nor fails on it.
    (One record of each case on the topic: the count is one per reason.)"""
    listed, proc = hostile_reasons_shown.listed, hostile_reasons_shown.replayed
    at = f"{hostile_reasons_shown.topic}[0]@{list(HOSTILE_REASONS).index(case)} "
    mine = [line for line in listed.stdout.split("\n") if at in line]
    assert len(mine) == 1 and "reason=" in mine[0], listed.stdout
    assert "\x1b" not in listed.stdout, listed.stdout
    shown = HOSTILE_REASONS[case][1]
    [summary] = [line for line in proc.stdout.split("\n") if line.startswith("replayed ")]
    assert summary.startswith(f"replayed {len(HOSTILE_REASONS)} record(s): "), proc.stdout
    counts = summary.split(": ", 1)[1]
    assert (
        counts.startswith(shown + ", ") or f", {shown}, " in counts or counts.endswith(", " + shown)
    ), proc.stdout
    assert "\x1b" not in proc.stdout


async def _waiting(settings: Any) -> list[Any]:
    left, consumer = await read_parked(settings, [settings.retry_topic], committed_only=True)
    await consumer.stop()
    return left


async def test_replays_while_a_record_waits_for_a_person_add_nothing(
    deployment_factory: Any,
) -> None:
    """A scheduled `dlq replay` (every 10 min, say) while a stale record waits for a
    person writes nothing to a topic kept forever (retention.ms=-1)."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.retry_topic,
        RawSend(key=b"evil", value=b"stale", partition=0,
                headers=(("paystream-first-attempt-ms", b"1"),)),
    )  # fmt: skip
    for _ in range(3):
        await replay(settings, [settings.retry_topic])
    everything, consumer = await read_parked(settings, [settings.retry_topic], committed_only=False)
    await consumer.stop()
    assert len(everything) == 1


async def test_two_commands_with_the_same_bytes_are_both_kept(deployment_factory: Any) -> None:
    """No record is taken for a copy of another: both distinct commands wait."""
    dep = await deployment_factory()
    s = dep.settings
    body = b'{"payment_id":"p1","amount":100}'
    await dep.produce(
        s.retry_topic,
        RawSend(key=b"evil", value=body, partition=0,
                headers=(("ce_id", b"c1"), ("ce_type", b"t"), STALE)),
        RawSend(key=b"evil", value=body, partition=0,
                headers=(("ce_id", b"c2"), ("ce_type", b"t"), STALE)),
        RawSend(key=b"acme", value=b"fresh", partition=0),
    )  # fmt: skip
    await replay(s, [s.retry_topic])
    left = await _waiting(s)
    assert sorted(r.command_id_and_type[0] for r in left if r.key == b"evil") == ["c1", "c2"]


async def test_only_what_was_stale_when_it_was_reported_is_marked_reconciled(
    deployment_factory: Any,
) -> None:
    """The operator is told what a run held back as stale, checks it, and replays. A
    record only held behind it then, inside the window, has aged past it meanwhile:
    marked reconciled too, it ran past the provider's key window unchecked (review
    finding). Only records stale as of the reporting run are marked; that one is held
    back again (and reported)."""
    dep = await deployment_factory()
    s = dep.settings
    t = int(time.time() * 1000)
    cut = stale_after_ms(s)
    first = "paystream-first-attempt-ms"
    await dep.produce(
        s.retry_topic,
        RawSend(key=b"evil", value=b"A", partition=0,
                headers=((first, b"%d" % (t - cut - 60_000)),)),
        RawSend(key=b"acme", value=b"B", partition=0,  # 30 min inside the window at T
                headers=((first, b"%d" % (t - cut + 30 * 60_000)),)),
    )  # fmt: skip
    t = int(time.time() * 1000) + 1  # the reporting run: after they were parked
    reported = await replay(s, [s.retry_topic], now_ms=t)
    assert reported.stale == 2 and reported.started_ms == t and reported.complete
    later = await replay(s, [s.retry_topic], now_ms=t + 3_600_000, stale_checked_as_of_ms=t)
    sent, consumer = await read_parked(s, [s.commands_topic], committed_only=False)
    await consumer.stop()
    assert [(r.value, dict(r.headers).get("paystream-reconciled")) for r in sent] == [(b"A", b"1")]
    assert later.stale == 1 and [r.value for r in await _waiting(s)] == [b"B"]
    # Nor is one parked after that run (a re-send the worker found stale), though its
    # first attempt was old enough: it was not on the topic when the operator was told.
    headers = ((first, b"%d" % (t - cut - 120_000)),)
    parked_later = RawSend(
        key=b"acme", value=b"C", partition=1, headers=headers, timestamp_ms=t + 60_000
    )
    await dep.produce(s.retry_topic, parked_later)
    again = await replay(s, [s.retry_topic], now_ms=t + 7_200_000, stale_checked_as_of_ms=t)
    assert again.stale == 2 and {r.value for r in await _waiting(s)} == {b"B", b"C"}


async def test_a_time_checked_for_one_topic_reconciles_nothing_on_the_other(
    deployment_factory: Any,
) -> None:
    """`dlq replay --topic dlq` held back a stale dead letter and printed its time; the
    replay after the check, run over both topics, re-sent as reconciled a stale parked
    command nobody was shown (review finding). The time now goes with the topics read."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic, RawSend(key=b"acme", value=b"shown", partition=0, headers=(STALE,))
    )
    await dep.produce(
        settings.retry_topic, RawSend(key=b"acme", value=b"unseen", partition=0, headers=(STALE,))
    )
    shown = await replay(settings, [settings.dlq_topic])
    assert shown.stale == 1
    both = [settings.dlq_topic, settings.retry_topic]
    seen: list[tuple[bytes | None, str]] = []
    await replay(settings, both, stale_checked_as_of_ms=shown.started_ms,
                 stale_checked_topics=frozenset([settings.dlq_topic]),
                 observe=lambda r, what: seen.append((r.value, what)))  # fmt: skip
    assert sorted(seen) == [(b"shown", "replayed"), (b"unseen", "held back")]
    assert await _resent(settings) == [b"shown"]
    assert [r.value for r in await _waiting(settings)] == [b"unseen"]


async def test_a_replay_to_a_commands_topic_that_does_not_exist_is_refused(
    deployment_factory: Any,
) -> None:
    """From a shell whose PAYSTREAM_COMMANDS_TOPIC is not the workers' (mistyped), the
    broker made the topic up, every parked command went there, and the replay committed
    past them and exited 0: never run (review finding). Refused, nothing committed."""
    import uuid

    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", f"cmd {i}".encode(), 0) for i in range(2)))
    typo = f"typo-{uuid.uuid4().hex[:6]}.commands"
    proc = run_cli(
        dep, "dlq", "replay", "--topic", "retry", "--without-master-key", check=False,
        PAYSTREAM_COMMANDS_TOPIC=typo,
    )  # fmt: skip
    assert proc.returncode != 0 and f"commands topic {typo!r} does not exist" in proc.stderr
    _, waiting = await dlq.list_parked(settings, [settings.retry_topic], limit=None)
    assert waiting == 2


async def test_offsets_the_broker_does_not_answer_about_end_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka asks for committed offsets (and commits) for as long as the group
    coordinator is unknown: a replay stuck there said nothing and held its lease, every
    other replay refused, for the whole outage (review finding). Bounded now."""
    monkeypatch.setattr(dlq, "OFFSETS_TIMEOUT_SECONDS", 0.05)

    class Stuck:
        async def committed(self, tp: Any) -> int:
            await asyncio.Event().wait()
            return 0

    reader = type("Reader", (), {"consumer": Stuck(), "committed": {}})()
    commits = dlq._FencedCommits(reader)  # type: ignore[arg-type]
    with pytest.raises(dlq.KafkaOffsetsTimeout, match="did not answer"):
        await commits.commit({dlq.TopicPartition("t", 0): 3})
