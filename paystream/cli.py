"""The `paystream` command: dev stack, worker, doctor, tenants, send, dlq, bench, migrate."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import click
import redis
import yarl
from aiokafka.errors import KafkaError

from paystream.errors import PaystreamError
from paystream.settings import Settings, load_settings, unknown_variables, url_without_password
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant

if TYPE_CHECKING:
    from cloudevents.core.v1.event import CloudEvent

    from paystream.client import OutcomeTimeout
    from paystream.demo import Authenticate
    from paystream.dlq import PaceWait

__all__ = ["main"]

DEMO_TENANTS = ("acme", "globex")
# Secrets and connected accounts end up in provider HTTP headers, which refuse these.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# One demo tenant has limits, so the dashboard shows them at work: the demo's larger USD
# payments go over the per-payment cap (quota_exceeded); the rate limit leaves room.
DEMO_LIMITS = {"globex": TenantLimits(commands_per_second=50, max_payment_amount={"USD": 40_000})}


class _Finite(click.FloatRange):
    """A float range that refuses nan (every comparison with it is false, so it passed
    any range: `send --timeout nan` timed out at once, blaming the broker) and inf."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _settings() -> Settings:
    try:
        settings = load_settings()
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    from paystream.streams import broker_compat

    broker_compat.apply(settings)
    return settings


def _run(coro: Any, *, own: tuple[type[PaystreamError], ...] = ()) -> Any:
    """Run ``coro``; paystream errors become click errors (exit 1), but for ``own``: the
    caller answers those itself (an exit status of their own)."""
    try:
        return asyncio.run(coro)
    except own:
        raise
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except (KafkaError, OSError) as exc:  # a broker or server down: say so, no traceback
        name, text = type(exc).__name__, str(exc)
        # (aiokafka's errors already start with their class name)
        said = text if text.startswith(name) else f"{name}: {text}"
        if "Unable to bootstrap" in text:
            # Refused, or taken and never answered (aiokafka's 40 s request timeout): its
            # own words list resolved addresses; say which setting names them.
            said = (
                f"no Kafka broker answered at {_brokers_named()} (KAFKA_BROKER_URL): is it "
                f"running, and is that its address? ({said})"
            )
        raise click.ClickException(said) from exc


def _brokers_named() -> str:
    try:
        return load_settings().require_broker().removeprefix("kafka://").replace(";", ", ")
    except PaystreamError:
        return "the configured address"


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _stoppable(coro: Coroutine[Any, Any, Any]) -> Any:
    """``coro``, a stop signal (Ctrl-C, SIGTERM) cancelling it, then raising
    KeyboardInterrupt. A KeyboardInterrupt raised by a signal handler lands wherever the
    loop happens to be, inside a Kafka client's own task too: that task died half-done,
    and the clean-up waited for its requests to time out (35 s after a stop during
    `doctor`'s group join). A cancel runs the ``finally`` blocks in order instead."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        if _STOP_REQUESTED.is_set():  # (see _raise_interrupt)
            coro.close()
            raise KeyboardInterrupt
        return await coro
    except asyncio.CancelledError:
        if stopped:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():  # (the loop's removal sets SIG_DFL)
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


@click.group()
def cli() -> None:
    """paystream: multi-tenant payments on Kafka streams."""


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
    """Check broker, database and cache, and the broker behaviours Faust relies on.

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
        try:
            results = _run(
                _stoppable(doctor_mod.run_checks(settings, deployment=True, progress=shown))
            )
        except KeyboardInterrupt:
            raise click.Abort from None
    else:
        import tempfile

        from paystream.devstack import DevStack

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
                    raise KeyboardInterrupt
                results = _run(
                    _stoppable(doctor_mod.run_checks(stack.stack_settings(), progress=shown))
                )
        except PaystreamError as exc:
            # Why, not a traceback; and the logs it names are kept, not deleted with it.
            keep = True
            raise click.ClickException(
                f"the embedded stack did not start: {exc}\n(its files are kept in {base})"
            ) from exc
        except KeyboardInterrupt:
            raise click.Abort from None
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


def _check_connected_account(provider: str, account: str | None) -> None:
    """A usage error for a connected account ``provider`` refuses ("": any provider's
    rules), never repeating it."""
    from paystream.errors import ConfigurationError
    from paystream.gateways.registry import validate_connected_account

    if account:
        try:
            validate_connected_account(provider, account)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--connected-account") from None


def _per_currency(values: tuple[str, ...], option: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        currency, sep, amount = item.partition("=")
        if not sep or not re.fullmatch(r"[0-9]{1,18}", amount.strip()):
            raise click.BadParameter(f"{item!r}: expected CURRENCY=MINOR_UNITS", param_hint=option)
        if currency.strip().upper() in {c.upper() for c in out}:
            raise click.BadParameter(f"{currency.strip()} is given twice", param_hint=option)
        out[currency.strip()] = int(amount)
    return out


def _limit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--rate-limit", type=click.IntRange(min=1), help="commands per second"),
        click.option("--burst", type=click.IntRange(min=1), help="bucket size [rate limit]"),
        click.option(
            "--max-payment",
            multiple=True,
            help="largest single payment, CURRENCY=MINOR_UNITS (repeatable)",
        ),
        click.option(
            "--daily-volume",
            multiple=True,
            help="payment volume per UTC day, CURRENCY=MINOR_UNITS (repeatable)",
        ),
        click.option(
            "--only-listed-currencies",
            is_flag=True,
            default=None,
            help="refuse payments in currencies no --max-payment or --daily-volume names",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _limits_from(args: dict[str, Any]) -> TenantLimits | None:
    """The limits the options give, or None when none was given."""
    from pydantic import ValidationError

    rate, burst = args.get("rate_limit"), args.get("burst")
    caps, daily = args.get("max_payment") or (), args.get("daily_volume") or ()
    only_listed = bool(args.get("only_listed_currencies"))
    if rate is None and burst is None and not caps and not daily and not only_listed:
        return None
    try:
        return TenantLimits(
            commands_per_second=rate,
            burst=burst,
            max_payment_amount=_per_currency(caps, "--max-payment"),
            daily_payment_volume=_per_currency(daily, "--daily-volume"),
            only_listed_currencies=only_listed,
        )
    except ValidationError as exc:
        raise click.BadParameter(
            "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        ) from exc


@cli.group()
def tenants() -> None:
    """Manage the tenant registry."""


def _refuse_card_numbers(*given: tuple[str, str | None]) -> None:
    """A tenant's id, name or key label is written to the registry topic, the ledger,
    metrics labels and logs: none may read as a card number (a tenant named so would
    also have every command refused as card data). The value is not repeated."""
    from paystream.streams.pan import contains_card_number

    for hint, text in given:
        if text is not None and contains_card_number(text):
            raise click.BadParameter(
                "reads as a card number: card data is not kept", param_hint=hint
            )


@tenants.command("add")
@click.argument("tenant_id")
@click.option("--name", default=None, help="display name [tenant id]")
@click.option("--gateway", default=None, help="provider [simulator for a new tenant]")
@click.option(
    "--option",
    "options",
    multiple=True,
    help="gateway option key=value (JSON values); given at all, they replace the tenant's options",
)
@click.option("--clear-options", is_flag=True, help="remove every gateway option")
@click.option(
    "--secret",
    "secret_names",
    multiple=True,
    help="secret NAME whose value is read from the environment variable PAYSTREAM_SECRET_<NAME> "
    "or prompted for (never pass secrets as arguments); replaces that secret only",
)
@click.option(
    "--connected-account",
    default=None,
    help='the provider account to act on (Stripe Connect `acct_...`); "" removes it',
)
@_limit_options
def tenants_add(
    tenant_id: str,
    name: str | None,
    gateway: str | None,
    options: tuple[str, ...],
    clear_options: bool,
    secret_names: tuple[str, ...],
    connected_account: str | None,
    **limit_args: Any,
) -> None:
    """Register a tenant, or change only the given fields of a registered one.

    An update keeps the status (see suspend/activate) and everything not given; a new
    --gateway starts its options, secrets and connected account afresh. Limits of a
    registered tenant are set with `tenants limits`.
    """
    settings = _settings()
    from pydantic import ValidationError

    from paystream.errors import ConfigurationError
    from paystream.gateways.registry import (
        GATEWAYS,
        KNOWN_SECRETS,
        REQUIRED_SECRETS,
        validate_options,
    )
    from paystream.streams.codec import valid_unicode
    from paystream.tenancy.models import TENANT_ID_PATTERN, TenantChanges, register_or_update
    from paystream.tenancy.registry import put_tenant_unless_changed

    if gateway is not None and gateway not in GATEWAYS:
        raise click.BadParameter(f"unknown gateway; valid: {', '.join(sorted(GATEWAYS))}")
    if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        raise click.BadParameter(f"tenant ids match {TENANT_ID_PATTERN}", param_hint="TENANT_ID")
    _refuse_card_numbers(("TENANT_ID", tenant_id), ("--name", name))
    if clear_options and options:
        raise click.UsageError("--clear-options removes every option: give no --option")
    for hint, text in (("--name", name), ("--connected-account", connected_account),
                       *(("--option", o) for o in options),
                       *(("--secret", n) for n in secret_names),
                       *(("--secret", os.environ.get(f"PAYSTREAM_SECRET_{n.upper()}"))
                         for n in secret_names)):  # fmt: skip
        if text is not None and not valid_unicode(text):
            # Written escaped, it would be refused by every reader: never changed again.
            raise click.BadParameter("not valid Unicode (an undecodable byte?)", param_hint=hint)
    for hint, text in (("--connected-account", connected_account),
                       *(("--secret", os.environ.get(f"PAYSTREAM_SECRET_{n.upper()}"))
                         for n in secret_names)):  # fmt: skip
        if text is not None and _CONTROL.search(text):
            # Sent in a provider's HTTP headers: the client refuses it, and every call
            # failed as the provider unreachable (retried, the circuit opened). The
            # message never shows the value.
            raise click.BadParameter(
                "holds a control character (a trailing newline from a file?)", param_hint=hint
            )
    # Before anything is asked of the broker, with what is known: the gateway given, or
    # any (the tenant's own is checked once its record is read).
    _check_connected_account(gateway or "", connected_account)
    _refuse_unknown_secret_names(
        secret_names,
        gateway,
        KNOWN_SECRETS.get(gateway, frozenset())
        if gateway is not None
        else frozenset().union(*KNOWN_SECRETS.values()),
    )
    opts = {}
    for item in options:
        key, eq, raw = item.partition("=")
        if not key or not eq:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--option")
        try:
            opts[key] = json.loads(raw)
        except json.JSONDecodeError:
            opts[key] = raw
        except (ValueError, RecursionError) as exc:  # 4,300+ digits; nesting too deep
            raise click.BadParameter(
                f"{key}: a JSON value that cannot be read ({type(exc).__name__})",
                param_hint="--option",
            ) from None
    limits = _limits_from(limit_args)  # before any prompt: a bad option fails first
    known = _registered(settings, tenant_id)
    if known is not None and limits is not None:
        raise click.UsageError(
            f"{tenant_id} is registered: set its limits with `paystream tenants limits`, "
            "which sets exactly the limits given"
        )
    sealed = {}
    provider = gateway or (known.gateway if known is not None else "simulator")
    _refuse_unknown_secret_names(secret_names, provider, KNOWN_SECRETS.get(provider, frozenset()))
    _check_connected_account(provider, connected_account)
    if secret_names:
        from paystream.tenancy.crypto import keyring_from_settings
        from paystream.tenancy.secrets import seal_secret

        try:
            keyring = keyring_from_settings(settings)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from exc
        for sname in (n.lower() for n in secret_names):
            variable = f"PAYSTREAM_SECRET_{sname.upper()}"
            value = os.environ.get(variable)
            if value:
                # Said, so that one left exported from another tenant's registration is
                # noticed (its value never is shown).
                click.echo(f"{sname}: read from {variable}", err=True)
            else:
                value = click.prompt(f"value of secret {sname}", hide_input=True)
            if not valid_unicode(value):  # (the message never shows the value)
                raise click.BadParameter(
                    f"the value of {sname} is not valid Unicode (an undecodable byte?)",
                    param_hint="--secret",
                )
            if _CONTROL.search(value):
                raise click.BadParameter(
                    f"the value of {sname} holds a control character",
                    param_hint="--secret",
                )
            sealed[sname] = seal_secret(keyring, tenant_id, sname, value)
    changes = TenantChanges(
        name=name,
        gateway=gateway,
        gateway_options=opts if options or clear_options else None,
        secrets=sealed,
        connected_account=connected_account,
        limits=limits,
    )
    try:
        tenant = register_or_update(tenant_id, known, changes)
    except ValidationError as exc:  # nothing written: every reader would refuse it
        raise click.UsageError(
            "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        ) from exc
    if known is None or options or gateway is not None:
        # Only options being written now: an old record's options do not block, say,
        # rotating its key.
        try:
            validate_options(tenant.gateway, tenant.gateway_options)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--option") from exc
    missing = REQUIRED_SECRETS.get(tenant.gateway, frozenset()) - set(tenant.secrets)
    if missing:
        click.echo(
            f"warning: a {tenant.gateway} tenant needs secret(s) {', '.join(sorted(missing))} "
            "(--secret); its commands are rejected with gateway_not_configured until then",
            err=True,
        )
    _run(put_tenant_unless_changed(settings, known, tenant))
    if known is not None:
        click.echo(f"updated {tenant_id} (status {tenant.status.value})", err=True)
    else:  # (stderr: stdout stays the record alone, for scripts)
        click.echo(
            f"registered {tenant_id} ({tenant.gateway} gateway, status "
            f"{tenant.status.value}); workers take its commands once they read the registry",
            err=True,
        )
    click.echo(json.dumps(tenant.redacted(), sort_keys=True))


@tenants.command("limits")
@click.argument("tenant_id")
@_limit_options
@click.option("--clear", is_flag=True, help="remove every limit")
def tenants_limits(tenant_id: str, clear: bool, **limit_args: Any) -> None:
    """Show a tenant's limits, or set them to exactly the options given."""
    settings = _settings()
    from paystream.tenancy.registry import put_tenant_unless_changed

    known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    limits = _limits_from(limit_args)
    if clear:
        if limits is not None:
            raise click.UsageError("--clear removes every limit: give no other limit option")
        limits = TenantLimits()
    if limits is not None:
        updated = known.model_copy(update={"limits": limits})
        _run(put_tenant_unless_changed(settings, known, updated))
        known = updated
    click.echo(json.dumps(known.limits.model_dump(mode="json"), sort_keys=True))


def _refuse_unknown_secret_names(
    names: tuple[str, ...], provider: str | None, known: frozenset[str]
) -> None:
    """A usage error for a --secret name the gateway does not read, without repeating it:
    names are kept in plain text, and this may be a key typed where its name goes
    (`--secret sk_live_...`)."""
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise click.BadParameter(
            f"{len(unknown)} secret name(s) the {provider or 'tenant'}'s gateway does not "
            f"read (not shown: a secret's value given as its name?); known names: "
            f"{', '.join(sorted(known)) or 'none'}. The value is read from "
            "PAYSTREAM_SECRET_<NAME> or prompted for",
            param_hint="--secret",
        )


def _registered(settings: Settings, tenant_id: str) -> Tenant | None:
    """The tenant's current record, to change; a clean error if it cannot be read."""
    from paystream.tenancy.registry import UnreadableTenant, registered_tenant

    try:
        return _run(registered_tenant(settings, tenant_id))
    except UnreadableTenant as exc:
        raise click.ClickException(str(exc)) from exc


@tenants.command("list")
def tenants_list() -> None:
    """List tenants (secrets shown by name only); one whose latest record this version
    cannot read is marked "unreadable" (its older record shown, if any)."""
    settings = _settings()
    from paystream.tenancy.registry import read_registry

    registry = _run(read_registry(settings))
    for tenant_id in sorted({*registry.tenants, *registry.unreadable}):
        tenant = registry.tenants.get(tenant_id)
        shown: dict[str, Any] = {"tenant_id": tenant_id} if tenant is None else tenant.redacted()
        if tenant_id in registry.unreadable:
            shown["unreadable"] = True  # (written by a newer version? upgrade to change it)
        click.echo(json.dumps(shown, sort_keys=True))


def _set_status(tenant_id: str, status: str) -> None:
    settings = _settings()
    from paystream.tenancy.models import TenantStatus
    from paystream.tenancy.registry import (
        UnreadableTenant,
        put_tenant_unless_changed,
        registered_tenant,
        suspend_unreadable,
    )

    if status == TenantStatus.SUSPENDED.value:
        # (A suspension must not wait for an upgrade: see suspend_unreadable.)
        try:
            known = _run(registered_tenant(settings, tenant_id), own=(UnreadableTenant,))
        except UnreadableTenant:
            how = _run(suspend_unreadable(settings, tenant_id))
            click.echo(f"{tenant_id}: suspended ({how})")
            return
    else:
        known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    updated = known.model_copy(update={"status": TenantStatus(status)})
    _run(put_tenant_unless_changed(settings, known, updated))
    click.echo(f"{tenant_id}: {status}")


@tenants.command("suspend")
@click.argument("tenant_id")
def tenants_suspend(tenant_id: str) -> None:
    """Suspend a tenant: its commands are rejected with `tenant_suspended`."""
    _set_status(tenant_id, "suspended")


@tenants.command("activate")
@click.argument("tenant_id")
def tenants_activate(tenant_id: str) -> None:
    """Re-activate a suspended tenant."""
    _set_status(tenant_id, "active")


@tenants.group("api-key")
def tenants_api_key() -> None:
    """A tenant's keys for the HTTP command ingress (`POST /v1/commands`)."""


@tenants_api_key.command("create")
@click.argument("tenant_id")
@click.option("--label", default="", help="what the key is for (shown by `list`)")
def tenants_api_key_create(tenant_id: str, label: str) -> None:
    """Make a key; it is printed once (stdout) and kept only as its digest."""
    from pydantic import ValidationError

    from paystream.tenancy.ingress_keys import MAX_KEYS_PER_TENANT, new_key
    from paystream.tenancy.registry import put_tenant_unless_changed

    _refuse_card_numbers(("--label", label))
    settings = _settings()
    known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    if len(known.ingress_keys) >= MAX_KEYS_PER_TENANT:
        raise click.ClickException(
            f"{tenant_id} holds {len(known.ingress_keys)} keys, the most it may: revoke one first"
        )
    try:
        key_id, text, kept = new_key(label, taken=known.ingress_keys.keys())
        keys = {**known.ingress_keys, key_id: kept}
        updated = Tenant.model_validate({**known.model_dump(), "ingress_keys": keys})
    except ValidationError as exc:
        raise click.BadParameter(
            "; ".join(str(e["msg"]) for e in exc.errors(include_url=False)), param_hint="--label"
        ) from exc
    _run(put_tenant_unless_changed(settings, known, updated))
    click.echo(
        f"key {key_id} of {tenant_id} made; it is shown only now (keep it in your secret "
        f"store): send it as `Authorization: Bearer <key>`",
        err=True,
    )
    click.echo(text)


@tenants_api_key.command("list")
@click.argument("tenant_id")
def tenants_api_key_list(tenant_id: str) -> None:
    """A tenant's keys: id, label and when made (never the key)."""
    known = _registered(_settings(), tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    for key_id, kept in sorted(known.ingress_keys.items(), key=lambda kv: kv[1].created_at):
        shown = {"id": key_id, "label": kept.label, "created_at": kept.created_at.isoformat()}
        click.echo(json.dumps(shown, sort_keys=True))
    if not known.ingress_keys:  # (stderr: stdout, one key a line, stays empty)
        click.echo(
            f"{tenant_id} has no keys: `paystream tenants api-key create {tenant_id}` makes one",
            err=True,
        )


@tenants_api_key.command("revoke")
@click.argument("tenant_id")
@click.argument("key_id")
def tenants_api_key_revoke(tenant_id: str, key_id: str) -> None:
    """Revoke a key: every worker refuses it once it reads the registry's new record."""
    from paystream.tenancy.registry import put_tenant_unless_changed

    settings = _settings()
    known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    if key_id not in known.ingress_keys:
        raise click.ClickException(f"{tenant_id} has no key {key_id!r} (see `api-key list`)")
    keys = {k: v for k, v in known.ingress_keys.items() if k != key_id}
    _run(
        put_tenant_unless_changed(settings, known, known.model_copy(update={"ingress_keys": keys}))
    )
    click.echo(f"key {key_id} of {tenant_id} revoked")


# ---- send -------------------------------------------------------------------------


@cli.command()
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
    help="seconds to wait for the outcome, connecting to the broker included",
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
            answer = _run(_send_over_http(http_url, cmd, timeout, settings))
        except KeyboardInterrupt:
            _said_interrupted(cmd.get_id())
        if isinstance(answer, OutcomeTimeout):
            sys.exit(EXIT_NO_OUTCOME)
        _note_other_cause(answer, cmd.get_id(), idempotency_key)
        click.echo(dumps(answer))
        return

    async def go() -> str | OutcomeTimeout:
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
        return dumps(outcome)

    try:
        said = _run(go())
    except KeyboardInterrupt:
        _said_interrupted(cmd.get_id())
    if isinstance(said, OutcomeTimeout):
        sys.exit(EXIT_NO_OUTCOME)
    click.echo(said)


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
            f"{command_type!r} is no paystream command; known: {', '.join(sorted(COMMANDS))}",
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


def _say_how_to_resend(command_id: str) -> None:
    # One hint for every way `send` ends without an outcome (Kafka or HTTP): the same id
    # is the safe retry, and a provider failure may have parked the command.
    click.echo(
        f"send it again with --id {command_id} (same data) to get its outcome without "
        "running it twice; if its provider failed, it may be parked: `paystream dlq list`",
        err=True,
    )


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
            raise click.ClickException(f"no answer from {shown}: {exc}") from None
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
# How long `send` waits, after giving up on an outcome, for the client to stop (its
# producer flushing a queued command to a stalled broker took 40 s past --timeout).
STOP_AFTER_TIMEOUT_SECONDS = 5.0


async def _stop_within(client: Any, seconds: float) -> None:
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


@cli.group()
def keys() -> None:
    """Master-key rotation for tenant secrets and the ledger's data keys."""


@keys.command("rotate")
@click.option(
    "--tenant",
    "extra_tenants",
    multiple=True,
    help="also re-wrap this tenant's ledger keys (one no longer registered; repeatable)",
)
@click.option(
    "--without-ledger",
    is_flag=True,
    help="this deployment has no ledger (DATABASE_URL unset): do not require its check",
)
def keys_rotate(extra_tenants: tuple[str, ...], without_ledger: bool) -> None:
    """Re-wrap, under PAYSTREAM_MASTER_KEY, every tenant secret and ledger data key still
    wrapped by a key in PAYSTREAM_RETIRED_MASTER_KEYS. Idempotent: run it again after an
    interruption. The ledger's keys are re-wrapped when DATABASE_URL and
    PAYSTREAM_DB_APP_PASSWORD are set; exits 0 only once nothing is left under a retired
    key, the ledger included (which needs DATABASE_URL, or --without-ledger)."""
    settings = _settings()
    if not settings.database_url and not without_ledger:
        # Exit 0 tells the operator the retired key may go: never without having looked
        # at the ledger's data keys, which only that key may still open.
        raise click.ClickException(
            "DATABASE_URL is not set, so the ledger's data keys cannot be checked; set it "
            "(and PAYSTREAM_DB_APP_PASSWORD to re-wrap them), or pass --without-ledger if "
            "this deployment has no ledger"
        )
    from paystream.errors import ConfigurationError
    from paystream.ledger.cli import run_db
    from paystream.ledger.migrate import app_database_url, is_app_url
    from paystream.ledger.migrate import current as schema_revision
    from paystream.ledger.migrate import head as schema_head
    from paystream.ledger.sink import asyncpg_url
    from paystream.tenancy.crypto import keyring_from_settings
    from paystream.tenancy.rotation import (
        RotationReport,
        ledger_keys_left,
        record_audit_retirements,
        reseal_registry_secrets,
        rewrap_ledger_keys,
        secrets_left,
    )

    if settings.database_url and is_app_url(settings.database_url):
        # A worker's environment (least privilege: paystream_app's own URL). Row-level
        # security would show that role no tenant's data keys, and "none left" would tell
        # the operator the retired key may go while the ledger still needs it.
        raise click.ClickException(
            "DATABASE_URL is paystream_app's (a worker's): key rotation reads every "
            "tenant's ledger keys and records retirements as the schema owner; run it "
            "with the owner's DATABASE_URL and PAYSTREAM_DB_APP_PASSWORD (as `paystream "
            "migrate` runs)"
        )
    try:
        keyring = keyring_from_settings(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    if settings.database_url:
        at, latest = run_db(schema_revision(asyncpg_url(settings.database_url))), schema_head()
        if at != latest:
            # Before 0003 an owner that is not a superuser sees no data keys (RLS): the
            # check would find nothing left and say the retired key may go.
            raise click.ClickException(
                f"the ledger schema is at {at or 'nothing'}, this version's is {latest}: "
                "migrate it (`paystream migrate`, with the version that matches) first"
            )
    report = RotationReport()

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            click.echo(f"  tenants checked: {done}/{total}", err=True)

    click.echo(f"current master key {keyring.current.key_id}; retired: "
               f"{', '.join(k.key_id for k in keyring.retired) or 'none'}", err=True)  # fmt: skip
    _run(reseal_registry_secrets(settings, keyring, report, progress))
    password = settings.db_app_password.get_secret_value() if settings.db_app_password else ""
    if settings.database_url and password:
        url = app_database_url(asyncpg_url(settings.database_url), password)
        tenant_ids = sorted({*report.tenants, *report.unreadable, *extra_tenants})
        click.echo(f"  re-wrapping ledger data keys of {len(tenant_ids)} tenant(s)…", err=True)
        report.ledger_keys_rewrapped = run_db(rewrap_ledger_keys(url, keyring, tenant_ids))
    for tenant_id in report.unreadable:
        click.echo(
            f"warning: {tenant_id}'s latest record cannot be read by this version: "
            "its secrets were not re-sealed (upgrade, then run again)",
            err=True,
        )
    for tenant_id in report.changed_meanwhile:
        click.echo(
            f"warning: {tenant_id} changed while this ran (another operator?): its secrets "
            "were not re-sealed; run it again",
            err=True,
        )
    for problem in report.unopenable:
        click.echo(
            f"error: {problem}: no key in the keyring opens it; it was left as it is. Is "
            "the master key that sealed it missing from PAYSTREAM_RETIRED_MASTER_KEYS? "
            "(If that key is lost, set the secret again with `paystream tenants add --secret`.)",
            err=True,
        )
    if settings.database_url and keyring.retired:
        # As the owner: the application role may not write these (a leaked old key would
        # otherwise record its own retirement far ahead).
        owner_url = asyncpg_url(settings.database_url)
        given = sorted({*report.tenants, *report.unreadable, *extra_tenants})
        recorded = run_db(record_audit_retirements(owner_url, keyring, given))
        click.echo(
            f"  audit chains: {recorded} retirement(s) of the old key recorded (rows under it "
            "past them are reported; `paystream audit verify` still needs the old key)",
            err=True,
        )
    ledger = (
        "ledger keys not re-wrapped (DATABASE_URL or PAYSTREAM_DB_APP_PASSWORD unset)"
        if report.ledger_keys_rewrapped is None
        else f"{report.ledger_keys_rewrapped} ledger data key(s) re-wrapped"
    )
    click.echo(
        f"{report.secrets_resealed} secret(s) of {report.tenants_changed} tenant(s) re-sealed; "
        f"{ledger}"
    )
    # Done only when nothing is left under a retired key: dropping it before would lose
    # those secrets (their tenants answered gateway_not_configured) and stall the ledger
    # sink on those tenants' data keys.
    current = keyring.current.key_id
    left = _run(secrets_left(settings, current))
    if left:
        click.echo(f"error: secrets still under a retired key: {', '.join(left)}", err=True)
    ledger_left: dict[str, int] = {}
    if settings.database_url:
        # Checked even when nothing could be re-wrapped (no app password): as the owner.
        ledger_left = run_db(ledger_keys_left(asyncpg_url(settings.database_url), current))
        if ledger_left:
            named = ", ".join(f"{t} ({n})" for t, n in ledger_left.items())
            hint = (
                "set PAYSTREAM_DB_APP_PASSWORD to re-wrap them"
                if report.ledger_keys_rewrapped is None
                else "a tenant no longer registered needs --tenant"
            )
            click.echo(
                f"error: ledger data keys still under a retired key: {named} ({hint})",
                err=True,
            )
    if left or ledger_left or report.unopenable:
        click.echo("keep the retired key until `paystream keys rotate` exits 0", err=True)
        sys.exit(1)


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
def dlq_list(which: str, limit: int, everything: bool) -> None:
    """List records waiting to be replayed: where, how old, whose, why."""
    settings = _settings()
    from paystream.dlq import age_text, list_parked_and_done
    from paystream.streams.pan import redact_card_numbers

    topics = _dlq_topics(settings, which)
    records, waiting, done = _run(
        list_parked_and_done(settings, topics, limit=limit, everything=everything)
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
            + (f" detail={redact_card_numbers(detail[:160])!r}" if detail else "")
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
                f" (too large to keep, not replayed; the original is at {rec.source or '?'})"
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
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


_PLAIN_NAME = re.compile(r"[a-z0-9_]{1,64}")


def _shown(text: str, limit: int = 200) -> str:
    """A producer's text, safe to print: controls escaped (``\\x1b``), cut to ``limit``,
    then card numbers redacted (a cut can make one of a longer run of digits)."""
    from paystream.streams.pan import redact_card_numbers

    cut = redact_card_numbers(text[:limit]) + ("..." if len(text) > limit else "")
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), cut)


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


def _record_printed(settings: Settings, as_of_ms: int, which: str) -> None:
    from paystream.held_back import HeldBackTimes

    assert settings.redis_url is not None
    times = HeldBackTimes(settings.redis_url, settings.commands_topic)
    try:
        times.record(as_of_ms, which)
    except redis.RedisError as exc:
        click.echo(
            f"warning: could not record this run's time in Redis ({exc}): a replay naming "
            "it will need --no-lease",
            err=True,
        )
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
@click.option("--topic", "which", type=click.Choice(["dlq", "retry", "all"]), default="all")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--dry-run", is_flag=True)
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
    "(the commands' first-attempt times go unsealed, as such workers read them)",
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
    from paystream.dlq import ConcurrentReplayError, replay, stale_after_ms

    if stale_checked_as_of is not None and checked_ms is not None:
        _check_printed(settings, stale_checked_as_of, checked_ms, redis_down_ok=no_lease)

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
        hours = stale_after_ms(settings) / 3_600_000
        # The topics this run read go with its time: a stale record on another topic
        # was shown to nobody (review finding: `--topic dlq`, then a replay of all).
        as_of = _iso_ms(result.started_ms) + ("" if which == "all" else f"@{which}")
        topic = "" if which == "all" else f"--topic {which} "
        if result.complete and settings.redis_url:
            _record_printed(settings, result.started_ms, which)
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
            if result.complete
            else "This run stopped at --limit: replay without it to see every stale "
            "record (and the time to name) before including any."
        )
        click.echo(
            f"held back {result.stale} record(s): parked over {hours:g} h ago, or after "
            "such a one on its partition. The provider may have forgotten the old ones' "
            f"idempotency keys, so a command it already applied would be applied again. {advice}",
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
            f"bytes (too large to keep): the original is at {rec.source or '?'}"
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
            "or too large for any setting (a replay would only dead-letter them again)"
        )
    if result.stale:
        sys.exit(EXIT_HELD_BACK)  # a scheduled replay must not pass for a clean one


# ---- dev ----------------------------------------------------------------------------


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


def _raise_interrupt(signum: int, frame: Any) -> None:
    """A stop signal handled as Ctrl-C: the ``finally`` blocks stop what was started.

    Not raised inside logging's own code or a finalizer: there it is "ignored" (printed,
    not propagated), and inside logging's after-fork hook (the embedded servers are
    started as subprocesses) it left logging's lock held, so the next log line hung the
    process for good (a SIGTERM during `doctor`'s stack start, seen in CI). The signal is
    sent again a moment later, to land elsewhere; and it is remembered, for a stop
    swallowed anyhow."""
    _STOP_REQUESTED.set()
    if frame is not None and (
        frame.f_code.co_name == "__del__" or frame.f_globals.get("__name__") == "logging"
    ):
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


_STOP_REQUESTED = threading.Event()


def _last_error(log_path: Path) -> str:
    """The last ERROR line of a log, to say why a process died (or nothing)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return f"\n  {errors[-1].strip()[:300]}" if errors else ""


# The demo's pace and length: `dev --demo` and `demo` take the same.
_demo_rate = click.option(
    "--rate",
    type=_Finite(min=0, min_open=True, max=1000),
    default=5.0,
    show_default=True,
    help="demo payment flows per second",
)
_duration = click.option(
    "--duration", type=_Finite(min=0), default=None, help="stop after N seconds (default: Ctrl-C)"
)


@cli.command()
@click.option("--demo/--no-demo", default=False, help="drive demo traffic through the worker")
@_demo_rate
@_duration
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),  # (0 would have meant the default port, silently)
    default=None,
    help="worker web port (default: settings)",
)
@click.option(
    "--ingress-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="command ingress port (default: PAYSTREAM_INGRESS_PORT)",
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
        }
        # For other shells: the stack's URLs, where the dev secrets are (never echoed), and
        # this environment's `paystream` first on the PATH (scripts/setup's .venv).
        exports = dict(stack.env())
        # A second worker started there must read outcomes as this one does (its agents,
        # its windows): the group's outcome readers must all run the same set.
        for name in ("PAYSTREAM_AGENTS", "PAYSTREAM_INSIGHTS_WINDOW_SECONDS"):
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
            # not undo an operator's suspension, limits or provider (it wrote them anew).
            await _register_demo_tenants(run_settings)

        asyncio.run(prepare())
        click.echo("starting worker (joins the group, recovers tables)…")
        worker = WorkerProcess(env, log_path, run_settings.web_port).start()
        worker.wait_ready(DEMO_TENANTS, partitions=run_settings.partitions, timeout=120)
        click.echo("starting the command ingress…")
        ingress = IngressProcess(env, ingress_log, run_settings.ingress_port).start()
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
        click.echo("Ctrl-C stops everything.")

        # A server of the stack that dies is said, as the worker's death is: the worker
        # only logged errors by the thousand, and `dev` ran on (review finding).
        def gone() -> str | None:
            if worker.exited():
                return f"worker exited; see {log_path}"
            if ingress.exited():
                return f"the command ingress exited; see {ingress_log}"
            return stack.died()

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


@cli.command("demo")
@_demo_rate
@_duration
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help=f"register the demo tenants ({', '.join(DEMO_TENANTS)}) on the simulator where they "
    "are not registered (a registered one is never rewritten)",
)
def demo_command(rate: float, duration: float | None, register: bool) -> None:
    """Drive demo payment flows through a running fleet (the configured broker): what
    `paystream dev --demo` does on the embedded stack, for docker-compose and staging."""
    settings = _settings()

    async def run() -> None:
        if register:
            absent = await _register_demo_tenants(settings)
            for tid in DEMO_TENANTS:
                said = "registered" if tid in absent else "already registered, left as it is"
                click.echo(f"{tid}: {said}")
        await _demo(settings, rate, duration)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        click.echo("\nstopped")
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc


async def _register_demo_tenants(settings: Settings) -> list[str]:
    """Register the demo tenants the registry does not hold; return those registered.

    Only where absent: a restart (compose restarts the demo; `dev` on an external
    broker) must not undo an operator's suspension, limits or provider; base None also
    loses to anyone registering the same tenant meanwhile."""
    from paystream.tenancy.registry import list_tenants, put_tenants_unless_changed

    known = await list_tenants(settings)
    absent = [t for t in DEMO_TENANTS if t not in known]
    await put_tenants_unless_changed(
        settings,
        [
            (
                None,
                Tenant(
                    tenant_id=tid, name=tid.title(), limits=DEMO_LIMITS.get(tid, TenantLimits())
                ),
            )
            for tid in absent
        ],
    )
    return absent


@contextlib.asynccontextmanager
async def _demo_customers(settings: Settings) -> AsyncIterator[Authenticate | None]:
    """The demo customers' 3-D Secure steps, taken at the simulator (its state is in
    Redis): None without Redis."""
    if not settings.redis_url:
        yield None
        return
    import redis.asyncio as aioredis

    from paystream.gateways.errors import GatewayError
    from paystream.gateways.simulator import SimulatorGateway

    redis_client = aioredis.from_url(settings.redis_url)

    async def authenticate(tenant: str, provider_payment_id: str, passed: bool) -> None:
        simulator = SimulatorGateway(
            redis_client, tenant, record_ttl_seconds=settings.idempotency_ttl_seconds
        )
        with contextlib.suppress(GatewayError):  # (a tenant an operator moved off it)
            await simulator.complete_authentication(provider_payment_id, succeed=passed)

    try:
        yield authenticate
    finally:
        await redis_client.aclose()


async def _demo(
    settings: Settings,
    rate: float,
    duration: float | None,
    gone: Callable[[], str | None] | None = None,
    *,
    http_base: str | None = None,
) -> None:
    """Demo flows until ``duration``; with ``gone``, stop when it says why (the worker or
    a server of the stack died); with ``http_base`` (a worker's URL) and an ingress
    token, a share of the flows go over the HTTP ingress. Ends with what came of them,
    after a stop (Ctrl-C) too."""
    from paystream.demo import demo_summary

    seen: Counter[str] = Counter()
    started = time.monotonic()
    try:
        await _demo_flows(settings, rate, duration, seen, gone, http_base)
    except (asyncio.CancelledError, click.ClickException):  # stopped, or the stack died
        click.echo("\n" + demo_summary("demo stopped", seen, time.monotonic() - started))
        raise
    click.echo(demo_summary("demo done", seen, time.monotonic() - started))


async def _demo_flows(
    settings: Settings,
    rate: float,
    duration: float | None,
    seen: Counter[str],
    gone: Callable[[], str | None] | None,
    http_base: str | None,
) -> None:
    from paystream.client import PaystreamClient
    from paystream.demo import demo_progress, run_demo
    from paystream.http_client import IngressClient

    why: str | None = None

    async def watch_worker() -> None:
        nonlocal why
        while gone is None or (why := gone()) is None:
            await asyncio.sleep(0.5)

    def progress(seen: Counter[str], elapsed: float) -> None:
        total = sum(seen.values())
        click.echo(
            f"[{elapsed:6.0f}s] outcomes {total} ({total / max(elapsed, 1e-9):.1f}/s): "
            f"{demo_progress(seen)}"
        )

    token = settings.ingress_token
    http = (
        IngressClient(http_base, token.get_secret_value())
        if http_base is not None and token is not None
        else None
    )
    async with (
        PaystreamClient(settings) as client,
        _demo_customers(settings) as authenticate,
        http or contextlib.nullcontext(),
    ):
        demo = asyncio.ensure_future(
            run_demo(
                client,
                list(DEMO_TENANTS),
                rate,
                duration=duration,
                on_progress=progress,
                authenticate=authenticate,
                http=http,
                seen=seen,
            )
        )
        watcher = asyncio.ensure_future(watch_worker())
        try:
            await asyncio.wait([demo, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Stopped (a signal cancels this task), or the worker died: the flows end
            # before the client closes under them (its consumer gone, each one erred).
            died = not demo.done()
            for task in (demo, watcher):
                task.cancel()
            await asyncio.gather(demo, watcher, return_exceptions=True)
        if died:  # the worker died: its commands would only time out
            raise click.ClickException(why or "the stack went down")
        demo.result()  # (its own failure, raised: not "demo done")


@cli.command()
@click.option("--check", is_flag=True, help="only compare: exit 1 if a document differs")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="where they are [default: docs, from the repository root]",
)
def docs(check: bool, directory: Path | None) -> None:
    """Write the interface documents (AsyncAPI, OpenAPI) generated from the code."""
    from paystream import docs as interface

    given = directory is not None
    if directory is None:
        directory = Path("docs")
        # Run elsewhere, it wrote a docs/ of its own into whatever directory the shell
        # was in (review finding): only the repository's is written unasked.
        if not check and not directory.is_dir():
            raise click.ClickException(
                "no docs/ here: run from the repository root, or give --dir to write them elsewhere"
            )
    if not check:
        for path in interface.write(directory):
            click.echo(f"wrote {path}")
    elif differ := interface.stale(directory):
        missing = [n for n in differ if not (directory / n).is_file()]
        if missing:  # (run outside the repository root, or never written)
            names = ", ".join(str(directory / n) for n in missing)
            # (Told to run `paystream docs` outside the root, a new user was refused.)
            write = f"`paystream docs --dir {shlex.quote(str(directory))}`" if given else None
            raise click.ClickException(
                f"{names} not found: run {write} to write them"
                if write
                else f"{names} not found: run this from the repository root, or give "
                "--dir (`paystream docs` writes them there)"
            )
        names = ", ".join(str(directory / n) for n in differ)
        raise click.ClickException(f"{names} differ from the code: run `paystream docs`")


def _attach_subcommands() -> None:
    from paystream.ledger.cli import audit_group, erase_command, migrate_command

    cli.add_command(migrate_command)
    cli.add_command(audit_group)
    cli.add_command(erase_command)
    from paystream.simulator_cli import simulator_group

    cli.add_command(simulator_group)
    try:
        from paystream.bench.cli import bench_command
    except ImportError:  # pragma: no cover - the bench ships with the package
        return
    cli.add_command(bench_command)


_attach_subcommands()


def main() -> None:
    cli(prog_name="paystream")
