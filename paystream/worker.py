"""Registers every unit on the Faust app (explicit, instead of autodiscovery) and runs it."""

from __future__ import annotations

import asyncio
import dis
import functools
import gc
import inspect
import logging
import os
import sys
from typing import Any, cast

import faust
import mode.loop
import stripe
import stripe._util as stripe_util  # STRIPE_LOG is read there at import
from faust.tables.manager import TableManager

# Importing these modules registers their agents, tables and pages on `app`.
from paystream import log_limits, tracing
from paystream.agents import commands as _commands
from paystream.agents import ledger_sink as _ledger_sink  # noqa: F401
from paystream.agents import parked_backlog as _parked_backlog  # noqa: F401
from paystream.agents import tenants as _tenants  # noqa: F401
from paystream.app import app, settings
from paystream.broker_wait import waited_for_brokers
from paystream.errors import ConfigurationError
from paystream.gc_pacing import full_collections
from paystream.settings import Settings, is_loopback, unknown_variables, weak_token_warnings
from paystream.streams import fast_delivery
from paystream.tables import stale_stores
from paystream.web import bad_requests
from paystream.web import ingress_route as _ingress_route  # noqa: F401
from paystream.web import views as _views  # noqa: F401
from paystream.web import webhooks as _webhooks  # noqa: F401
from paystream.web.route_errors import name_the_server

__all__ = ["main"]

log = logging.getLogger(__name__)


@app.task
async def freeze_startup_objects() -> None:
    """Move everything allocated during start-up out of the garbage collector's reach.

    Full collections walking Faust's and the SDKs' long-lived objects were the pauses
    behind the latency tail (a 69 ms gen-2 collection lined up with the p99 cluster).
    With ``gc_pacing`` later full collections wait for a quiet moment too.
    """
    if settings.gc_pacing:
        full_collections.install()
    else:
        gc.collect()
        gc.freeze()
    log.info(
        "event loop: %s; paced full collections: %s",
        type(asyncio.get_running_loop()).__module__,
        settings.gc_pacing,
    )


@app.task
async def speed_up_record_delivery() -> None:
    if settings.fast_delivery:
        consumer = cast(Any, app.consumer)
        fast_delivery.install(consumer, consumer.suspend_flow, backlog=_commands.has_backlog)


@app.timer(interval=1.0)
async def collect_garbage_when_quiet() -> None:
    full_collections.maybe_collect()


@app.timer(interval=1.0)
async def write_held_back_counts() -> None:
    """Each throttled warning's count of the lines it held back, once its minute has
    ended: also when its cause stopped (a hang parked 282 commands; the log had no count)."""
    log_limits.flush_all()


@app.timer(interval=stale_stores.TOUCH_INTERVAL_SECONDS)
async def mark_table_stores_followed() -> None:
    stale_stores.touch_followed(table.data for table in app.tables.values())


def quiet_libraries(log_level: str) -> None:
    """Keep the libraries that see customer data from logging it.

    aiokafka logs record values at DEBUG: never below INFO. The Stripe SDK logs every
    request at INFO (two lines a provider call) and, on an API error, Stripe's message,
    which echoes what was sent (an e-mail address, a metadata value): never below
    WARNING, and never to stderr by STRIPE_LOG. paystream reports provider errors
    itself, by code.
    """
    level = logging.getLevelName(log_level.upper().replace("WARN", "WARNING"))
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, level))
    logging.getLogger("stripe").setLevel(max(logging.WARNING, level))
    # httpx (the Square SDK's transport) logs a line per request at INFO, and httpcore
    # each connection step at DEBUG: a provider call's URL names its customer's ids.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    # The Paddle SDK's signature check logs each verification at INFO, and requests'
    # urllib3 each connection at DEBUG (URLs naming customers' ids).
    for name in ("paddle_billing", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    # STRIPE_LOG=debug|info makes the SDK print every request and response body to
    # stderr, past the logging levels above: customer names, e-mail addresses, metadata.
    if stripe.log or stripe_util.STRIPE_LOG:
        log.warning("STRIPE_LOG ignored: the Stripe SDK would print customer data to stderr")
    stripe.log = None
    stripe_util.STRIPE_LOG = None
    # aiohttp quotes a refused request's header (the token cookie among them).
    bad_requests.install()


def keep_log_levels() -> None:
    """Keep the root logger at the configured level.

    At WARN and above, Faust's worker sets the root logger to DEBUG for its terminal
    progress spinner (a handler that draws a frame per log record, on a terminal only):
    every debug call of every library then built a record only to drop it, two per
    changelog record in a table recovery (100,000 records: 13.6 s of CPU against 11.3).
    Without the spinner, Faust leaves the level as configured.
    """
    cast(Any, faust.Worker)._disable_spinner_if_level_below_WARN = _no_spinner


def _no_spinner(worker: faust.Worker, level: int) -> None:
    worker.spinner = None


#: Longest mode's worker waits, once its services are stopped, for the tasks it has just
#: cancelled to finish before it closes the event loop (mode waits this long every time).
EXIT_GRACE_SECONDS = 1.0
_WITHOUT_PAUSE = "_paystream_without_pause"


def skip_fixed_pauses() -> None:
    """Start and stop without the fixed one-second pauses of Faust and mode.

    Faust's table manager sleeps a second before it registers the tables' changelogs
    (room for tables made while the agents start: paystream makes every table at import,
    and one made later would still raise "Too late to add tables"), so every worker's
    first join waited a second for nothing. mode's worker, once every service is stopped
    and the tasks left are cancelled, sleeps a second more before it closes the loop: a
    stopped worker exited after 1.2 s, 1 s of it that sleep. Now the tables register at
    once, and the exit waits only while a cancelled task is still finishing (at most
    ``EXIT_GRACE_SECONDS``, as before).
    """
    changed = shadowed_code_changes()
    if changed:
        raise RuntimeError(
            "paystream.worker.skip_fixed_pauses shadows code of faust-streaming 0.15.3 and "
            "mode-streaming 0.7.1 that has changed (review it before upgrading): "
            + "; ".join(changed)
        )
    manager = cast(Any, TableManager)
    if not getattr(manager.on_start, _WITHOUT_PAUSE, False):
        manager.on_start = _tables_registered_at_once(manager.on_start)
    cast(Any, faust.Worker)._sentinel_task = _until_cancelled_tasks_finish


def shadowed_code_changes() -> list[str]:
    """How the code ``skip_fixed_pauses`` shadows differs from what it was written for
    (faust-streaming 0.15.3's ``TableManager.on_start``, mode-streaming 0.7.1's
    ``Worker._shutdown_loop`` and ``Worker._sentinel_task``): nothing, or what changed.

    Shadowing a changed method could skip more than a pause (a sleep in a loop that waits
    for something), so a change stops the worker at start instead of passing unseen.
    """
    on_start = inspect.unwrap(TableManager.on_start)
    worker = cast(Any, mode.Worker)
    changes = []
    if _loads(on_start).count("sleep") != 1 or 1.0 not in _loads(on_start):
        changes.append("TableManager.on_start no longer calls self.sleep(1.0) once")
    if "_sentinel_task" not in _loads(worker._shutdown_loop):
        changes.append("mode's Worker._shutdown_loop no longer runs _sentinel_task")
    if [v for v in _loads(worker._sentinel_task) if v not in (None, "asyncio")] != ["sleep", 1.0]:
        changes.append("mode's Worker._sentinel_task does more than asyncio.sleep(1.0)")
    if vars(faust.Worker).get("_sentinel_task") not in (
        None,
        worker._sentinel_task,
        _until_cancelled_tasks_finish,
    ):
        changes.append("Faust's Worker has a _sentinel_task of its own")
    return changes


def _loads(function: Any) -> list[Any]:
    """The names and constants ``function``'s bytecode loads, in order."""
    return [
        ins.argval
        for ins in dis.get_instructions(function)
        if ins.opname.startswith("LOAD_") and ins.opname != "LOAD_FAST"
    ]


def _tables_registered_at_once(on_start: Any) -> Any:
    @functools.wraps(on_start)
    async def registered_at_once(self: Any) -> None:
        # Faust's on_start opens with `await self.sleep(1.0)`: for its duration the
        # manager's sleep only yields (the manager calls it nowhere else).
        self.sleep = _yield
        try:
            await on_start(self)
        finally:
            del self.sleep

    setattr(registered_at_once, _WITHOUT_PAUSE, True)
    return registered_at_once


async def _yield(*_args: Any, **_kwargs: Any) -> None:
    await asyncio.sleep(0)


async def _until_cancelled_tasks_finish(_worker: Any) -> None:
    """mode's last wait before the loop closes: until no other task runs, at most
    ``EXIT_GRACE_SECONDS``."""
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    deadline = loop.time() + EXIT_GRACE_SECONDS
    while loop.time() < deadline and any(
        task is not this and not task.done() for task in asyncio.all_tasks()
    ):
        await asyncio.sleep(0.01)


def refuse_open_views(settings: Settings) -> None:
    """Refuse to serve the views beyond this machine without a token, unless told to
    (review finding: the image binds 0.0.0.0, and a `docker run -p` of it answered
    customers' emails and names to anyone who reached the port)."""
    if settings.web_token is not None or settings.web_open or is_loopback(settings.web_host):
        return
    raise ConfigurationError(
        f"PAYSTREAM_WEB_HOST={settings.web_host} would serve the dashboard, the /v1 views "
        "(customers' personal data) and /metrics to whoever reaches the port: set "
        "PAYSTREAM_WEB_TOKEN, bind PAYSTREAM_WEB_HOST=127.0.0.1, or set "
        "PAYSTREAM_WEB_OPEN=true when a closed network or an authenticating proxy is in front"
    )


def _last_option(args: list[str], name: str) -> str | None:
    """The value of the last ``name`` in ``args`` (``name value`` or ``name=value``)."""
    found = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(name + "="):
            found = arg.partition("=")[2]
    return found


def main(extra_args: list[str] | None = None) -> None:
    """Run a Faust worker for this process's settings (blocks until stopped)."""
    settings.require_broker()
    # (Faust's own --web-bind, given after ours, wins: checked as the bind it is.)
    bind = _last_option(extra_args or [], "--web-bind")
    refuse_open_views(settings if bind is None else settings.model_copy(update={"web_host": bind}))
    quiet_libraries(settings.log_level)
    keep_log_levels()
    log_limits.flush_at_exit()
    skip_fixed_pauses()
    for name in unknown_variables(os.environ):
        log.warning("%s is not a paystream setting (mistyped?): ignored", name)
    for warning in weak_token_warnings(settings):
        log.warning("%s", warning)
    # PAYSTREAM_OTEL_EXPORTER: the SDK, only when an exporter is set (before the agents'
    # processor is built, which takes the tracing set up here).
    tracing.configure(settings)
    name_the_server()
    # Faust refuses to start when its data directory does not exist yet.
    (settings.data_dir / "faust" / settings.app_id).mkdir(parents=True, exist_ok=True)
    # While no broker answers, wait (alive, not ready) rather than let Faust exit 1.
    if not waited_for_brokers(settings):
        return
    # Faust reads --loop at `import faust`, long done by now: install the policy directly.
    mode.loop.use(settings.event_loop)
    sys.argv = [
        "paystream-worker",
        "worker",
        "--loglevel",
        settings.log_level,
        # Bound to one address, advertised (Faust's canonical URL) at another: see
        # Settings.advertised_web_host.
        "--web-bind",
        settings.web_host,
        "--web-host",
        settings.advertised_url_host(),
        "--web-port",
        str(settings.web_port),
        *(extra_args or []),
    ]
    app.main()
