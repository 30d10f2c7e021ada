"""`paystream dlq replay` exit statuses, as runbooks and cron jobs read them."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

from paystream import dlq
from paystream.cli import dlq as cli_module
from paystream.settings import load_settings
from paystream.tenancy.crypto import MasterKey

_MASTER_KEY = base64.b64encode(MasterKey.generate().key).decode()


def _with_redis() -> Any:
    # (replay itself is replaced: nothing connects to it)
    return load_settings(redis_url="redis://127.0.0.1:6379/0", master_key=_MASTER_KEY)


def test_a_replay_without_redis_url_takes_the_lease_only_if_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is kept in Redis: a shell without the workers' REDIS_URL would replay
    beside one holding it. Refused, unless --no-lease says so on purpose."""
    calls: list[dict[str, Any]] = []

    async def replayed(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        calls.append(kwargs)
        return dlq.ReplayResult(started_ms=1, complete=True)

    monkeypatch.setattr(
        cli_module, "_settings", lambda: load_settings(redis_url=None, master_key=_MASTER_KEY)
    )
    monkeypatch.setattr(dlq, "replay", replayed)
    refused = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert refused.exit_code == 2 and "--no-lease" in refused.output, refused.output
    assert calls == []
    dry = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    unguarded = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--no-lease"])
    assert unguarded.exit_code == 0, unguarded.output
    assert [c["take_lease"] for c in calls] == [True, False]


def test_a_concurrent_replay_exits_4_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """README and cli.EXIT_CONCURRENT_REPLAY: a replay that notices another one's commit
    stops without committing and exits 4. ConcurrentReplayError is a PaystreamError,
    which `_run` turned into a ClickException (exit 1) before `dlq_replay` could see it."""

    async def concurrent(*args: Any, **kwargs: Any) -> None:
        raise dlq.ConcurrentReplayError("another `paystream dlq replay` committed")

    monkeypatch.setattr(cli_module, "_settings", _with_redis)
    monkeypatch.setattr(dlq, "replay", concurrent)
    result = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert result.exit_code == cli_module.EXIT_CONCURRENT_REPLAY, result.output
    assert "another `paystream dlq replay` committed" in result.output


def _commands_topic_of_its_own(redis_url: str) -> Any:
    """Settings on the session's Redis, with a commands topic no other test names (the
    printed times are kept per commands topic)."""
    return load_settings(
        redis_url=redis_url, commands_topic=f"cmds-{uuid.uuid4().hex}", master_key=_MASTER_KEY
    )


def _holding_one_back(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> tuple[Any, list[dict[str, Any]]]:
    """Settings of their own, and `dlq.replay` replaced by one that holds a record back
    as stale (its time 1_796_000_000_123) and notes how it was called."""
    calls: list[dict[str, Any]] = []

    async def holding(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        calls.append(kwargs)
        return dlq.ReplayResult(
            stale=1, started_ms=1_796_000_000_123, complete=True, read_to_kept=True
        )

    settings = _commands_topic_of_its_own(redis_url)
    monkeypatch.setattr(cli_module, "_settings", lambda: settings)
    monkeypatch.setattr(dlq, "replay", holding)
    return settings, calls


def test_stale_records_are_included_as_of_the_run_that_reported_them(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A run that holds stale records back exits 3 and names its time; the replay after
    the check passes it back (--include-stale-as-of), so that only what was stale then is
    marked reconciled. The old flag marked whatever was stale when it ran (review
    finding): refused, with the way to go on."""
    calls: list[dict[str, Any]] = []

    async def holding(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        calls.append(kwargs)
        return dlq.ReplayResult(
            stale=2,
            started_ms=1_796_000_000_123,
            complete=not kwargs["limit"],
            read_to_kept=not kwargs["limit"],
        )

    settings = _commands_topic_of_its_own(redis_url)
    monkeypatch.setattr(cli_module, "_settings", lambda: settings)
    monkeypatch.setattr(dlq, "replay", holding)
    held = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert held.exit_code == cli_module.EXIT_HELD_BACK, held.output
    assert "--include-stale-as-of 2026-11-30T" in held.output and ".123Z" in held.output
    assert calls[-1]["stale_checked_as_of_ms"] is None
    when = held.output.split("--include-stale-as-of ")[1].split()[0]
    CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of", when])
    assert calls[-1]["stale_checked_as_of_ms"] == 1_796_000_000_123
    cut = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--limit", "5"])
    assert "stopped at --limit" in cut.output and "--include-stale-as-of 2" not in cut.output
    old = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale"])
    assert old.exit_code == 2 and "--include-stale-as-of TIME" in old.output
    no_zone = CliRunner().invoke(
        cli_module.cli, ["dlq", "replay", "--include-stale-as-of", "2026-12-01T10:00:00"]
    )
    assert no_zone.exit_code == 2 and "time zone" in no_zone.output


def test_a_time_printed_by_a_run_over_one_topic_names_that_topic(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A `--topic dlq` run's time counts for the dead letters only: the advice names the
    topic with it, and a replay of both topics passes only the dead-letter topic on as
    checked (review finding: the retry topic's stale records were re-sent unseen)."""
    settings, calls = _holding_one_back(monkeypatch, redis_url)
    held = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--topic", "dlq"])
    assert held.exit_code == cli_module.EXIT_HELD_BACK, held.output
    assert "--topic dlq --include-stale-as-of 2026-11-30T" in held.output, held.output
    when = held.output.split("--include-stale-as-of ")[1].split()[0]
    assert when.endswith(".123Z@dlq")
    CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of", when])
    assert calls[-1]["stale_checked_as_of_ms"] == 1_796_000_000_123
    assert calls[-1]["stale_checked_topics"] == frozenset([settings.dlq_topic])
    bare = when.removesuffix("@dlq")
    CliRunner().invoke(cli_module.cli, ["dlq", "replay"])  # a run over both: its time
    CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of", bare])
    assert calls[-1]["stale_checked_topics"] == frozenset(
        [settings.dlq_topic, settings.retry_topic]
    )
    bad = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of",
                                              bare + "@ledger"])  # fmt: skip
    assert bad.exit_code == 2 and "@dlq or @retry" in bad.output


def test_a_time_no_run_printed_is_refused(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """`--include-stale-as-of` names the run whose held-back records were checked: any
    other time, "now" above all, marks as reconciled stale records nobody was shown, and
    re-sent past the provider's key window one it applied is applied again (review
    finding). A time later than now is refused even without Redis to check against."""
    _, calls = _holding_one_back(monkeypatch, redis_url)
    now = cli_module._iso_ms(int(time.time() * 1000) - 1000)
    for when in (now, "2026-11-30T00:00:00Z"):
        refused = CliRunner().invoke(
            cli_module.cli, ["dlq", "replay", "--include-stale-as-of", when]
        )
        assert refused.exit_code == 2 and "no replay run printed" in refused.output, refused.output
    assert calls == []
    later = CliRunner().invoke(
        cli_module.cli,
        ["dlq", "replay", "--no-lease", "--include-stale-as-of", "2099-01-01T00:00:00Z"],
    )
    assert later.exit_code == 2 and "later than now" in later.output, later.output
    # --no-lease takes no lease: it does not skip the check while Redis answers.
    unleased = CliRunner().invoke(
        cli_module.cli, ["dlq", "replay", "--no-lease", "--include-stale-as-of", now]
    )
    assert unleased.exit_code == 2 and "no replay run printed" in unleased.output
    assert calls == []
    held = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--dry-run"])
    when = held.output.split("--include-stale-as-of ")[1].split()[0]
    # The same instant however written.
    spelled = when.replace("Z", "+00:00")
    done = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of", spelled])
    assert calls[-1]["stale_checked_as_of_ms"] == 1_796_000_000_123, done.output


def test_a_replay_without_the_master_key_is_refused_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unsealed, the re-sent commands' first attempts are ignored by workers that have a
    master key: their age counts from the re-send, and one parked a day ago could be
    re-sent past the provider's key window (review finding: this was only a warning)."""
    calls: list[dict[str, Any]] = []

    async def replayed(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        calls.append(kwargs)
        return dlq.ReplayResult(started_ms=1, complete=True)

    keyless = load_settings(redis_url="redis://127.0.0.1:6379/0")
    monkeypatch.setattr(cli_module, "_settings", lambda: keyless)
    monkeypatch.setattr(dlq, "replay", replayed)
    refused = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert refused.exit_code == 2 and "--without-master-key" in refused.output, refused.output
    assert calls == []
    assert CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--dry-run"]).exit_code == 0
    told = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--without-master-key"])
    assert told.exit_code == 0, told.output
    assert len(calls) == 2


def test_a_printed_time_is_taken_for_30_days(redis_url: str) -> None:
    """Each time is kept 30 days from when it was printed, not for as long as any run
    prints another (review finding)."""
    from paystream.held_back import HeldBackTimes

    times = HeldBackTimes(redis_url, f"cmds-{uuid.uuid4().hex}")
    try:
        times.record(1_000, "all")
        assert times.printed(1_000, "all") and not times.printed(1_000, "dlq")
        month_ago = int(time.time() * 1000) - 31 * 86_400_000
        times._client.zadd(times._key, {"1000@all": month_ago})  # printed 31 days ago
        times.record(2_000, "all")
        assert not times.printed(1_000, "all") and times.printed(2_000, "all")
    finally:
        times.close()
