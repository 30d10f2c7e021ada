"""`paystream dlq replay` commits its progress: an interrupted replay is not repeated."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2

from paystream.dlq import (
    HELD_BACK,
    ParkedRecord,
    ReplayResult,
    _ParkedReader,
    backlog,
    read_parked,
    replay,
    stale_after_ms,
)
from tests.fixtures.pipeline import Deployment, RawSend
from tests.test_cli import run_cli

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class Interrupted(Exception):
    pass


class Replayed:
    """A replay's result and what it told ``observe``, record by record."""

    def __init__(self, result: ReplayResult, seen: list[tuple[ParkedRecord, str]]) -> None:
        self.result = result
        self.handled = [r for r, what in seen if what != HELD_BACK]
        self.stale = [r for r, what in seen if what == HELD_BACK]
        self.dropped = result.dropped


async def _replay(settings: Any, topics: list[str], **kw: Any) -> Replayed:
    seen: list[tuple[ParkedRecord, str]] = []
    result = await replay(settings, topics, observe=lambda r, what: seen.append((r, what)), **kw)
    return Replayed(result, seen)


async def cli_at_once(
    dep: Deployment, *argvs: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """`paystream` run with each of ``argvs`` at the same time (commands that only read:
    each its own process, as one after another; on 2 cores a run mostly waits on its
    imports and the broker)."""
    return list(await asyncio.gather(*(asyncio.to_thread(run_cli, dep, *a) for a in argvs)))


async def _resent_records(settings: Any) -> list[Any]:
    """What replays put back on the commands topic."""
    sent, consumer = await read_parked(settings, [settings.commands_topic], committed_only=False)
    await consumer.stop()
    return sent


async def _resent(settings: Any) -> list[bytes | None]:
    return [r.value for r in await _resent_records(settings)]


async def test_an_interrupted_replay_resumes_where_it_stopped(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic, *((b"acme", f"junk {i}".encode(), i % 2) for i in range(7))
    )

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        await _replay(settings, [settings.dlq_topic], progress=stop_after_three)
    left, consumer = await read_parked(settings, [settings.dlq_topic], committed_only=True)
    await consumer.stop()
    assert len(left) == 4
    again = (await _replay(settings, [settings.dlq_topic])).handled
    assert sorted(r.value for r in again) == sorted(r.value for r in left)
    assert (await _replay(settings, [settings.dlq_topic])).handled == []


async def test_a_failing_clean_up_does_not_hide_what_stopped_the_replay(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.dlq_topic, *((b"acme", f"junk {i}".encode(), 0) for i in range(3)))

    async def broker_gone(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        raise KafkaConnectionError("commit failed")

    monkeypatch.setattr(AIOKafkaConsumer, "commit", broker_gone)

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted

    with caplog.at_level(logging.WARNING, logger="paystream.dlq"), pytest.raises(Interrupted):
        await _replay(settings, [settings.dlq_topic], progress=stop_after_two)
    assert "replay clean-up failed" in caplog.text
    # Without another error in flight, a failed commit is the error.
    with pytest.raises(KafkaConnectionError):
        await _replay(settings, [settings.dlq_topic])


async def test_dead_letters_kept_without_their_bytes_are_passed_over(
    deployment_factory: Any,
) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.dlq_topic, (b"acme", b"junk", 0))
    await dep.produce(
        settings.dlq_topic,
        RawSend(value=b"", partition=0, headers=(("paystream-dlq-redacted", b"card_number"),)),
    )
    replayed = (await _replay(settings, [settings.dlq_topic])).handled
    assert [r.redacted for r in replayed] == [False, True]
    # only the junk went back to the commands topic; both are done with
    assert (await _replay(settings, [settings.dlq_topic])).handled == []
    assert await _resent(settings) == [b"junk"]


async def test_records_parked_longer_than_the_idempotency_window_are_held_back(
    deployment_factory: Any,
) -> None:
    """A provider forgets an idempotency key after 24 h: re-sent later, a command it
    applied before the park would be applied again. Such records (and the rest of their
    partition) wait for --include-stale-as-of."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", f"cmd {i}".encode(), 0) for i in range(3)))
    later = int(time.time() * 1000) + stale_after_ms(settings) + 60_000
    held = await _replay(settings, [settings.retry_topic], now_ms=later)
    assert held.handled == [] and [r.value for r in held.stale] == [b"cmd 0", b"cmd 1", b"cmd 2"]
    forced = await _replay(
        settings, [settings.retry_topic], now_ms=later, stale_checked_as_of_ms=later
    )
    assert len(forced.handled) == 3 and forced.stale == []


async def test_dead_letters_that_never_decode_are_passed_over(deployment_factory: Any) -> None:
    """Bytes that are not a CloudEvent fail the same way on every replay: passed over
    (and done with), not re-sent to come back to the dead-letter topic each run."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic,
        RawSend(
            value=b"garbage", partition=0, headers=(("paystream-dlq-reason", b"not_a_cloudevent"),)
        ),
        RawSend(value=b"cmd", partition=0, headers=(("paystream-dlq-reason", b"internal_error"),)),
    )
    handled = (await _replay(settings, [settings.dlq_topic])).handled
    assert [(r.value, r.replayable) for r in handled] == [(b"garbage", False), (b"cmd", True)]
    assert (await _replay(settings, [settings.dlq_topic])).handled == []
    assert await _resent(settings) == [b"cmd"]


async def test_the_idempotency_window_runs_from_the_commands_first_attempt(
    deployment_factory: Any,
) -> None:
    """A command parked again after a failed replay gets a new record: its age is its own
    time (ce_time), not that record's. And an old dead letter that would not be re-sent
    (kept without its bytes) holds nothing back."""
    dep = await deployment_factory()
    settings = dep.settings
    now = int(time.time() * 1000)
    day_ago = datetime.fromtimestamp((now - stale_after_ms(settings) - 60_000) / 1000, UTC)
    # re-parked just now, first sent a day ago
    await dep.produce(
        settings.retry_topic,
        RawSend(value=b"{}", partition=0, headers=(("ce_time", day_ago.isoformat().encode()),)),
    )
    await dep.produce(
        settings.dlq_topic,
        RawSend(
            value=b"",
            partition=0,
            timestamp_ms=now - stale_after_ms(settings) - 60_000,
            headers=(("paystream-dlq-redacted", b"card_number"),),
        ),
        (None, b"fresh", 0),
    )
    retry = await _replay(settings, [settings.retry_topic], now_ms=now)
    assert retry.handled == [] and len(retry.stale) == 1
    dlq = await _replay(settings, [settings.dlq_topic], now_ms=now)
    assert [r.value for r in dlq.handled] == [b"", b"fresh"] and dlq.stale == []


async def test_dead_letters_dropped_as_too_large_are_passed_over_with_their_source(
    deployment_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A record too large to keep is dead-lettered as an empty keyless record pointing at
    the original: re-sent, it would be an empty command, and the commit past it would
    lose the only pointer. Passed over like a redacted one, naming where the original is."""
    dep = await deployment_factory()
    settings = dep.settings
    source = f"{settings.commands_topic}/0/41"
    await dep.produce(
        settings.dlq_topic,
        RawSend(  # as the worker's _dead_letter writes one
            key=None,
            value=b"",
            partition=0,
            headers=(
                ("paystream-dlq-detail", b"value 900000 bytes (limit 65536)"),
                ("paystream-dlq-dropped", b"too_large_to_keep"),
                ("paystream-dlq-reason", b"payload_too_large"),
                ("paystream-source", source.encode()),
            ),
        ),
        (b"acme", b"junk", 0),
    )
    listed, consumer = await read_parked(settings, [settings.dlq_topic], committed_only=True)
    await consumer.stop()
    assert [r.replayable for r in listed] == [False, True]
    # The ledger's refused outcomes can be seen (list only).
    await dep.produce(
        settings.ledger_dlq_topic,
        RawSend(
            key=b"acme",
            value=b"not a cloudevent",
            partition=0,
            headers=(
                ("paystream-dlq-detail", b"not a CloudEvent: JSONDecodeError"),
                ("paystream-dlq-reason", b"ledger_undecodable"),
                ("paystream-source", f"{settings.events_topic}/0/7".encode()),
            ),
        ),
    )
    shown, one, ledger, dry = await cli_at_once(
        dep,
        ("dlq", "list", "--topic", "dlq"),
        ("dlq", "list", "--topic", "dlq", "--limit", "1"),
        ("dlq", "list", "--topic", "ledger"),
        ("dlq", "replay", "--topic", "dlq", "--dry-run"),
    )
    assert f"too large to keep, not replayed; the original is at {source}" in shown.stdout
    # Why, whose and how old, and how many in all (it stopped at 100 without saying).
    assert "detail='value 900000 bytes (limit 65536)'" in shown.stdout
    assert "tenant=acme" in shown.stdout and "tenant=?" in shown.stdout
    assert " age=" in shown.stdout and "2 record(s) waiting" in shown.stderr
    assert len(one.stdout.splitlines()) == 1
    assert "showing 1 of 2 record(s) waiting (--limit for more)" in one.stderr
    assert "reason=ledger_undecodable" in ledger.stdout and "tenant=acme" in ledger.stdout
    assert "never replayed" in ledger.stderr
    assert f"(too large to keep): the original is at {source}" in dry.stdout
    assert "would replay 1 record(s)" in dry.stdout and "not CloudEvents" not in dry.stdout
    with caplog.at_level(logging.WARNING, logger="paystream.dlq"):
        result = await _replay(settings, [settings.dlq_topic])
    # only the junk went back to the commands topic; both are done with
    assert await _resent(settings) == [b"junk"]
    assert (await _replay(settings, [settings.dlq_topic])).handled == []
    assert [r.value for r in result.handled] == [b"", b"junk"]
    # where the original is: on the record (`dlq list`), the result and in the log
    assert [(r.dropped, r.source) for r in listed] == [(True, source), (False, None)]
    assert [r.source for r in result.dropped] == [source]
    assert source in caplog.text and "too large to keep" in caplog.text


async def test_an_old_dropped_dead_letter_holds_nothing_back(deployment_factory: Any) -> None:
    """Like a redacted one, a dropped dead letter is never re-sent: its age is no reason to
    hold back its partition."""
    dep = await deployment_factory()
    settings = dep.settings
    now = int(time.time() * 1000)
    await dep.produce(
        settings.dlq_topic,
        RawSend(
            value=b"",
            partition=0,
            timestamp_ms=now - stale_after_ms(settings) - 60_000,
            headers=(
                ("paystream-dlq-dropped", b"too_large_to_keep"),
                ("paystream-dlq-reason", b"internal_error"),
                ("paystream-source", b"commands/0/7"),
            ),
        ),
        (None, b"fresh", 0),
    )
    result = await _replay(settings, [settings.dlq_topic], now_ms=now)
    assert [r.value for r in result.handled] == [b"", b"fresh"] and result.stale == []
    assert await _resent(settings) == [b"fresh"]


async def test_staleness_counts_from_the_first_attempt_the_worker_recorded(
    deployment_factory: Any,
) -> None:
    """Not from the producer's `time` (an old business time made every parked command of
    a tenant stale at once, holding back its partition); and a replay carries the first
    attempt onto the commands topic, so a park of the replay keeps it."""
    dep = await deployment_factory()
    settings = dep.settings
    now = int(time.time() * 1000)
    old = now - stale_after_ms(settings) - 60_000
    business_time = datetime.fromtimestamp(old / 1000, UTC).isoformat().encode()
    await dep.produce(
        settings.retry_topic,
        RawSend(  # first run a minute ago, stamped with an old business time
            value=b"{}",
            partition=0,
            headers=(
                ("ce_time", business_time),
                ("paystream-first-attempt-ms", b"%d" % (now - 60_000)),
            ),
        ),
        RawSend(  # first run over a window ago, parked again just now
            value=b"{}",
            partition=1,
            headers=(("paystream-first-attempt-ms", b"%d" % old),),
        ),
    )
    result = await _replay(settings, [settings.retry_topic], now_ms=now)
    assert [r.partition for r in result.handled] == [0]
    assert [r.partition for r in result.stale] == [1]
    [resent] = await _resent_records(settings)
    assert dict(resent.headers)["paystream-first-attempt-ms"] == b"%d" % (now - 60_000)


async def test_a_replay_writes_the_first_attempt_it_reckoned(deployment_factory: Any) -> None:
    """A record parked by an older version has no first-attempt header: the replay writes
    what it reckoned (from the command's time), so a park of the replay does not start
    the window again at the replay's time."""
    dep = await deployment_factory()
    settings = dep.settings
    now = int(time.time() * 1000)
    two_hours_ago = now - 7_200_000
    sent = datetime.fromtimestamp(two_hours_ago / 1000, UTC).isoformat().encode()
    await dep.produce(
        settings.retry_topic, RawSend(value=b"{}", partition=0, headers=(("ce_time", sent),))
    )
    await _replay(settings, [settings.retry_topic], now_ms=now)
    [resent] = await _resent_records(settings)
    assert dict(resent.headers)["paystream-first-attempt-ms"] == b"%d" % two_hours_ago


async def test_a_replay_goes_back_to_the_partition_the_worker_read_it_from(
    deployment_factory: Any,
) -> None:
    """An upstream whose client partitions keys otherwise (librdkafka: CRC32) put acme's
    commands on another partition than aiokafka's murmur2 would: replayed by key, they
    ran away from acme's state and out of order with its newer commands."""
    dep = await deployment_factory()
    settings = dep.settings
    commands = settings.commands_topic
    by_key = murmur2(b"acme") & 0x7FFFFFFF
    elsewhere = (by_key + 1) % settings.partitions
    await dep.produce(
        settings.retry_topic,
        RawSend(key=b"acme", value=b"{}", partition=0,
                headers=(("paystream-source", f"{commands}/{elsewhere}/17".encode()),)),
        # no source (an older version), or one naming no partition of the topic: by key
        RawSend(key=b"acme", value=b"{}", partition=0),
        RawSend(key=b"acme", value=b"{}", partition=0,
                headers=(("paystream-source", f"{commands}/999/1".encode()),)),
    )  # fmt: skip
    await _replay(settings, [settings.retry_topic])
    partitions = [r.partition for r in await _resent_records(settings)]
    home = by_key % settings.partitions
    assert sorted(partitions) == sorted([elsewhere, home, home])


async def test_a_backlog_is_read_and_replayed_a_fetch_at_a_time(deployment_factory: Any) -> None:
    """A backlog from a long outage was read whole into memory (20,000 records of 10 KB:
    721 MB) before the first was re-sent, with no word meanwhile."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.retry_topic, *((b"acme", b"x" * 1000, 0) for _ in range(1200)))
    reads: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        reads.append((done, total))

    result = await replay(settings, [settings.retry_topic], progress=progress)
    assert sum(result.replayed.values()) == 1200 and result.handled == 1200
    # Progress from the first record on, against what was waiting when it started.
    assert reads[0] == (1, 1200) and reads[-1] == (1200, 1200)
    reader = _ParkedReader(settings, [settings.retry_topic], committed_only=False)
    await reader.start()
    try:
        sizes = [len(batch) async for batch in reader.batches()]
    finally:
        await reader.consumer.stop()
    assert sum(sizes) == 1200 and max(sizes) <= 500


async def test_a_structured_records_id_and_type_are_listed() -> None:
    body = b'{"id": "cmd-9", "type": "com.paystream.command.payment.create", "data": {}}'
    structured = ParkedRecord("retry", 0, 1, b"acme", body,
                              (("content-type", b"application/cloudevents+json"),))  # fmt: skip
    assert structured.command_id_and_type == ("cmd-9", "com.paystream.command.payment.create")
    binary = ParkedRecord("retry", 0, 2, b"acme", b"{}", (("ce_id", b"c1"), ("ce_type", b"t")))
    assert binary.command_id_and_type == ("c1", "t")
    assert ParkedRecord("dlq", 0, 3, None, b"\xff", ()).command_id_and_type == ("?", "?")


async def test_the_idempotency_window_is_never_longer_than_the_providers() -> None:
    """Stripe may drop a key once it is 24 h old. A longer window of our own is refused
    (a request remembered past it would pass as admitted before while the provider
    charges it anew), and a replay is held back an hour inside the window."""
    from paystream.errors import ConfigurationError
    from paystream.settings import load_settings

    with pytest.raises(ConfigurationError, match="idempotency_ttl_seconds"):
        load_settings(idempotency_ttl_seconds=7 * 24 * 3600)
    assert stale_after_ms(load_settings(idempotency_ttl_seconds=24 * 3600)) == 23 * 3_600_000
    assert stale_after_ms(load_settings(idempotency_ttl_seconds=3600)) == 1_800_000


async def test_a_command_answered_too_large_is_never_replayed() -> None:
    """Its sender was answered `payload_too_large` (final) and may have sent it again,
    smaller, under a new id: re-run once the limit was raised, it charged a second time
    (review finding). Whatever its size, a replay passes it over."""

    def dead_letter(reason: bytes) -> ParkedRecord:
        headers = (("ce_id", b"c-big"), ("paystream-dlq-reason", reason))
        return ParkedRecord("paystream.commands.dlq", 0, 7, b"acme", b"{}" * 40_000, headers)

    assert not dead_letter(b"payload_too_large").replayable
    assert dead_letter(b"internal_error").replayable  # (README: after the fix, by design)


async def test_a_replay_tells_unanswered_oversized_dead_letters_from_undecodable_ones() -> None:
    """Both are passed over; only bytes that are no CloudEvent are called that (review
    h59b: an oversized command was "not CloudEvents or too large for any setting")."""
    from paystream.dlq import ParkedRecord, ReplayResult

    def dead(reason: bytes) -> ParkedRecord:
        return ParkedRecord("d", 0, 0, b"t", b"{}", (("paystream-dlq-reason", reason),), 0)

    result = ReplayResult()
    result.note(dead(b"payload_too_large"), "passed over")
    result.note(dead(b"not_a_cloudevent"), "passed over")
    assert (result.too_large, result.undecodable, result.handled) == (1, 1, 2)


async def _replayed_to_two_then_deleted_below_five(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Seven dead letters on partition 0, replayed to offset 2; then the broker's log
    start reported as 5, as if 0-4 were deleted (the embedded broker deletes none)."""
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(settings.dlq_topic, *((b"acme", f"junk {i}".encode(), 0) for i in range(7)))

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await _replay(settings, [settings.dlq_topic], progress=stop_after_two)
    real = AIOKafkaConsumer.beginning_offsets

    async def deleted_below_five(self: AIOKafkaConsumer, partitions: Any) -> Any:
        starts = await real(self, partitions)
        return {tp: 5 if tp.topic == settings.dlq_topic and tp.partition == 0 else at
                for tp, at in starts.items()}  # fmt: skip

    monkeypatch.setattr(AIOKafkaConsumer, "beginning_offsets", deleted_below_five)
    return settings


async def test_records_deleted_below_where_replays_got_to_are_not_waited_for(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Records deleted below the replay group's offset (retention, or the README's erasure
    advice: kafka-delete-records) were counted as waiting, and the reader sought to the
    offset, which the broker no longer holds (review h64d). The embedded broker deletes
    no records: its log start is reported as past them instead."""
    settings = await _replayed_to_two_then_deleted_below_five(deployment_factory, monkeypatch)
    totals: list[int] = []
    with caplog.at_level(logging.WARNING, logger="paystream.dlq"):
        again = await _replay(
            settings, [settings.dlq_topic], progress=lambda done, total: totals.append(total)
        )
    assert sorted(r.value for r in again.handled) == [b"junk 5", b"junk 6"]
    assert set(totals) == {2}, totals
    assert "records 2 to 4 were deleted before a replay re-drove them" in caplog.text


async def test_the_workers_measurements_do_not_name_deleted_records_every_minute(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker measures the parked backlog once a minute (agents/parked_backlog.py):
    the warning a replay gives for deleted records was said by each, every minute, until
    someone replayed (review h64h)."""
    settings = await _replayed_to_two_then_deleted_below_five(deployment_factory, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="paystream.dlq"):
        measured = [await backlog(settings, [settings.dlq_topic]) for _ in range(3)]
    assert "were deleted before a replay re-drove them" not in caplog.text
    assert {m[settings.dlq_topic].waiting for m in measured} == {2}
