"""`paystream keys`: rotating the master key that seals tenants' secrets."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import click

from paystream.cli.base import _run, _settings, _stoppable, cli

T = TypeVar("T")


@cli.group()
def keys() -> None:
    """Master-key rotation for tenant secrets and the ledger's data keys."""


# Each tenant's secrets, and each tenant's ledger keys, are re-wrapped whole or not at
# all (one registry write, one transaction), so a rotation stopped anywhere is finished
# by running it again.
ROTATION_INTERRUPTED = (
    "each tenant's keys were re-wrapped whole or not at all; keep the retired key and run "
    "`paystream keys rotate` again"
)


def _run_stoppably(coro: Coroutine[Any, Any, T], *, note_waiting: bool = True) -> T:
    """``coro`` run as the CLI runs it; a stop signal (Ctrl-C, SIGTERM, SIGHUP) says what
    it left and exits 130 (SIGTERM killed it without a word: review h61d)."""
    try:
        return cast(T, _run(_stoppable(coro), note_waiting=note_waiting))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {ROTATION_INTERRUPTED}", err=True)
        sys.exit(130)


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
    _run_stoppably(reseal_registry_secrets(settings, keyring, report, progress), note_waiting=False)
    password = settings.db_app_password.get_secret_value() if settings.db_app_password else ""
    if settings.database_url and password:
        url = app_database_url(asyncpg_url(settings.database_url), password)
        tenant_ids = sorted({*report.tenants, *report.unreadable, *extra_tenants})
        click.echo(f"  re-wrapping ledger data keys of {len(tenant_ids)} tenant(s)…", err=True)
        report.ledger_keys_rewrapped = run_db(
            rewrap_ledger_keys(url, keyring, tenant_ids, report.ledger_unopenable),
            interrupted=ROTATION_INTERRUPTED,
        )
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
    for problem in report.ledger_unopenable:
        click.echo(
            f"error: ledger data key {problem}: left under its old key. Wrapped under a "
            "master key missing from PAYSTREAM_RETIRED_MASTER_KEYS: add it and run again; "
            "damaged: what it sealed is lost (`paystream audit verify --tenant` names the "
            "customer)",
            err=True,
        )
    if settings.database_url and keyring.retired:
        # As the owner: the application role may not write these (a leaked old key would
        # otherwise record its own retirement far ahead).
        owner_url = asyncpg_url(settings.database_url)
        given = sorted({*report.tenants, *report.unreadable, *extra_tenants})
        recorded = run_db(
            record_audit_retirements(owner_url, keyring, given), interrupted=ROTATION_INTERRUPTED
        )
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
    left = _run_stoppably(secrets_left(settings, current))
    if left:
        click.echo(f"error: secrets still under a retired key: {', '.join(left)}", err=True)
    ledger_left: dict[str, int] = {}
    if settings.database_url:
        # Checked even when nothing could be re-wrapped (no app password): as the owner.
        ledger_left = run_db(
            ledger_keys_left(asyncpg_url(settings.database_url), current),
            interrupted=ROTATION_INTERRUPTED,
        )
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
    if left or ledger_left or report.unopenable or report.ledger_unopenable:
        click.echo("keep the retired key until `paystream keys rotate` exits 0", err=True)
        sys.exit(1)
