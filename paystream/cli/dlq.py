"""`paystream dlq`: listing and re-driving dead-lettered and parked commands."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import redis

from paystream.settings import Settings

if TYPE_CHECKING:
    from paystream.dlq import PaceWait
from paystream.cli.base import _run, _settings, _stoppable, cli


@cli.group()
def dlq() -> None:
    """Inspect and re-drive dead-lettered and parked commands."""


def _dlq_topics(settings: Settings, which: str) -> list[str]:
    return {
        "dlq": [settings.dlq_topic],
        "retry": [settings.retry_topic],
        "all": [settings.dlq_topic, settings.retry_topic],
        "ledger": [settings.ledger_dlq_topic],
    }[which]


@dlq.command("list")
@click.option(
    "--topic",
    "which",
    type=click.Choice(["dlq", "retry", "all", "ledger"]),
    default="all",
    help="dead letters, parked commands, both, or outcomes the ledger refused (list only)",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="also records replayed or passed over before (from the start of the topic), marked [done]",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="only this tenant's records (the record key; repeatable)",
)
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    help="only records parked or dead-lettered for this reason (e.g. provider_unavailable; "
    "repeatable)",
)
def dlq_list(
    which: str, limit: int, everything: bool, tenants: tuple[str, ...], reasons: tuple[str, ...]
) -> None:
    """List records waiting to be replayed: where, how old, whose, why."""
    settings = _settings()
    from paystream.dlq import ParkedRecord, age_text, list_parked_and_done
    from paystream.streams.pan import redact_card_numbers

    topics = _dlq_topics(settings, which)
    keep = None
    if tenants or reasons:
        # (Every record is read to count those kept: an incident's "whose, and why?")

        def keep(rec: ParkedRecord) -> bool:
            return (not tenants or rec.tenant in tenants) and (not reasons or rec.reason in reasons)

    records, waiting, done = _run(
        list_parked_and_done(settings, topics, limit=limit, everything=everything, keep=keep)
    )
    now_ms = time.time() * 1000
    for rec in records:
        # (--all: below where replays got to, it was replayed or passed over already.)
        handled = rec.offset < done.get((rec.topic, rec.partition), 0)
        command_id, command_type = rec.command_id_and_type
        detail = rec.detail.replace("\n", " ")
        # Key, ids and type are whatever a producer sent: shown escaped and cut, never
        # as terminal control sequences.
        click.echo(
            ("[done] " if handled and which != "ledger" else "")
            + f"{rec.topic}[{rec.partition}]@{rec.offset} "
            f"age={age_text(now_ms - rec.first_seen_ms)} "
            f"tenant={_shown(rec.tenant)} reason={_shown(rec.reason)} "
            f"id={_shown(command_id)} type={_shown(command_type)}"
            # (Redacted as sent, then quoted and shown as shown_text shows text: quoting
            # escapes a control between a card number's groups; reviews h64g, h64h.)
            + (f" detail={_shown(repr(redact_card_numbers(detail)), 162)}" if detail else "")
            + (
                (
                    " (held a customer's 3-D Secure credential: not kept)"
                    if dict(rec.headers).get("paystream-dlq-redacted") == b"next_action"
                    else " (held card data: not kept, not replayed)"
                )
                if rec.redacted
                else ""
            )
            + (
                " (too large to keep, not replayed; the original is at "
                f"{_shown(rec.source or '?')})"
                if rec.dropped
                else ""
            )
            + (
                f" (its sender was answered {_shown(rec.answered)}: not replayed)"
                if rec.answered is not None and not rec.redacted
                else ""
            )
            + (
                " (not replayed)"
                if which != "ledger"
                and not (rec.replayable or rec.redacted or rec.dropped or rec.answered)
                else ""
            )
        )
    kind = f"record(s) in {' and '.join(topics)}" if everything else "record(s) waiting"
    if keep is not None:
        kind += " " + " and ".join(
            part
            for part in (
                tenants and "of tenant " + " or ".join(map(_shown, tenants)),
                reasons and "for " + " or ".join(map(_shown, reasons)),
            )
            if part
        )
    if len(records) < waiting:
        click.echo(f"showing {len(records)} of {waiting} {kind} (--limit for more)", err=True)
    else:
        click.echo(f"{waiting} {kind}", err=True)
    if which == "ledger" and records:
        click.echo(
            "outcomes the ledger refused are kept here for inspection and never replayed; "
            "each names where it is on the events topic (paystream-source)",
            err=True,
        )


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what is shown.
_PLAIN_NAME = re.compile(r"[a-z0-9_]{1,64}")


def _shown(text: str, limit: int = 200) -> str:
    """A producer's text, safe to print (``paystream.dlq.shown_text``)."""
    from paystream.dlq import shown_text

    return shown_text(text, limit)


def _epoch_ms(text: str) -> int:
    """An ISO 8601 time (a zone is required: Z or an offset) in ms since the epoch."""
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{text!r} names no time zone (end it with Z)")
    return int(when.timestamp() * 1000)


def _stale_checked(
    settings: Settings, text: str | None
) -> tuple[int | None, frozenset[str] | None]:
    """``--include-stale-as-of TIME[@dlq|@retry]``: the time a run printed, and the topic
    it read when it read only one (a bare time: a run over both)."""
    if text is None:
        return None, None
    when, at, which = text.partition("@")
    if at and which not in ("dlq", "retry"):
        raise click.BadParameter(
            f"{text!r}: after the time, @dlq or @retry (as the run that held them back printed)"
        )
    return _epoch_ms(when), frozenset(_dlq_topics(settings, which or "all"))


def _check_printed(settings: Settings, text: str, as_of_ms: int, *, redis_down_ok: bool) -> None:
    """Refuse an --include-stale-as-of time no replay run printed (held_back.py): a
    later one ("now") names stale records nobody was shown (review finding).
    ``redis_down_ok`` (--no-lease): with Redis unreachable, only the first check."""
    if as_of_ms > time.time() * 1000:
        raise click.BadParameter(
            f"{text!r} is later than now: name the time a run that held records back printed"
        )
    if not settings.redis_url:
        # (No Redis: nothing was recorded to check against.)
        click.echo(
            f"warning: REDIS_URL is not set: {text!r} is not checked against the times "
            "replay runs printed; name only the time the run you checked printed",
            err=True,
        )
        return
    from paystream.held_back import HeldBackTimes

    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        printed = times.printed(as_of_ms, text.partition("@")[2] or "all")
    except redis.RedisError as exc:
        if redis_down_ok:
            click.echo(
                f"warning: Redis did not answer ({exc}): {text!r} is not checked against "
                "the times replay runs printed",
                err=True,
            )
            return
        raise click.ClickException(
            f"could not check {text!r} against the times replay runs printed ({exc}); "
            "with Redis down, --no-lease skips the check"
        ) from None
    finally:
        times.close()
    if not printed:
        raise click.BadParameter(
            f"no replay run printed {text!r} (in the last 30 days): run `paystream dlq "
            "replay` (or --dry-run), check the records it holds back with the provider, "
            "then name the time it prints, as it prints it"
        )


def _record_printed(settings: Settings, as_of_ms: int, which: str) -> bool:
    """Keep this run's time; False (said so) if Redis did not take it."""
    from paystream.held_back import HeldBackTimes

    assert settings.redis_url is not None
    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        times.record(as_of_ms, which)
        return True
    except redis.RedisError as exc:
        click.echo(
            f"note: Redis did not keep this run's time ({exc}), so a replay naming it is "
            "refused: run this again once Redis answers",
            err=True,
        )
        return False
    finally:
        times.close()


def _iso_ms(ms: int) -> str:
    """A time in ms since the epoch, as ISO 8601 UTC to the millisecond."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class _ReplayProgress:
    """`dlq replay`'s progress line on stderr: records read, and whose pace it waits for."""

    def __init__(self) -> None:
        self.width = 0  # of the line shown, to blank out what a shorter one leaves
        self.waiting_shown = 0.0  # when a "waiting" line was last shown (monotonic)

    def progress(self, n: int, total: int) -> None:
        if n == total or n % 100 == 0:
            self._show(f"records read: {n}/{total}", last=n == total)

    def paced(self, wait: PaceWait) -> None:
        now = time.monotonic()
        if now - self.waiting_shown < 0.5:
            return
        self.waiting_shown = now
        self._show(
            f"records read: {wait.done}/{wait.total}, waiting for the pace of "
            + _tenant_rates(dict(wait.tenants))
        )

    def _show(self, text: str, *, last: bool = False) -> None:
        click.echo(f"\r{text.ljust(self.width)}", nl=last, err=True)
        self.width = 0 if last else max(self.width, len(text))


def _tenant_rates(rates: dict[str, int], shown: int = 3) -> str:
    """Tenants and their paces, escaped and cut: "acme (20/s), globex (5/s) and 3 more"."""
    named = [f"{_shown(t, 64)} ({rate}/s)" for t, rate in sorted(rates.items())[:shown]]
    more = len(rates) - len(named)
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


# `dlq replay` exit statuses besides 0, 1 and 130 (interrupted).
EXIT_HELD_BACK = 3  # stale records held back: they need a person
# Another replay holds the lease (refused at start, nothing read) or took it meanwhile,
# or committed meanwhile: nothing more committed.
EXIT_CONCURRENT_REPLAY = 4


@dlq.command("replay")
@click.option(
    "--topic",
    "which",
    type=click.Choice(["dlq", "retry", "all"]),
    default="all",
    show_default=True,
    help="re-drive the dead-letter topic, the retry topic (parked commands), or both",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="stop after N records (the rest wait for the next run)",
)
@click.option(
    "--dry-run", is_flag=True, help="say what would be re-sent or held back; send nothing"
)
@click.option(
    "--include-stale-as-of",
    "stale_checked_as_of",
    default=None,
    metavar="TIME",
    help="also re-send, marked as reconciled, the records that were stale as of TIME: the "
    "time a run that held them back printed, after you checked them with the provider "
    "(ISO 8601, e.g. 2026-12-01T19:30:12Z; with @dlq or @retry when that run read only "
    "that topic, as it printed). Records stale only since, or on a topic that run did not "
    "read, are held back again",
)
@click.option("--include-stale", is_flag=True, hidden=True)
@click.option(
    "--rate-per-tenant",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="re-send at most N commands a second per tenant (burst N), whatever the tenants' "
    "rate limits; 0: unpaced. Default: each tenant's commands_per_second and burst in the "
    "registry when the replay starts (tenants without one unpaced). A partition's records "
    "keep their order: one behind a record waiting for its tenant's pace waits too, "
    "whoever's it is; the other partitions go on",
)
@click.option(
    "--no-lease",
    is_flag=True,
    help="take no replay lease (it needs Redis: for a deployment without REDIS_URL, or "
    "with Redis down): nothing then keeps another replay from running at the same time",
)
@click.option(
    "--without-master-key",
    is_flag=True,
    help="replay with no PAYSTREAM_MASTER_KEY set, for workers that run without one too "
    "(the commands' first-attempt times go unsealed, as such workers read them; workers "
    "with a master key take such commands as first run now)",
)
def dlq_replay(
    which: str,
    limit: int | None,
    dry_run: bool,
    stale_checked_as_of: str | None,
    include_stale: bool,
    rate_per_tenant: int | None,
    no_lease: bool,
    without_master_key: bool,
) -> None:
    """Re-drive parked and dead-lettered commands through `paystream.commands`, at each
    tenant's rate limit."""
    if include_stale:
        # It marked whatever was stale when it ran, records nobody had checked included
        # (one that aged past the window behind another): a second charge (review finding).
        raise click.UsageError(
            "--include-stale is replaced by --include-stale-as-of TIME: the time the run "
            "that held the records back printed, after you checked them with the provider"
        )
    settings = _settings()
    checked_ms, checked_topics = _stale_checked(settings, stale_checked_as_of)
    from paystream.dlq import ConcurrentReplayError, age_text, replay, stale_after_ms

    if stale_checked_as_of is not None and checked_ms is not None:
        _check_printed(settings, stale_checked_as_of, checked_ms, redis_down_ok=no_lease)

    if settings.kafka_broker_url is None and settings.master_key is None and not settings.redis_url:
        # (A shell without the workers' settings, most likely without `paystream dev`'s
        # export line: said first, not the master key's or the lease's flags, which
        # would be wrong for workers that have both.)
        raise click.ClickException(
            "KAFKA_BROKER_URL is not set: paste the `export` line `paystream dev` printed "
            "(it sets the master key and REDIS_URL too), or set the workers' settings"
        )
    if settings.master_key is None and not dry_run and not without_master_key:
        # Unsealed, the first-attempt times (and reconciled marks) are ignored by workers
        # that have a master key: a re-sent command's age counts from the re-send, and
        # one parked a day ago, parked again, could be re-sent past the provider's key
        # window and charged twice (review finding: this was a warning).
        raise click.UsageError(
            "PAYSTREAM_MASTER_KEY is not set: workers that have one would take the re-sent "
            "commands as first run now. Set it as the workers have it, or pass "
            "--without-master-key if the workers run without one"
        )

    verb = "would replay" if dry_run else "replayed"
    shown = _ReplayProgress()

    done: Counter[str] = Counter()  # what was done so far, for an interrupted replay

    def observe(_rec: Any, what: str) -> None:
        done[what] += 1  # REPLAYED, PASSED_OVER or HELD_BACK (paystream.dlq)

    if not dry_run and not settings.redis_url and not no_lease:
        # (Most likely a shell without the workers' settings: a replay run from it would
        # ignore the lease a properly configured one holds.)
        raise click.UsageError(
            "REDIS_URL is not set: the replay lease, which keeps replays one at a time, is "
            "kept in Redis. Set REDIS_URL as the workers have it, or pass --no-lease (a "
            "deployment without Redis; then run one replay at a time yourself)"
        )
    try:
        result = _run(
            # (SIGTERM too, as a Job's deletion sends: committed on the way out.)
            _stoppable(
                replay(
                    settings,
                    _dlq_topics(settings, which),
                    limit=limit,
                    dry_run=dry_run,
                    stale_checked_as_of_ms=checked_ms,
                    stale_checked_topics=checked_topics,
                    progress=shown.progress,
                    observe=observe,
                    rate_per_tenant=rate_per_tenant,
                    paced=shown.paced,
                    take_lease=not no_lease,
                )
            ),
            own=(ConcurrentReplayError,),
            note_waiting=False,  # (it shows its progress)
        )
    except ConcurrentReplayError as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(EXIT_CONCURRENT_REPLAY)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: {verb} {done['replayed']} record(s), passed over "
            f"{done['passed over']}"
            + (
                ""
                if dry_run
                else "; what was done is committed unless a warning above says otherwise: "
                "run it again to go on"
            ),
            err=True,
        )
        sys.exit(130)
    if result.stale:
        stale_ms = stale_after_ms(settings)
        # The topics this run read go with its time: a stale record on another topic
        # was shown to nobody (review finding: `--topic dlq`, then a replay of all).
        as_of = _iso_ms(result.started_ms) + ("" if which == "all" else f"@{which}")
        topic = "" if which == "all" else f"--topic {which} "
        vouched = result.complete and (not settings.redis_url or result.read_to_kept)
        if result.complete and settings.redis_url and result.read_to_kept:
            vouched = _record_printed(settings, result.started_ms, which)
        elif result.complete and settings.redis_url:
            click.echo(
                "note: Redis did not keep where this run read to (see the warning above), "
                "so its time is not recorded and a replay naming it is refused: run this "
                "again once Redis answers",
                err=True,
            )
        elif result.complete:
            click.echo(
                "note: REDIS_URL is not set, so this run's time is not recorded: a replay "
                "naming it with REDIS_URL set refuses it (run this with the workers' REDIS_URL)",
                err=True,
            )
        advice = (
            f"Check them with the provider, then replay with {topic}--include-stale-as-of "
            f"{as_of} (only those stale as of then, on the topics this run read, are "
            "re-sent as reconciled)."
            if vouched
            else "Its time cannot be named (see the note above): run this again once Redis "
            "answers, and check the records that run holds back."
            if result.complete
            else "This run stopped at --limit: replay without it to see every stale "
            "record (and the time to name) before including any."
        )
        click.echo(
            f"held back {result.stale} record(s): first run over {age_text(stale_ms)} "
            "ago, or after such a one on its partition. The provider may have forgotten the "
            "old ones' idempotency keys, so a command it already applied would be applied "
            f"again. {advice}",
            err=True,
        )
        now_ms = time.time() * 1000
        for held in result.held_back:
            click.echo(
                f"  held back {held.where} age={age_text(now_ms - held.first_seen_ms)} "
                f"tenant={_shown(held.tenant)} id={_shown(held.command_id)} "
                f"type={_shown(held.command_type)}",
                err=True,
            )
        if result.stale > len(result.held_back):
            click.echo(
                f"  and {result.stale - len(result.held_back)} more (`paystream dlq list`)",
                err=True,
            )
    # (A reason is a header's text, any producer's: shown escaped, as `dlq list` does,
    # and quoted unless it is a plain name, so "a=5, b" cannot pass for two counts.)
    by_reason = ", ".join(
        f"{why if _PLAIN_NAME.fullmatch(why) else json.dumps(_shown(why))}={n}"
        for why, n in sorted(result.replayed.items())
    )
    summary = f"{verb} {sum(result.replayed.values())} record(s)"
    click.echo(f"{summary}: {by_reason}" if by_reason else summary)
    if result.waited_for:
        click.echo(
            f"waited {result.paced_seconds:.1f} s for the pace of "
            + _tenant_rates(result.waited_for)
        )
    if result.redacted:
        click.echo(
            f"passed over {result.redacted} dead letter(s) kept without their bytes "
            "(they held card data)"
        )
    for rec in result.dropped:
        click.echo(
            f"passed over {rec.topic}[{rec.partition}]@{rec.offset}, dead-lettered without its "
            f"bytes (too large to keep): the original is at {_shown(rec.source or '?')}"
        )
    if result.answered:
        click.echo(
            f"passed over {result.answered} dead letter(s) whose senders were given a final "
            "rejection (re-run, one could charge a second time: its sender re-sends it under "
            "a new id)"
        )
    if result.undecodable:
        click.echo(
            f"passed over {result.undecodable} dead letter(s) that are not CloudEvents "
            "(a replay would only dead-letter them again)"
        )
    if result.too_large:
        click.echo(
            f"passed over {result.too_large} dead letter(s) over the size limit that name no "
            "sender to answer (no id or tenant readable: see them with `dlq list`)"
        )
    if result.stale:
        sys.exit(EXIT_HELD_BACK)  # a scheduled replay must not pass for a clean one


# ---- dev ----------------------------------------------------------------------------
