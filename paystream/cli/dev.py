"""`paystream dev`: the embedded stack (broker, database, cache, worker, dashboard)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click
from aiokafka.errors import KafkaError

from paystream.errors import PaystreamError, described
from paystream.settings import load_settings, url_without_password

if TYPE_CHECKING:
    pass
from paystream.cli.base import _raise_interrupt, _settings, _stoppable, cli
from paystream.cli.demo import (
    DEMO_LIMITS,
    DEMO_TENANTS,
    _demo,
    _demo_rate,
    _duration,
    _register_demo_tenants,
    describe_demo_setup,
)


def _dev_secret(data_dir: Path, name: str) -> str:
    """A development secret kept beside the dev data (generated once, never used outside `dev`)."""
    path = data_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only: written first and chmod-ed after, it was readable by all
        # meanwhile (or for good, had the chmod not run; review finding).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


def _dev_url_file(data_dir: Path, name: str, url: str) -> str:
    """``url`` written to an owner-only file; ``"$(cat <file>)"`` for an export line."""
    path = data_dir / f"{name.lower()}.url"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all, for a shell reading it meanwhile (mkstemp makes it 0600).
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(url)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return f'"$(cat {shlex.quote(str(path))})"'


def _forget_dev_urls(data_dir: Path) -> None:
    """The stack's URL files (_dev_url_file), gone with the servers they name."""
    for path in data_dir.glob("*.url"):
        path.unlink(missing_ok=True)


def _dev_master_key(data_dir: Path) -> str:
    return _dev_secret(data_dir, "dev-master.key")


def _port_free(host: str, port: int) -> bool:
    """Can the worker's web server bind it? (As aiohttp does: a port left in TIME_WAIT
    by an earlier run's connections is free.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _last_error(log_path: Path) -> str:
    """The last ERROR line of a log, to say why a process died (or nothing)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return f"\n  {errors[-1].strip()[:300]}" if errors else ""


# The demo's pace and length: `dev --demo` and `demo` take the same.


@cli.command()
@click.option(
    "--demo/--no-demo",
    default=False,
    help="drive demo traffic through the worker (off unless given; scripts/dev gives it)",
)
@_demo_rate
@_duration
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),  # (0 would have meant the default port, silently)
    default=None,
    help="worker web port (default: PAYSTREAM_WEB_PORT, 6066)",
)
@click.option(
    "--ingress-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="command ingress port (default: PAYSTREAM_INGRESS_PORT, 6070)",
)
def dev(
    demo: bool,
    rate: float,
    duration: float | None,
    web_port: int | None,
    ingress_port: int | None,
) -> None:
    """Start the embedded stack, a worker and its dashboard, and the HTTP command ingress
    (`paystream ingress`); Ctrl-C stops everything."""
    settings = _settings()
    from paystream.devstack import DevStack
    from paystream.devstack.ingress import IngressProcess
    from paystream.devstack.worker import WorkerProcess

    data_dir = settings.data_dir.resolve()
    # The worker's data dir: the stack wipes its stale table state, not another's.
    stack = DevStack(data_dir / "dev", settings.model_copy(update={"data_dir": data_dir / "dev"}))
    worker: WorkerProcess | None = None
    ingress: IngressProcess | None = None
    stop_signals = {signal.SIGINT, signal.SIGTERM}

    # One stack per data dir: starting embedded PostgreSQL wipes its data dir, so a second
    # `dev` on another port killed the first's database (its ledger stalled, unseen).
    # The lock is held for this process's life (released by the kernel when it exits).
    (data_dir / "dev").mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "dev" / "dev.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise click.ClickException(
            f"another `paystream dev` runs from {data_dir / 'dev'}: stop it, or run this one "
            "with PAYSTREAM_DATA_DIR set to another directory (and other ports: --web-port, "
            "--ingress-port)"
        ) from None
    _forget_dev_urls(data_dir / "dev")  # (an earlier run's, killed: dead addresses)
    port = settings.web_port if web_port is None else web_port
    if not _port_free(settings.web_host, port):
        # Found now, not as a worker that exits after the whole stack has started.
        raise click.ClickException(
            f"port {port} on {settings.web_host} is in use: pass --web-port or set "
            "PAYSTREAM_WEB_PORT"
        )
    if ingress_port is None:
        ingress_port = settings.ingress_port
    if not _port_free(settings.ingress_host, ingress_port):
        raise click.ClickException(
            f"port {ingress_port} on {settings.ingress_host} (the command ingress) "
            "is in use: pass --ingress-port or set PAYSTREAM_INGRESS_PORT"
        )
    for sig in stop_signals:
        signal.signal(sig, _raise_interrupt)
    log_path = data_dir / "dev" / "worker.log"
    ingress_log = data_dir / "dev" / "ingress.log"
    try:
        click.echo("starting embedded stack (broker, PostgreSQL, Redis)…")
        stack.start()
        env = {
            **os.environ,
            **stack.env(),
            "PAYSTREAM_DATA_DIR": str(data_dir / "dev"),
            "PAYSTREAM_WEB_PORT": str(port),
            "PAYSTREAM_INGRESS_PORT": str(ingress_port),
            # The whole pipeline, analytics windows and fraud alerts included.
            "PAYSTREAM_AGENTS": os.environ.get("PAYSTREAM_AGENTS", "commands,ledger,insights"),
            # Short windows: the dashboard shows the demo's analytics within seconds.
            "PAYSTREAM_INSIGHTS_WINDOW_SECONDS": os.environ.get(
                "PAYSTREAM_INSIGHTS_WINDOW_SECONDS", "10"
            ),
            # "Waiting for a replay" within seconds of a park or a `dlq replay` (every
            # minute, production's default, it lagged `dlq list` by up to one, review
            # h77c). A measurement asks the broker for the retry and dead-letter topics'
            # offsets: ~20 ms of the worker's CPU at 4 partitions each, under 1% of a core
            # every 5 s (a fleet of many partitions keeps production's minute).
            "PAYSTREAM_PARKED_MEASURE_SECONDS": os.environ.get(
                "PAYSTREAM_PARKED_MEASURE_SECONDS", "5"
            ),
        }
        # For other shells: the stack's URLs, where the dev secrets are (never echoed), and
        # this environment's `paystream` first on the PATH (scripts/setup's .venv).
        exports = dict(stack.env())
        # A second worker started there must read outcomes as this one does (its agents,
        # its windows): the group's outcome readers must all run the same set. And show
        # the parked backlog as fresh as this one's dashboard (else measured every 60 s,
        # review h77l F5).
        for name in (
            "PAYSTREAM_AGENTS",
            "PAYSTREAM_INSIGHTS_WINDOW_SECONDS",
            "PAYSTREAM_PARKED_MEASURE_SECONDS",
        ):
            exports[name] = env[name]
        exports = _shell_values(exports, os.environ)
        # The stack's own URLs hold the passwords its servers were made with this run:
        # by reference to a file only this user reads, as the master key below; the
        # broker's too, so that a line pasted again from history reads this run's port
        # (a literal one, stale, found no broker while the rest answered). The files go
        # when the stack stops: a paste then says "No such file", not a dead address.
        for name, value in stack.env().items():
            if name.endswith("_URL") and os.environ.get(name) != value:
                exports[name] = _dev_url_file(data_dir / "dev", name, value)
        exports["PATH"] = f'"{Path(sys.executable).parent}:$PATH"'
        if "PAYSTREAM_MASTER_KEY" not in env:
            env["PAYSTREAM_MASTER_KEY"] = _dev_master_key(data_dir / "dev")
            key_file = shlex.quote(str(data_dir / "dev" / "dev-master.key"))
            exports["PAYSTREAM_MASTER_KEY"] = f'"$(cat {key_file})"'
        if "PAYSTREAM_DB_APP_PASSWORD" not in env:
            env["PAYSTREAM_DB_APP_PASSWORD"] = _dev_secret(data_dir / "dev", "db-app.password")
            password_file = shlex.quote(str(data_dir / "dev" / "db-app.password"))
            exports["PAYSTREAM_DB_APP_PASSWORD"] = f'"$(cat {password_file})"'
        token_given = "PAYSTREAM_INGRESS_TOKEN" in env
        if not token_given:
            # The platform's key for POST /v1/commands (the demo sends a share over HTTP).
            env["PAYSTREAM_INGRESS_TOKEN"] = _dev_secret(data_dir / "dev", "ingress.token")
            token_file = shlex.quote(str(data_dir / "dev" / "ingress.token"))
            exports["PAYSTREAM_INGRESS_TOKEN"] = f'"$(cat {token_file})"'

        os.environ.update(
            {
                k: v
                for k, v in env.items()
                if k.startswith(("PAYSTREAM_", "KAFKA_", "DATABASE_", "REDIS_"))
            }
        )
        run_settings = load_settings()
        from paystream.streams import broker_compat
        from paystream.streams.admin import ensure_topics

        broker_compat.apply(run_settings)

        async def prepare() -> None:
            from paystream.ledger.migrate import upgrade

            if run_settings.database_url:
                password = run_settings.db_app_password
                await upgrade(
                    run_settings.database_url,
                    app_password=password.get_secret_value() if password else None,
                )
            await ensure_topics(run_settings)
            # With KAFKA_BROKER_URL set the registry outlives this run: a restart must
            # not undo an operator's suspension, limits or provider (it wrote them anew);
            # a limit of the demo's an older demo's record leaves unset is added, and said.
            for tid, said in (await _register_demo_tenants(run_settings)).items():
                if said != "registered":
                    click.echo(f"{tid}: {said}")

        try:
            asyncio.run(prepare())
        except (OSError, KafkaError) as exc:
            # A server this shell names that does not answer: most likely the export line
            # of a `dev` that has stopped (a traceback, and "starting embedded stack").
            # (Not when none is named: then the embedded stack's own server failed.)
            if not (settings.kafka_broker_url or settings.database_url or settings.redis_url):
                raise click.ClickException(
                    f"the embedded stack did not answer while being prepared ({described(exc)})"
                ) from exc
            named = [
                name
                for name, value in (
                    ("KAFKA_BROKER_URL", settings.kafka_broker_url),
                    ("DATABASE_URL", settings.database_url),
                    ("REDIS_URL", settings.redis_url),
                )
                if value
            ]
            raise click.ClickException(
                f"a server {', '.join(named)} names does not answer ({described(exc)}): "
                "the export line of a `paystream dev` that has stopped? Run this from a "
                "shell without it (or unset them) to start the embedded stack"
            ) from exc
        click.echo("starting worker (joins the group, recovers tables)…")
        worker = WorkerProcess(env, log_path, run_settings.web_port).start()
        # The ingress needs no worker (the topics and registry are made above): started
        # beside it, not once it is ready (a second or two of every `dev`).
        click.echo("starting the command ingress…")
        ingress = IngressProcess(env, ingress_log, run_settings.ingress_port).start()
        worker.wait_ready(DEMO_TENANTS, partitions=run_settings.partitions, timeout=120)
        ingress.wait_ready(timeout=60)
        base = f"http://{run_settings.web_host}:{run_settings.web_port}"
        ingress_host = run_settings.ingress_host
        if ingress_host in ("0.0.0.0", "::", ""):  # (bound everywhere: reached locally)
            ingress_host = "127.0.0.1"
        elif ":" in ingress_host:
            ingress_host = f"[{ingress_host}]"
        commands_url = f"http://{ingress_host}:{run_settings.ingress_port}/v1/commands"
        click.echo(f"broker     {url_without_password(stack.env()['KAFKA_BROKER_URL'])}")
        click.echo(f"database   {url_without_password(stack.env()['DATABASE_URL'])}")
        click.echo(f"redis      {url_without_password(stack.env()['REDIS_URL'])}")
        # Behind PAYSTREAM_WEB_TOKEN the plain URL answers 401: say how to open it.
        opener = "?token=<PAYSTREAM_WEB_TOKEN>" if run_settings.web_token else ""
        click.echo(f"dashboard  {base}/{opener}")
        click.echo(f"metrics    {base}/metrics")
        click.echo(
            f"commands   POST {commands_url} (Authorization: Bearer "
            "$PAYSTREAM_INGRESS_TOKEN" + (")" if token_given else ", set by the export line below)")
        )
        click.echo(f"worker log {log_path}")
        click.echo(f"ingress log {ingress_log}")
        click.echo(
            "CLI from another shell (puts `paystream` on the PATH; the broker flavor "
            "matters: Tansu's workarounds):"
        )
        click.echo("  export " + " ".join(f"{k}={v}" for k, v in exports.items()))
        click.echo(f"tenants    {', '.join(DEMO_TENANTS)} (simulator gateway)")
        for tid, limits in DEMO_LIMITS.items():
            click.echo(f"limits     {tid}: {limits.describe()}")
        if demo:
            for line in describe_demo_setup():
                click.echo(line)
        click.echo("Ctrl-C stops everything.")

        # A server of the stack that dies is said, as the worker's death is: the worker
        # only logged errors by the thousand, and `dev` ran on (review finding).
        # How it ended is said (review h78d: a SIGKILLed worker was "worker exited; see
        # worker.log", and the log, cut off mid-line, said nothing of the kill).
        def gone() -> str | None:
            return worker.died() or ingress.died() or stack.died()

        if demo:
            http_base = commands_url.removesuffix("/v1/commands")
            asyncio.run(_stoppable(_demo(run_settings, rate, duration, gone, http_base=http_base)))
        else:
            deadline = None if duration is None else time.monotonic() + duration
            while deadline is None or time.monotonic() < deadline:
                if (why := gone()) is not None:
                    raise click.ClickException(why)
                time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping…")
    except PaystreamError as exc:  # a service that would not start: why, not a traceback
        # The worker's log only once this run's worker has written it (else an older run's).
        why = _last_error(log_path) if worker is not None else ""
        raise click.ClickException(f"{exc}{why}") from exc
    finally:
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not abort the cleanup
        if ingress is not None:
            ingress.stop()
        if worker is not None:
            worker.stop()
        stack.stop()
        _forget_dev_urls(data_dir / "dev")
        click.echo("stopped: worker, ingress and embedded services are down.")


def _shell_values(values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """``values`` as an ``export`` line writes them: quoted for the shell (a URL with
    "&" put the rest of the line in the background), and a URL holding a password,
    never printed, by reference to the variable it came from, which the other shell
    needs too (review finding)."""
    return {
        name: f'"${name}"'
        if url_without_password(value) != value and environ.get(name) == value
        else shlex.quote(value)
        for name, value in values.items()
    }
