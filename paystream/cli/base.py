"""The `paystream` command group and what its commands share: settings, running a
coroutine with clean errors, stopping on a signal."""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from paystream.errors import PaystreamError, described
from paystream.streams.kafka_refusals import bootstrap_refusals_held

# Imported where used: every run, `--help` too, imports this module, and the settings'
# pydantic, aiokafka and asyncio took about 0.3 s of it.
if TYPE_CHECKING:
    from collections.abc import Coroutine

    from paystream.settings import Settings


class _Finite(click.FloatRange):
    """A float range that refuses nan (every comparison with it is false, so it passed
    any range: `send --timeout nan` timed out at once, blaming the broker) and inf."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _settings() -> Settings:
    from paystream.settings import load_settings

    try:
        settings = load_settings()
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    from paystream.streams import broker_compat, record_batches

    # (Not Faust's worker consumers': `worker` builds its app, which patches them.)
    broker_compat.apply(settings, worker_consumers=False)
    record_batches.install(settings)  # (what the CLI reads: batches aiokafka refuses)
    return settings


# A command still running after this long says what it is waiting for, once: a broker
# that takes connections and never answers holds it aiokafka's 40 s request timeout.
WAITING_NOTE_SECONDS = 5.0


def _run(
    coro: Any, *, own: tuple[type[PaystreamError], ...] = (), note_waiting: bool = True
) -> Any:
    """Run ``coro``; paystream errors become click errors (exit 1), but for ``own``: the
    caller answers those itself (an exit status of their own). ``note_waiting``: say on
    stderr, once, if it runs past WAITING_NOTE_SECONDS (not for work that shows its
    own progress)."""
    import asyncio

    from aiokafka.errors import KafkaError

    with bootstrap_refusals_held() as refusals:
        try:
            return asyncio.run(_noting_a_wait(coro) if note_waiting else coro)
        except own:
            raise
        except PaystreamError as exc:
            raise click.ClickException(str(exc)) from exc
        except (KafkaError, OSError) as exc:  # a broker or server down: say so, no traceback
            said = described(exc)
            if "Unable to bootstrap" in str(exc):
                # Refused, or taken and never answered (aiokafka's 40 s request timeout):
                # its own words list resolved addresses; say which setting names them.
                said = (
                    f"no Kafka broker answered at {_brokers_named()} (KAFKA_BROKER_URL): is "
                    f"it running, and is that its address? ({said}"
                    + (f"; {refusals.last})" if refusals.last else ")")
                )
                refusals.quoted = True
            raise click.ClickException(said) from exc


async def _noting_a_wait(coro: Coroutine[Any, Any, Any]) -> Any:
    """``coro``'s result; past WAITING_NOTE_SECONDS, a line saying what it waits on (an
    operator saw nothing for 40 s from a broker that never answered)."""
    import asyncio

    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=WAITING_NOTE_SECONDS)
    if not done:
        click.echo(
            f"still waiting on the broker at {_brokers_named()} (KAFKA_BROKER_URL); a broker "
            "that never answers is given up on after 40 s (Ctrl-C stops)",
            err=True,
        )
    return await task


def _brokers_named() -> str:
    from paystream.settings import load_settings

    try:
        return load_settings().require_broker().removeprefix("kafka://").replace(";", ", ")
    except PaystreamError:
        return "the configured address"


# SIGHUP too: a lost SSH session killed a replay outright, its lease held and its sends
# since the last commit re-sent by the next run (review h61d).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _stoppable(coro: Coroutine[Any, Any, Any]) -> Any:
    """``coro``, a stop signal (Ctrl-C, SIGTERM, SIGHUP) cancelling it, then raising
    KeyboardInterrupt. A KeyboardInterrupt raised by a signal handler lands wherever the
    loop happens to be, inside a Kafka client's own task too: that task died half-done,
    and the clean-up waited for its requests to time out (35 s after a stop during
    `doctor`'s group join). A cancel runs the ``finally`` blocks in order instead."""
    import asyncio

    if threading.current_thread() is not threading.main_thread():
        # Signals reach the main thread only, and only it may install handlers: the
        # CLI called from another (a test's CliRunner in a worker thread) runs as is.
        return await coro
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    # A signal ignored when the command started stays ignored: under `nohup` a hang-up
    # must not stop it (review h61e).
    previous = {
        sig: handler
        for sig in _STOP_SIGNALS
        if (handler := signal.getsignal(sig)) is not signal.SIG_IGN
    }
    for sig in previous:
        loop.add_signal_handler(sig, stop)
    try:
        if _STOP_REQUESTED.is_set():  # (see _raise_interrupt)
            coro.close()
            _STOP_DELIVERED.set()
            raise KeyboardInterrupt
        return await coro
    except asyncio.CancelledError:
        if stopped:
            _STOP_DELIVERED.set()
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():  # (the loop's removal sets SIG_DFL)
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


class _CommandsByModule(click.Group):
    """A group whose commands are found in their modules when asked for: importing every
    command's module (the ledger's, the bench's, the demo's, ...) took about a second on
    each `paystream` run, a worker's start included, whatever the command."""

    #: Each command's module, and the name it is defined under there (None: the module
    #: adds it to ``cli`` itself when imported).
    defined_in: dict[str, tuple[str, str | None]] = {
        "audit": ("paystream.ledger.cli", "audit_group"),
        "bench": ("paystream.bench.cli", "bench_command"),
        "config": ("paystream.cli.serve", None),
        "demo": ("paystream.cli.demo", None),
        "dev": ("paystream.cli.dev", None),
        "dlq": ("paystream.cli.dlq", None),
        "docs": ("paystream.cli.docs", None),
        "doctor": ("paystream.cli.serve", None),
        "erase": ("paystream.ledger.cli", "erase_command"),
        "ingress": ("paystream.cli.serve", None),
        "keys": ("paystream.cli.keys", None),
        "ledger": ("paystream.ledger.cli", "ledger_group"),
        "migrate": ("paystream.ledger.cli", "migrate_command"),
        "send": ("paystream.cli.send", None),
        "simulator": ("paystream.simulator_cli", "simulator_group"),
        "tenants": ("paystream.cli.tenants", None),
        "topics": ("paystream.cli.serve", None),
        "worker": ("paystream.cli.serve", None),
    }

    #: Each command's line in `paystream --help` (its help's first sentence, which Click
    #: shortens to the terminal): asking each command for it imported every module, about
    #: 1.5 s of each `--help`. tests/test_cli_commands_by_module.py holds them to the help.
    summaries: dict[str, str] = {
        "audit": "Check the ledger's hash-chained audit log.",
        "bench": "Send N commands across T tenants through a real worker and report "
        "commands/s and command→outcome latency (full speed and at --rate), next to a raw "
        "aiokafka passthrough (full speed, and at --rate: the broker's latency floor) and a "
        "bare Faust forwarder measured on the same broker; then the same worker fed over "
        "its HTTP ingress (full speed, and at --rate with each request waiting for its "
        "outcome).",
        "config": "Print every environment variable paystream reads, with its current value.",
        "demo": "Drive demo payment flows through a running fleet (the configured broker): "
        "what `paystream dev --demo` does on the embedded stack, for docker-compose and "
        "staging.",
        "dev": "Start the embedded stack, a worker and its dashboard, and the HTTP command "
        "ingress (`paystream ingress`); Ctrl-C stops everything.",
        "dlq": "Inspect and re-drive dead-lettered and parked commands.",
        "docs": "Write the interface documents (AsyncAPI, OpenAPI) generated from the code.",
        "doctor": "Check broker, database and cache, the broker behaviours Faust relies on, "
        "and that the workers commit past the commands waiting (if any wait).",
        "erase": "Crypto-shred a customer in the ledger: delete their data key and clear "
        "their personal data, with an audit entry.",
        "ingress": "Run the HTTP command ingress (POST /v1/commands) in a process of its "
        "own: it produces commands for the workers and answers waiting senders, off their "
        "cores.",
        "keys": "Master-key rotation for tenant secrets and the ledger's data keys.",
        "ledger": "Ledger maintenance.",
        "migrate": "Upgrade (or downgrade) the ledger schema as the owner in DATABASE_URL.",
        "send": "Send a command (such as payment.create) and print its outcome.",
        "simulator": "The simulator gateway's provider side (development and demos).",
        "tenants": "Manage the tenant registry.",
        "topics": "Create paystream's topics (idempotent).",
        "worker": "Run a worker (a Faust worker with paystream's agents, tables and web views).",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.defined_in})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's list of commands, a command not loaded stood in for by its summary."""
        listed = [
            (name, self.commands.get(name) or click.Command(name, help=self.summaries[name]))
            for name in self.list_commands(ctx)
        ]
        shown = [(name, command) for name, command in listed if not command.hidden]
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in shown])

    def invoke(self, ctx: click.Context) -> Any:
        """The command, a stop signal it does not answer itself (one while it loads or
        prepares, before its own handling) said so and exit 130, not Click's "Aborted!"
        and exit 1, which `send` gives a broker down and `doctor` a failed check."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.defined_in.get(cmd_name)
        if cmd_name not in self.commands and where is not None:
            module = importlib.import_module(where[0])
            if where[1] is not None:
                self.add_command(getattr(module, where[1]), cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=_CommandsByModule)
def cli() -> None:
    """paystream: multi-tenant payments on Kafka streams."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    """A stop signal handled as Ctrl-C: the ``finally`` blocks stop what was started.

    Not raised inside logging's own code or a finalizer: there it is "ignored" (printed,
    not propagated), and inside logging's after-fork hook (the embedded servers are
    started as subprocesses) it left logging's lock held, so the next log line hung the
    process for good (a SIGTERM during `doctor`'s stack start, seen in CI). The signal is
    sent again a moment later, to land elsewhere; and it is remembered, for a stop
    swallowed anyhow. Nor inside subprocess.Popen (an embedded server being started):
    raised after the fork, it left the server running with nobody holding it, never
    stopped, writing into the directory the stop removed (h72b)."""
    _STOP_REQUESTED.set()
    if _not_to_be_raised_in(frame):
        again = threading.Timer(0.05, _send_again, (signum,))
        again.daemon = True  # (the process's exit does not wait on it)
        again.start()
        return
    _STOP_DELIVERED.set()
    raise KeyboardInterrupt


def _not_to_be_raised_in(frame: Any) -> bool:
    """Whether ``frame`` or a caller of it is logging's code, a finalizer's (a nested
    call of it too: the interrupt reaches it, and is printed there, not propagated) or
    a child process's start."""
    import subprocess

    while frame is not None:
        code = frame.f_code
        if (
            code.co_name == "__del__"
            or frame.f_globals.get("__name__") == "logging"
            or code is subprocess.Popen.__init__.__code__
        ):
            return True
        frame = frame.f_back
    return False


def _send_again(signum: int) -> None:
    """The stop signal again, unless the stop was acted on meanwhile: sent during the
    exit that followed, it raised a KeyboardInterrupt there, and the process died of it
    (exit -2, not 1: seen in CI, `doctor` stopped while its stack started)."""
    if not _STOP_DELIVERED.is_set():
        os.kill(os.getpid(), signum)


_STOP_REQUESTED = threading.Event()
# A KeyboardInterrupt was raised for a stop (here, or where _STOP_REQUESTED is checked).
_STOP_DELIVERED = threading.Event()
