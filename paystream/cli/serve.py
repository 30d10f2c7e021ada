"""`paystream worker`, `ingress`, `config`, `doctor`, `topics`: run and check a deployment."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from paystream.errors import PaystreamError
from paystream.settings import Settings, unknown_variables, url_without_password

if TYPE_CHECKING:
    pass
from paystream.cli.base import (
    _STOP_DELIVERED,
    _STOP_REQUESTED,
    _raise_interrupt,
    _run,
    _settings,
    _stoppable,
    cli,
)

# ---- worker -----------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker(faust_args: tuple[str, ...]) -> None:
    """Run a worker (a Faust worker with paystream's agents, tables and web views)."""
    _settings()
    from paystream import worker as worker_mod

    try:
        worker_mod.main(list(faust_args))
    except PaystreamError as exc:  # (settings that cannot run: why, not a traceback)
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--host", default=None, help="bind address [default: PAYSTREAM_INGRESS_HOST]")
@click.option("--port", type=int, default=None, help="port [default: PAYSTREAM_INGRESS_PORT]")
def ingress(host: str | None, port: int | None) -> None:
    """Run the HTTP command ingress (POST /v1/commands) in a process of its own: it
    produces commands for the workers and answers waiting senders, off their cores."""
    settings = _settings()
    from paystream.web.ingress_server import serve

    try:
        settings.require_broker()
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    work = serve(settings, host or settings.ingress_host, port or settings.ingress_port)
    from paystream.log_limits import flush_at_exit

    flush_at_exit()
    try:
        if settings.event_loop == "uvloop":
            import uvloop

            status = uvloop.run(work)
        else:
            status = asyncio.run(work)
    except PaystreamError as exc:  # (a port in use, a CA file it cannot read: why, not a traceback)
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


# ---- config / doctor ----------------------------------------------------------------


@cli.command()
def config() -> None:
    """Print every environment variable paystream reads, with its current value."""
    settings = _settings()
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "**********" if "SecretStr" in type(value).__name__ else _without_password(value)
        click.echo(f"{name:28} = {shown!s:40}  # {field.description}")
    for name in unknown_variables(os.environ):
        click.echo(f"warning: {name} is not a paystream setting (mistyped?): ignored", err=True)


def _without_password(value: Any) -> Any:
    return url_without_password(value) if isinstance(value, str) else value


@cli.command()
def doctor() -> None:
    """Check broker, database and cache, the broker behaviours Faust relies on, and
    that the workers commit past the commands waiting (if any wait).

    With nothing configured it checks a freshly started embedded stack (what
    `paystream dev` runs); otherwise the servers in KAFKA_BROKER_URL, DATABASE_URL and
    REDIS_URL, and what is not set is reported so.
    """
    settings = _settings()
    from paystream import doctor as doctor_mod

    # Any server configured: check those (an embedded stand-in for one left out would
    # pass for a server the workers never use, and skip the ledger's set-up check).
    # Each check as it ends (a stalled server: a 30 s one). In a terminal on one line
    # rewritten, cleared before the table (which says it all again); in a log, a line each.
    live = sys.stderr.isatty()
    done: list[str] = []

    def shown(result: Any) -> None:
        verdict = "PASS" if result.ok else "FAIL"
        done.append(result.name)
        line = f"  {result.name}: {verdict} ({result.duration:.2f} s)"
        if live:
            click.echo(
                f"\r\033[K  {len(done)} checks done; last {line.strip()}", nl=False, err=True
            )
        else:
            click.echo(line, err=True)

    def cleared() -> None:
        if live and done:
            click.echo("\r\033[K", nl=False, err=True)

    if settings.kafka_broker_url or settings.database_url or settings.redis_url:
        # SIGTERM as Ctrl-C (a Job's deadline, `timeout`): the checks' clean-up runs, and
        # their probe topics and group leave the operator's cluster (review finding).
        # (A stop: "interrupted" and exit 130, as any command's; 1 is a failed check.)
        results = _run(
            _stoppable(doctor_mod.run_checks(settings, deployment=True, progress=shown)),
            note_waiting=False,
        )
    else:
        import tempfile

        from paystream.devstack import DevStack

        empty = [
            v for v in ("KAFKA_BROKER_URL", "DATABASE_URL", "REDIS_URL") if os.environ.get(v) == ""
        ]
        if empty:
            # Set, but to nothing: the export line of a `paystream dev` that has stopped
            # (its files gone, `cat` printed nothing). Checking a stack of its own then
            # passed every check, none of them about the stack meant (review h60m).
            raise click.ClickException(
                f"{', '.join(empty)} set but empty: the export line of a `paystream dev` "
                "that is no longer running? Start it and run its export line again, or "
                "unset them to check a fresh embedded stack"
            )
        click.echo(
            "checking the embedded stack (set KAFKA_BROKER_URL, DATABASE_URL, REDIS_URL "
            "to check your own servers)…"
        )
        base = Path(tempfile.mkdtemp(prefix="paystream-doctor-"))
        base.chmod(0o755)  # the embedded PostgreSQL runs as an unprivileged user
        keep = False
        # SIGTERM as Ctrl-C: the servers are stopped and the directory removed.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            with DevStack(base, settings.model_copy(update={"data_dir": base})) as stack:
                if _STOP_REQUESTED.is_set():  # (a stop swallowed while it started)
                    _STOP_DELIVERED.set()
                    raise KeyboardInterrupt
                results = _run(
                    _stoppable(doctor_mod.run_checks(stack.stack_settings(), progress=shown)),
                    note_waiting=False,
                )
        except PaystreamError as exc:
            # Why, not a traceback; and the logs it names are kept, not deleted with it.
            keep = True
            raise click.ClickException(
                f"the embedded stack did not start: {exc}\n(its files are kept in {base})"
            ) from exc
        finally:
            signal.signal(signal.SIGTERM, previous)
            if not keep:
                shutil.rmtree(base, ignore_errors=True)
    cleared()
    click.echo(doctor_mod.render_table(results))
    if not all(r.ok for r in results):
        sys.exit(1)


# ---- topics and tenants -----------------------------------------------------------


@cli.command()
def topics() -> None:
    """Create paystream's topics (idempotent)."""
    settings = _settings()
    from paystream.streams.admin import TopicCreationError, ensure_topics

    try:
        created = _run(ensure_topics(settings))
    except TopicCreationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created: {', '.join(created) or 'none (all exist)'}")
