"""Ledger commands for the ``paystream`` CLI: ``migrate``, ``audit verify``, ``erase`` and
``ledger backfill``, ``ledger tax-report``.

Attach with ``cli.add_command(migrate_command)`` and ``cli.add_command(audit_group)``.
Migrations run as the schema owner (``DATABASE_URL``); the audit check runs as the
``paystream_app`` role, because :func:`verify_audit` relies on row-level security to
see exactly one tenant's chain (a superuser would read every tenant's rows).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

from paystream.errors import PaystreamError
from paystream.settings import Settings, load_settings
from paystream.tenancy.crypto import MasterKeyring

__all__ = ["audit_group", "erase_command", "ledger_group", "migrate_command", "run_db"]

# Problems listed per tenant by `audit verify` (the count says how many there are).
PROBLEMS_SHOWN = 20
# `audit verify`: a tenant named has no audit entries at all; `ledger tax-report`: the
# ledger holds nothing of the tenant named
EXIT_NO_ENTRIES = 3

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc


# What an interrupted command left, when its caller does not say (each database command
# runs in transactions: what was not committed was rolled back).
INTERRUPTED = "what was committed stays, the rest was rolled back; run it again"


def run_db(coro: Coroutine[Any, Any, T], *, interrupted: str = INTERRUPTED) -> T:
    """Run a database coroutine for a CLI command: failures as one clean line; a stop
    signal (Ctrl-C, SIGTERM, SIGHUP) as ``interrupted: ...`` and exit 130 (it was Click's
    "Aborted!" and exit 1, which `audit verify` uses for tampering, or death by SIGTERM
    without a word: review h61d)."""
    from paystream.cli.base import _stoppable

    try:
        return asyncio.run(_stoppable(coro))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {interrupted}", err=True)
        sys.exit(130)
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # connection refused and friends: say so without a traceback
        raise click.ClickException(f"cannot reach the database: {exc}") from exc
    except DBAPIError as exc:  # bad password, missing database, ...: first line only
        lines = str(exc.orig or exc).strip().splitlines()
        raise click.ClickException(f"database error: {lines[0] if lines else exc}") from exc
    except CommandError as exc:  # alembic: an unknown revision, ...
        raise click.ClickException(f"migration: {exc}") from exc


def _app_password(settings: Settings) -> str | None:
    secret = settings.db_app_password
    value = secret.get_secret_value() if secret is not None else ""
    return value or None  # an empty variable means unset, not an empty password


async def _rls_enforced(engine: Any, settings: Settings) -> None:
    """``assert_rls_enforced`` for a command that reads or writes as the paystream_app
    role: without PAYSTREAM_DB_APP_PASSWORD the CLI connected as DATABASE_URL's role
    instead, and the refusal says which variable picks the role (review h74r: it named
    only the role, and the user connects nowhere by hand)."""
    from paystream.ledger import RlsNotEnforcedError, assert_rls_enforced

    try:
        await assert_rls_enforced(engine)
    except RlsNotEnforcedError as exc:
        if _app_password(settings) is not None:
            raise
        raise RlsNotEnforcedError(
            f"{exc} (set PAYSTREAM_DB_APP_PASSWORD: the CLI then connects as "
            "paystream_app, to DATABASE_URL's host and database)"
        ) from exc


def _owner_url(settings: Settings) -> str:
    from paystream.ledger.sink import asyncpg_url

    if settings.database_url is None:
        raise click.ClickException("DATABASE_URL is not set (the schema owner's URL)")
    return asyncpg_url(settings.database_url)


@click.command("migrate")
@click.option("--revision", default="head", show_default=True, help="upgrade to this revision")
@click.option(
    "--downgrade",
    "downgrade_to",
    metavar="REV",
    default=None,
    help="downgrade to REV instead (`base` removes every ledger object but the role); "
    "asks first, unless --yes",
)
@click.option("--yes", is_flag=True, help="downgrade without asking (scripts)")
def migrate_command(revision: str, downgrade_to: str | None, yes: bool) -> None:
    """Upgrade (or downgrade) the ledger schema as the owner in DATABASE_URL.

    With PAYSTREAM_DB_APP_PASSWORD set, the paystream_app role is given that password
    so workers can log in with it.
    """
    from paystream.ledger import migrate

    settings = _settings()
    url = _owner_url(settings)
    if downgrade_to is not None and not yes:
        # (One mistyped command dropped the whole ledger, audit log and data keys with it,
        # which leaves every encrypted value unreadable; review finding.)
        what = (
            "every ledger table, the audit log and the data keys (every encrypted value "
            "becomes unreadable)"
            if downgrade_to == "base"
            else "what the revisions after it added, with their data"
        )
        click.confirm(
            f"Downgrading the ledger to {downgrade_to} drops {what}. Continue?", abort=True
        )

    async def go() -> str | None:
        if downgrade_to is not None:
            await migrate.downgrade(url, downgrade_to)
        else:
            await migrate.upgrade(url, revision, app_password=_app_password(settings))
        return await migrate.current(url)

    current = run_db(
        go(),
        interrupted="a migration runs in one transaction: it was rolled back; run "
        "`paystream migrate` again",
    )
    if downgrade_to is None and _app_password(settings) is None:
        click.echo(
            "note: PAYSTREAM_DB_APP_PASSWORD is unset, so paystream_app's password was not set",
            err=True,
        )
    click.echo(f"ledger schema at revision {current or 'base'}")


@click.group("audit")
def audit_group() -> None:
    """Check the ledger's hash-chained audit log."""


@audit_group.command("verify")
@click.option("--tenant", "tenants", multiple=True, required=True, help="tenant id (repeatable)")
def audit_verify(tenants: tuple[str, ...]) -> None:
    """Recompute each of the named tenants' audit chains; exit 1 if any row is missing or
    altered, else 3 if a tenant has no entries at all (a mistyped id, or nothing stored
    yet: nothing was verified).

    The chain is keyed under the master key: PAYSTREAM_MASTER_KEY (and, for rows written
    before a rotation, the old key in PAYSTREAM_RETIRED_MASTER_KEYS) must be set."""
    from paystream.ledger import create_engine, verify_audit
    from paystream.ledger.audit import VerifyResult

    settings = _settings()
    keyring, url = _audit_access(settings)

    async def go() -> list[VerifyResult]:
        engine = create_engine(url, hide_parameters=True)
        try:
            # Without RLS the unfiltered chain query would mix tenants and report garbage.
            await _rls_enforced(engine, settings)
            return [await verify_audit(engine, t, keyring) for t in tenants]
        finally:
            await engine.dispose()

    results = run_db(go(), interrupted="nothing was changed (verify only reads); run it again")
    failed = empty = 0
    for res in results:
        if res.ok and not res.checked:
            empty += 1  # a mistyped id must not read as a verified chain
            click.echo(
                f"{res.tenant_id}: no audit entries recorded for this tenant id (check the id)"
            )
        elif res.ok:
            click.echo(f"{res.tenant_id}: ok, {res.checked} audit entries verified")
        else:
            failed += 1
            click.echo(
                f"{res.tenant_id}: FAILED, {res.checked} entries checked, "
                f"{len(res.problems)} problem(s)"
            )
            for problem in res.problems[:PROBLEMS_SHOWN]:
                click.echo(f"  - {problem}")
            if len(res.problems) > PROBLEMS_SHOWN:  # (a wrong key fails every row alike)
                click.echo(f"  … and {len(res.problems) - PROBLEMS_SHOWN} more")
    click.echo(
        f"{len(results) - failed - empty}/{len(results)} tenant chain(s) intact"
        + (f", {empty} with no entries" if empty else "")
    )
    if failed:
        raise SystemExit(1)
    if empty:
        raise SystemExit(EXIT_NO_ENTRIES)  # a script must not read it as verified


@click.command("erase")
@click.option("--tenant", required=True, help="tenant id")
@click.option("--customer", required=True, help="customer id")
@click.option("--yes", is_flag=True, help="do not ask first")
@click.option(
    "--ahead",
    is_flag=True,
    help="erase a customer the ledger holds no row of yet (their events not stored yet): "
    "a tombstone, so that their personal data is never stored",
)
def erase_command(tenant: str, customer: str, yes: bool, ahead: bool) -> None:
    """Crypto-shred a customer in the ledger: delete their data key and clear their
    personal data, with an audit entry. For an erasure the database refused (the sink
    logs it and counts it in paystream_ledger_erasures_refused_total): the pipeline
    answered `customer.erased`, and refuses the command a second time. Cannot be undone.

    Needs PAYSTREAM_MASTER_KEY (the audit chain is keyed under it); runs as the
    paystream_app role, confined to the tenant."""
    from sqlalchemy import select

    from paystream.ledger import create_engine, tenant_session
    from paystream.ledger.models import Customer
    from paystream.ledger.privacy import erase_customer

    settings = _settings()
    keyring, url = _audit_access(settings)
    if not yes:
        click.confirm(
            f"Delete the data key of customer {customer!r} of tenant {tenant!r}? Their "
            "personal data in the ledger cannot be read again",
            abort=True,
        )

    async def go() -> bool:
        engine = create_engine(url, hide_parameters=True)
        try:
            await _rls_enforced(engine, settings)  # as the sink erases: confined to the tenant
            async with tenant_session(engine, tenant) as session:
                known = await session.scalar(
                    select(Customer.customer_id).where(Customer.customer_id == customer)
                )
            if known is None and not ahead:
                # A mistyped id: erasing would leave a tombstone under it for good (and a
                # tenant's chain under a mistyped tenant), and the customer meant as is.
                raise click.ClickException(
                    f"the ledger holds no customer {customer!r} of tenant {tenant!r} "
                    "(check both ids; if their events are not stored yet, --ahead erases "
                    "ahead of them): nothing erased"
                )
            return await erase_customer(
                engine, tenant, customer, keyring=keyring, actor="operator:cli"
            )
        finally:
            await engine.dispose()

    erased = run_db(go(), interrupted="an erasure is one transaction: not committed; run it again")
    if erased:
        click.echo(f"customer {customer} of tenant {tenant}: erased (data key deleted)")
    else:
        click.echo(f"customer {customer} of tenant {tenant}: already erased (nothing to do)")


@click.group("ledger")
def ledger_group() -> None:
    """Ledger maintenance."""


@ledger_group.command("backfill")
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="tenant id (repeatable); default: every tenant with events listed",
)
@click.option(
    "--unlisted",
    is_flag=True,
    help="also every stored subscription, invoice, payout, tax rate, tax calculation "
    "and transfer event the migrations did not list "
    "(what a previous release's worker stored after it, in a rolling upgrade); you vouch "
    "for them: `audit verify` names them first. And the tax columns (migration 0015) such "
    "a worker left empty in payments, invoices and subscriptions, from the event of the "
    "row's version, as 0015 filled the rows before it. Needs --tenant",
)
def ledger_backfill(tenants: tuple[str, ...], unlisted: bool) -> None:
    """Build the subscription and invoice rows of events stored before migration 0013
    gave them tables, the payout rows of events stored before 0014 gave them one, and the
    tax rate and tax calculation rows of events stored before 0015 did, and the transfer
    rows of events stored before 0019 did (the migrations listed them), each version with
    its audit entry, as the sink writes them.
    Idempotent: run it again and nothing changes. Only the events the migrations listed
    are applied.

    With --unlisted, after the events, the tax columns a worker of the release before
    0015 left empty (a rolling upgrade) are filled as migration 0015 filled the rows
    before it: from the event of the row's version, where it carries them, only where
    empty; as the owner (DATABASE_URL), with the forward-only trigger set aside and the
    tables locked against writes for that transaction; no audit entry of their own, as
    the migration's (`audit verify` names the rows still lacking them).

    Needs PAYSTREAM_MASTER_KEY (the audit chain is keyed under it); reads which tenants
    have events listed as the owner (DATABASE_URL), writes as the paystream_app role,
    one transaction per tenant."""
    from sqlalchemy import select

    from paystream.ledger import create_engine
    from paystream.ledger.errors import ChainWipedError
    from paystream.ledger.models import EntityBackfill
    from paystream.ledger.tax_fill import fill_tax_columns
    from paystream.ledger.writer import WriteResult, backfill_entities

    if unlisted and not tenants:
        raise click.UsageError("--unlisted applies to the tenants named by --tenant only")
    settings = _settings()
    keyring, url = _audit_access(settings)
    owner_url = _owner_url(settings)

    filled: dict[str, dict[str, int]] = {}

    async def go() -> list[tuple[str, WriteResult | ChainWipedError]]:
        names = list(tenants)
        if not names:
            owner = create_engine(owner_url, hide_parameters=True)
            try:
                async with owner.connect() as conn:
                    names = list(
                        await conn.scalars(
                            select(EntityBackfill.tenant_id)
                            .distinct()
                            .order_by(EntityBackfill.tenant_id)
                        )
                    )
            finally:
                await owner.dispose()
        engine = create_engine(url, hide_parameters=True)
        try:
            await _rls_enforced(engine, settings)
            done: list[tuple[str, WriteResult | ChainWipedError]] = []
            for t in names:
                try:
                    done.append(
                        (t, await backfill_entities(engine, t, keyring=keyring, unlisted=unlisted))
                    )
                except ChainWipedError as exc:  # (the other tenants are backfilled still)
                    done.append((t, exc))
        finally:
            await engine.dispose()
        if unlisted:  # (a refused tenant's rows are left as they are)
            owner = create_engine(owner_url, hide_parameters=True)
            try:
                for t, result in done:
                    if not isinstance(result, ChainWipedError):
                        filled[t] = await fill_tax_columns(owner, t)
            finally:
                await owner.dispose()
        return done

    done = run_db(go(), interrupted="each tenant is one transaction: run it again")
    refused = 0
    for tenant, result in done:
        if isinstance(result, ChainWipedError):
            refused += 1
            click.echo(f"{tenant}: refused: {result}", err=True)
            continue
        click.echo(
            f"{tenant}: {result.duplicates} event(s) read, {result.entities_applied} "
            f"row(s) moved forward, {result.entities_stale} already there"
            + (
                ", tax columns filled: "
                + ", ".join(f"{n} {table}" for table, n in filled[tenant].items())
                if any(filled.get(tenant, {}).values())
                else ""
            )
        )
    if not done:
        click.echo("no tenant has events waiting for a backfill")
    if refused:
        raise click.ClickException(f"{refused} tenant(s) refused: their audit chain was deleted")


def _when(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time", param_hint=option
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@ledger_group.command("tax-report")
@click.option("--tenant", required=True, help="tenant id")
@click.option("--from", "start", required=True, help="period start, ISO date or time (UTC)")
@click.option("--to", "end", required=True, help="period end, exclusive, ISO date or time (UTC)")
def ledger_tax_report(tenant: str, start: str, end: str) -> None:
    """Tax the tenant collected in [--from, --to), as JSON: per currency, the tax of its
    taxed payments (less what was refunded, proportionally) and of its subscriptions'
    paid invoices, and the same per tax rate (README "Tax": what is counted).

    Reads the ledger's rows as the paystream_app role under the tenant's row-level
    security (DATABASE_URL and PAYSTREAM_DB_APP_PASSWORD); needs no master key. Exit 3
    for a tenant the ledger holds nothing of (a mistyped id: no report is printed)."""
    import json

    from paystream.ledger import create_engine
    from paystream.ledger.errors import TenantNotInLedgerError
    from paystream.ledger.migrate import app_database_url
    from paystream.ledger.tax_report import tax_report

    begins, ends = _when(start, "--from"), _when(end, "--to")
    if ends <= begins:
        raise click.BadParameter("must be after --from", param_hint="--to")
    settings = _settings()
    url = _owner_url(settings)
    if (password := _app_password(settings)) is not None:
        url = app_database_url(url, password)

    async def go() -> dict[str, Any]:
        engine = create_engine(url, hide_parameters=True)
        try:
            await _rls_enforced(engine, settings)
            return await tax_report(engine, tenant, begins, ends)
        finally:
            await engine.dispose()

    try:
        report = run_db(go())
    except click.ClickException as exc:
        if isinstance(exc.__cause__, TenantNotInLedgerError):
            # As `audit verify`'s: a script must not read a mistyped id as a tenant that
            # collected no tax (review h74r: `"currencies": {}`, exit 0).
            click.echo(f"Error: {exc.message}", err=True)
            raise SystemExit(EXIT_NO_ENTRIES) from exc
        raise
    click.echo(json.dumps(report, indent=2))


def _audit_access(settings: Settings) -> tuple[MasterKeyring, str]:
    """The keyring the chain is keyed under and the app role's URL (RLS must hold)."""
    from paystream.ledger.migrate import app_database_url
    from paystream.tenancy.crypto import keyring_from_settings

    try:
        keyring = keyring_from_settings(settings)
    except PaystreamError as exc:
        raise click.ClickException(f"{exc}: the audit chain is keyed under it") from exc
    url = _owner_url(settings)
    if (password := _app_password(settings)) is not None:
        url = app_database_url(url, password)
    return keyring, url
