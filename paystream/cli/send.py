"""`paystream send`: one command, and its outcome awaited."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from cloudevents.core.v1.event import CloudEvent

    from paystream.client import OutcomeTimeout
    from paystream.settings import Settings
from paystream.cli.base import _Finite, _run, _settings, _stoppable, cli


class _ListsCommandTypes(click.Command):
    """`send --help` ends with the command types (review h77c: only the README's table, or
    a mistyped one's error, listed them); named apart from their models, which the help
    leaves unbuilt (~0.2 s)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from paystream.streams.command_types import COMMAND_TYPES

        with formatter.section("Command types"):
            formatter.write_text(", ".join(sorted(COMMAND_TYPES)))
        super().format_epilog(ctx, formatter)


@cli.command(cls=_ListsCommandTypes)
@click.argument("command_type")
@click.option("--tenant", required=True)
@click.option("--data", default="{}", help="command data as JSON")
@click.option("--id", "command_id", default=None, help="command id (default: random UUID)")
@click.option("--idempotency-key", default=None)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=_Finite(min=0, min_open=True),
    help="seconds to wait for the outcome, connecting to the broker included (with "
    "--http at most 30: the ingress waits no longer)",
)
@click.option("--structured", is_flag=True, help="send in structured content mode")
@click.option(
    "--http",
    "http_url",
    default=None,
    metavar="URL",
    help="send through the HTTP ingress (`paystream ingress`, e.g. http://127.0.0.1:6070, "
    "or a worker's web port) instead of Kafka, with the key in PAYSTREAM_INGRESS_KEY (a "
    "tenant's) or PAYSTREAM_INGRESS_TOKEN",
)
def send(
    command_type: str,
    tenant: str,
    data: str,
    command_id: str | None,
    idempotency_key: str | None,
    timeout: float,
    structured: bool,
    http_url: str | None,
) -> None:
    """Send a command (such as payment.create) and print its outcome."""
    settings = _settings()
    from paystream.client import (
        InvalidCommand,
        OutcomeTimeout,
        PaystreamClient,
        build_command,
        dumps,
        encoded_for_sending,
    )
    from paystream.settings import CloudEventsMode

    def not_json(constant: str) -> None:
        # Python reads NaN and Infinity; JSON has neither (other consumers would choke).
        raise click.BadParameter(f"--data holds {constant}, which is not JSON")

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):  # 1e999: Python's inf, JSON's nothing
            # (Not repeated: it may be a card number's digits.)
            raise click.BadParameter("--data holds a number out of range")
        return number

    from paystream.cli.tenants import _refuse_keys

    # (An ingress key pasted as an id would be kept on the topics, the idempotency
    # record and the ledger for good: refused unrepeated, as the tenants commands do.)
    _refuse_keys(("--id", command_id), ("--idempotency-key", idempotency_key), ("--tenant", tenant))
    try:
        payload = json.loads(data, parse_constant=not_json, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--data is not JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits, deep nesting
        raise click.BadParameter(f"--data cannot be read: {exc}") from exc
    if not isinstance(payload, dict):
        raise click.BadParameter("--data must be a JSON object")
    # (Over HTTP it goes as a structured event: checked so, its size as sent.)
    over_http = http_url is not None
    mode = CloudEventsMode.STRUCTURED if structured or over_http else CloudEventsMode.BINARY
    try:  # before connecting: what the worker would answer under another id, or not at all
        cmd = build_command(
            command_type, tenant, payload, command_id=command_id, idempotency_key=idempotency_key
        )
        encoded_for_sending(cmd, mode, settings)
    except InvalidCommand as exc:
        raise click.UsageError(str(exc)) from exc
    _refuse_unrunnable(str(cmd.get_type()), tenant, payload)

    if http_url is not None:
        try:
            answer = _run(
                _stoppable(_send_over_http(http_url, cmd, timeout, settings)),
                note_waiting=False,
            )
        except KeyboardInterrupt:
            _said_interrupted(cmd.get_id())
        if isinstance(answer, OutcomeTimeout):
            sys.exit(EXIT_NO_OUTCOME)
        _note_other_cause(answer, cmd.get_id(), idempotency_key)
        _note_rejection(answer)
        _print_outcome(dumps(answer), cmd.get_id())
        return

    async def go() -> str | OutcomeTimeout:
        import asyncio  # (not on every run: `--help` needs none)

        client = PaystreamClient(settings, mode)
        deadline = time.monotonic() + timeout
        try:
            # A broker that takes connections but never answers held this for 40 s
            # (aiokafka's metadata wait), whatever --timeout said.
            async with asyncio.timeout(timeout):
                await client.start()
        except TimeoutError:
            raise click.ClickException(
                f"no answer from the broker at {settings.kafka_broker_url} within "
                f"{timeout:g} s: command {cmd.get_id()} was not sent"
            ) from None
        try:
            outcome = await client.send(cmd, max(deadline - time.monotonic(), 0.001))
        except OutcomeTimeout as exc:  # (a TimeoutError: _run would take it for an outage)
            # Said now: stopping may wait on a stalled broker, and the id is what matters.
            click.echo(f"error: {exc.what}", err=True)  # (the advice: the hint below)
            _say_how_to_resend(cmd.get_id())
            await _stop_within(client, STOP_AFTER_TIMEOUT_SECONDS)
            return exc
        except BaseException:
            await _stop_within(client, STOP_AFTER_TIMEOUT_SECONDS)
            raise
        await client.stop()
        _note_other_cause(outcome, cmd.get_id(), idempotency_key)
        _note_rejection(outcome)
        return dumps(outcome)

    try:
        # SIGTERM and SIGHUP as Ctrl-C (`timeout`, a job's deadline, a lost SSH session):
        # the id is said, the only handle on a command that may have been sent.
        said = _run(_stoppable(go()), note_waiting=False)  # (it waits, with its timeout)
    except KeyboardInterrupt:
        _said_interrupted(cmd.get_id())
    if isinstance(said, OutcomeTimeout):
        sys.exit(EXIT_NO_OUTCOME)
    _print_outcome(said, cmd.get_id())


def _print_outcome(text: str, command_id: str) -> None:
    """The outcome on stdout; if stdout is gone (closed, or a pipe whose reader left),
    the id and how to get the outcome again on stderr, and exit 74: the command was sent
    and answered, and exiting 0 (or with a traceback) left its answer unknown."""
    try:
        if sys.stdout is None or sys.stdout.closed:
            raise BrokenPipeError("standard output is closed")
        click.echo(text)
    except OSError as exc:
        with contextlib.suppress(OSError, ValueError):
            # (So that the interpreter's own flush at exit does not fail again.)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        click.echo(
            f"error: command {command_id} was answered, but its outcome could not be "
            f"written to standard output ({exc.strerror or exc})",
            err=True,
        )
        _say_how_to_resend(command_id, answered=True)
        sys.exit(EXIT_OUTPUT_LOST)


def _refuse_unrunnable(command_type: str, tenant: str, payload: dict[str, Any]) -> None:
    """What a worker refuses unrun (an unknown type, a tenant id no tenant can have, data
    its command's model refuses; only a resend of a command a version with another model
    answered would be answered instead), refused before sending: bad
    input, exit 2, the fields named, over Kafka as the HTTP ingress refuses it (a new
    user's `send` got a `validation_error` outcome and 0 over Kafka, and 2 over --http)."""
    from pydantic import ValidationError

    from paystream.streams.commands import COMMAND_PREFIX, COMMANDS, validation_errors
    from paystream.tenancy.models import TENANT_ID_PATTERN

    name = command_type.removeprefix(COMMAND_PREFIX)
    if not command_type.startswith(COMMAND_PREFIX) or name not in COMMANDS:
        raise click.BadParameter(
            # (As it was given: the prefix the client adds was quoted, never typed.)
            f"{name!r} is no paystream command; known: {', '.join(sorted(COMMANDS))}",
            param_hint="COMMAND_TYPE",
        )
    if not re.fullmatch(TENANT_ID_PATTERN, tenant):
        # (Not repeated: it may be anything, a card number too.)
        raise click.BadParameter(
            f"tenant ids match {TENANT_ID_PATTERN} (`paystream tenants list` shows them)",
            param_hint="--tenant",
        )
    try:
        COMMANDS[name].model_validate(payload)
    except ValidationError as exc:
        raise click.BadParameter(
            f"invalid {name} data:\n{_fields_named(validation_errors(exc))}",
            param_hint="--data",
        ) from None


def _fields_named(errors: list[dict[str, Any]]) -> str:
    """Validation errors a line each (the whole data's, of no field: `(data)`)."""
    return "\n".join(f"  {e.get('loc') or '(data)'}: {e.get('msg')}" for e in errors)


def _note_other_cause(outcome: Any, command_id: str, idempotency_key: str | None) -> None:
    cause = outcome.get_extension("causationid")
    if cause != command_id:
        click.echo(
            f"note: answered with the outcome of command {cause}, sent earlier "
            f"under idempotency key {idempotency_key or command_id!r}",
            err=True,
        )


# What to do next, for the rejections a person at the shell is likeliest to have caused.
_NEXT_STEP = {
    "unknown_tenant": "`paystream tenants list` shows the tenants; `paystream tenants add` "
    "adds one",
    "tenant_suspended": "`paystream tenants list` shows its status",
}


def _note_rejection(outcome: Any) -> None:
    """A rejection said on stderr too: the exit is 0 (an outcome came: README), and a
    mistyped tenant's `unknown_tenant` was easy to miss inside the printed event."""
    from paystream.streams.outcomes import OUTCOME_PREFIX

    if outcome.get_type() != OUTCOME_PREFIX + "command.rejected":
        return
    data = outcome.get_data()
    if not isinstance(data, dict):
        return
    reason = str(data.get("reason", ""))
    line = f"rejected: {reason}: {data.get('message', '')}"
    if reason in _NEXT_STEP:
        line += f" ({_NEXT_STEP[reason]})"
    click.echo(line, err=True)


def _say_how_to_resend(command_id: str, *, answered: bool = False) -> None:
    # One hint for every way `send` ends without an outcome printed (Kafka or HTTP): the
    # same id is the safe retry, and, when no outcome came, a provider failure may have
    # parked the command (an answered one was not: no outcome comes before a replay).
    hint = (
        f"send it again with --id {command_id} (same data) to get its outcome without "
        "running it twice"
    )
    if not answered:
        hint += "; if its provider failed, it may be parked: `paystream dlq list`"
    click.echo(hint, err=True)


def _said_interrupted(command_id: str) -> NoReturn:
    # The id is the only handle on a command that may have been sent.
    click.echo(
        f"interrupted: command {command_id} may have been sent; send it again with "
        f"--id {command_id} (same data) to get its outcome without running it twice",
        err=True,
    )
    sys.exit(130)


async def _send_over_http(
    url: str, cmd: Any, wait: float, settings: Settings
) -> CloudEvent | OutcomeTimeout:
    """`send --http`: the command through the HTTP ingress, waited for up to ``wait``
    seconds (the ingress's most is 30; the client gives up 5 s after it). Exit statuses
    as over Kafka: 2 for what was refused as sent, 75 when it may have been taken."""
    # (Here, not at the top: aiohttp's import was a fifth of every Kafka `send`'s start.)
    import aiohttp
    import yarl

    from paystream.client import OutcomeTimeout
    from paystream.http_client import Accepted, IngressClient, IngressError, IngressUnreachable

    parsed = yarl.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter("expected http://host:port or https://…", param_hint="--http")
    if parsed.user is not None or parsed.password is not None:
        # (Not repeated: the key goes as a bearer header; a login in the URL is a secret.)
        raise click.BadParameter(
            "holds a login: the key goes in PAYSTREAM_INGRESS_KEY", param_hint="--http"
        )
    shown = str(parsed.with_query(None).with_fragment(None))  # (a query may hold a token)
    key = os.environ.get("PAYSTREAM_INGRESS_KEY") or (
        settings.ingress_token.get_secret_value() if settings.ingress_token else None
    )
    if not key:
        raise click.UsageError("--http needs PAYSTREAM_INGRESS_KEY or PAYSTREAM_INGRESS_TOKEN")
    waited = min(wait, 30)
    try:
        async with IngressClient(url, key, timeout=5) as client:
            answer = await client.send(cmd, wait=waited)
    except IngressUnreachable as exc:
        if not exc.maybe_taken:
            raise click.ClickException(
                f"no answer from {shown}: {exc}. Is `paystream ingress` (or a worker) "
                "serving there? `paystream dev` prints its address on its `commands POST` line"
            ) from None
        click.echo(f"error: {exc}", err=True)
        _say_how_to_resend(cmd.get_id())
        return OutcomeTimeout(str(exc))
    except IngressError as exc:
        said = f"the ingress refused it: {exc}"
        if exc.errors:  # (in the message: printed before it, they sat above the usage)
            said += "\n" + _fields_named(exc.errors)
        if exc.status in (400, 413, 415):
            raise click.UsageError(said) from None
        raise click.ClickException(said) from None
    except aiohttp.InvalidURL:
        raise click.BadParameter(f"{shown} is no URL", param_hint="--http") from None
    if isinstance(answer, Accepted):
        message = f"command {cmd.get_id()} was taken; no outcome within {waited:g} s"
        click.echo(f"error: {message}", err=True)
        _say_how_to_resend(cmd.get_id())
        return OutcomeTimeout(message)
    return answer


# `send`: no outcome within --timeout (the command may still run: retry with its id);
# 2 is click's for bad input, which was never sent (review finding: the two were one).
EXIT_NO_OUTCOME = 75  # EX_TEMPFAIL
EXIT_OUTPUT_LOST = 74  # EX_IOERR: answered, but its outcome could not be printed
# How long `send` waits, after giving up on an outcome, for the client to stop (its
# producer flushing a queued command to a stalled broker took 40 s past --timeout).
STOP_AFTER_TIMEOUT_SECONDS = 5.0


async def _stop_within(client: Any, seconds: float) -> None:
    import asyncio

    try:
        async with asyncio.timeout(seconds):
            await client.stop()
    except TimeoutError:
        click.echo(
            f"note: the broker did not take the command within {seconds:g} s more; it may "
            "not have been sent (the same id is the safe retry either way)",
            err=True,
        )


# ---- dead letters -----------------------------------------------------------------
