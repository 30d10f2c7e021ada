"""`paystream tenants api-key`: a tenant's keys for the HTTP command ingress.

Keys may expire and may be restricted to some commands (tenancy/ingress_keys.py). `roll`
is how a key is replaced without an outage: a successor made with the same label,
commands and lifetime, and the old key given a grace period (24 h unless told) to be
moved off, in one registry write; a key rolled once is not rolled again (``rolled_to``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import click

from paystream.cli.base import _run, _settings
from paystream.cli.tenants import _refuse_card_numbers, _refuse_keys, _registered, tenants
from paystream.tenancy.models import Tenant

__all__ = ["tenants_api_key"]

_DURATION = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str, option: str, *, zero: bool = False) -> timedelta:
    """``90d``, ``24h``, ``30m``, ``45s`` or, where ``zero`` is allowed, ``0`` (now)."""
    found = None if text.strip() == "0" else _DURATION.fullmatch(text.strip())
    took = (
        timedelta(0)
        if found is None
        else timedelta(seconds=int(found.group(1)) * _UNIT_SECONDS[found.group(2)])
    )
    if (found is None and text.strip() != "0") or (not took and not zero):
        raise click.BadParameter(
            f"{text!r}: expected a number and a unit, as 90d, 24h, 30m or 45s"
            + (" (or 0)" if zero else " (more than 0: a key expired when made sends nothing)"),
            param_hint=option,
        )
    return took


def _key_id(text: str, name: str = "KEY_ID") -> str:
    """A key id as given; the key itself given instead is refused without repeating it."""
    _refuse_keys((name, text))
    return text


def _expiry(expires_in: str | None, expires_at: str | None, now: datetime) -> datetime | None:
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        return now + _duration(expires_in, "--expires-in")
    if expires_at is None:
        return None
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        # (A time without its offset would mean the operator's zone or the workers'.)
        raise click.BadParameter(
            f"{expires_at!r}: expected an ISO 8601 time with its offset, as 2027-01-31T00:00:00Z",
            param_hint="--expires-at",
        )
    if when <= now:
        raise click.BadParameter("is not in the future", param_hint="--expires-at")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # (9999-12-31T23:00:00-05:00: past year 9999 in UTC)
        raise click.BadParameter(
            f"{expires_at!r}: out of range", param_hint="--expires-at"
        ) from None


def _commands(allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    """The commands ``--allow`` names (None: every one), each a known command's name or
    a known domain's ``<domain>.*``."""
    from paystream.streams.commands import COMMANDS

    if not allowed:
        return None
    named = {part.strip() for item in allowed for part in item.split(",") if part.strip()}
    domains = {name.partition(".")[0] for name in COMMANDS}
    for name in sorted(named):
        domain, _, verb = name.partition(".")
        if name not in COMMANDS and not (verb == "*" and domain in domains):
            raise click.BadParameter(
                f"{name[:80]!r} names no command; known: {', '.join(sorted(COMMANDS))}, "
                f"or a domain's every command: {', '.join(f'{d}.*' for d in sorted(domains))}",
                param_hint="--allow",
            )
    if not named:
        raise click.BadParameter("names no command", param_hint="--allow")
    return tuple(sorted(named))


def _with_room(known: Tenant) -> None:
    from paystream.tenancy.ingress_keys import MAX_KEYS_PER_TENANT

    if len(known.ingress_keys) >= MAX_KEYS_PER_TENANT:
        now = datetime.now(UTC)
        expired = sorted(k for k, v in known.ingress_keys.items() if v.expired(now))
        hint = f" (expired: {', '.join(expired)})" if expired else ""
        raise click.ClickException(
            f"{known.tenant_id} holds {len(known.ingress_keys)} keys, the most it may: "
            f"revoke one first{hint}"
        )


def _announce(tenant_id: str, key_id: str, text: str, what: str) -> None:
    click.echo(
        f"key {key_id} of {tenant_id} {what}; it is shown only now (keep it in your secret "
        f"store): send it as `Authorization: Bearer <key>`",
        err=True,
    )
    click.echo(text)


@tenants.group("api-key")
def tenants_api_key() -> None:
    """A tenant's keys for the HTTP command ingress (`POST /v1/commands`)."""


_EXPIRES_IN = click.option(
    "--expires-in", default=None, metavar="DURATION", help="expire after 90d, 24h, 30m, 45s"
)


@tenants_api_key.command("create")
@click.argument("tenant_id")
@click.option("--label", default="", help="what the key is for (shown by `list`)")
@_EXPIRES_IN
@click.option(
    "--expires-at",
    default=None,
    metavar="TIME",
    help="expire at an ISO 8601 time with its offset (2027-01-31T00:00:00Z)",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="COMMANDS",
    help="only these commands (payment.create, refund.*; repeatable or comma-separated) "
    "[every command]",
)
def tenants_api_key_create(
    tenant_id: str,
    label: str,
    expires_in: str | None,
    expires_at: str | None,
    allow: tuple[str, ...],
) -> None:
    """Make a key; it is printed once (stdout) and kept only as its digest."""
    from pydantic import ValidationError

    from paystream.tenancy.ingress_keys import new_key
    from paystream.tenancy.registry import put_tenant_unless_changed

    # (TENANT_ID: refused so by _registered, as by every `tenants` command.)
    _refuse_keys(("--label", label), *(("--allow", a) for a in allow))
    _refuse_card_numbers(("--label", label))
    now = datetime.now(UTC)
    expiry, commands = _expiry(expires_in, expires_at, now), _commands(allow)
    settings = _settings()
    known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    _with_room(known)
    try:
        key_id, text, kept = new_key(
            label, now, known.ingress_keys.keys(), expires_at=expiry, commands=commands
        )
        keys = {**known.ingress_keys, key_id: kept}
        updated = Tenant.model_validate({**known.model_dump(), "ingress_keys": keys})
    except ValidationError as exc:
        raise click.BadParameter(
            "; ".join(str(e["msg"]) for e in exc.errors(include_url=False)), param_hint="--label"
        ) from exc
    _run(put_tenant_unless_changed(settings, known, updated))
    _announce(tenant_id, key_id, text, "made")


@tenants_api_key.command("roll")
@click.argument("tenant_id")
@click.argument("key_id")
@click.option(
    "--expire-old-in",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="the old key's grace to move services off it (0: refused at once, for a leaked key)",
)
@_EXPIRES_IN
def tenants_api_key_roll(
    tenant_id: str, key_id: str, expire_old_in: str, expires_in: str | None
) -> None:
    """Replace a key: a successor with its label and commands (and, unless --expires-in,
    its lifetime) is printed once (stdout), and the old key expires after a grace period
    (sooner if it was to expire sooner)."""
    from paystream.tenancy.ingress_keys import new_key
    from paystream.tenancy.registry import put_tenant_unless_changed

    _refuse_card_numbers(("KEY_ID", key_id))
    now = datetime.now(UTC)
    key_id = _key_id(key_id)
    old_until = now + _duration(expire_old_in, "--expire-old-in", zero=True)
    expiry = _expiry(expires_in, None, now)
    settings = _settings()
    known = _registered(settings, tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    old = known.ingress_keys.get(key_id)
    if old is None:
        raise click.ClickException(f"{tenant_id} has no key {key_id!r} (see `api-key list`)")
    if old.rolled_to is not None:
        # (Its expiry is its grace now, no lifetime to give a successor.)
        raise click.ClickException(_rolled_already(tenant_id, key_id, known, now))
    _with_room(known)
    if expiry is None and old.expires_at is not None:
        # An expiring key's successor expires as long after it is made (a 90-day key's
        # too): the rotation policy is not dropped by the rotation (review h71b).
        made = old.created_at if old.created_at.tzinfo else old.created_at.replace(tzinfo=UTC)
        lifetime = old.expires_at - made
        if lifetime > timedelta(0):
            expiry = now + lifetime
    new_id, text, kept = new_key(
        old.label, now, known.ingress_keys.keys(), expires_at=expiry, commands=old.commands
    )
    if old.expires_at is not None:
        old_until = min(old_until, old.expires_at)
    keys = {
        **known.ingress_keys,
        key_id: old.model_copy(update={"expires_at": old_until, "rolled_to": new_id}),
        new_id: kept,
    }
    _run(
        put_tenant_unless_changed(settings, known, known.model_copy(update={"ingress_keys": keys}))
    )
    lasts = "never expires" if expiry is None else f"expires at {expiry.isoformat()}"
    old_ends = "expires" if old_until > now else "expired"
    _announce(
        tenant_id,
        new_id,
        text,
        f"made ({lasts}) to follow {key_id}, which {old_ends} at {old_until.isoformat()}",
    )


def _rolled_already(tenant_id: str, key_id: str, known: Tenant, now: datetime) -> str:
    """Why a rolled key is not rolled again, and what to do instead: roll its successor
    if held; else `create` with what it had (a bare `create` widens a restricted key); to
    end the old key's grace now (it leaked), `revoke` it: rolling the successor with 0
    ends the successor, not it."""
    import shlex

    old = known.ingress_keys[key_id]
    said = f"key {key_id} of {tenant_id} was rolled already, to {old.rolled_to}"
    if old.rolled_to in known.ingress_keys:
        said += ": roll that one"
    else:
        made = f"paystream tenants api-key create {tenant_id}"
        if old.label:
            made += f" --label {shlex.quote(old.label)}"
        if old.commands is not None:
            made += f" --allow {','.join(old.commands)}"
        said += f", since revoked: make its replacement with `{made}` (and --expires-in)"
    if not old.expired(now):
        said += (
            f"; to end {key_id} now (a leak), `paystream tenants api-key revoke {tenant_id} "
            f"{key_id}`"
        )
    return said


@tenants_api_key.command("list")
@click.argument("tenant_id")
def tenants_api_key_list(tenant_id: str) -> None:
    """A tenant's keys, one JSON object a line: id, label, when made, when it expires
    (and whether it has), what it may send, and the key it was rolled to (never the
    key)."""
    known = _registered(_settings(), tenant_id)
    if known is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    now = datetime.now(UTC)
    for key_id, kept in sorted(known.ingress_keys.items(), key=lambda kv: kv[1].created_at):
        shown = {
            "id": key_id,
            "label": kept.label,
            "created_at": kept.created_at.isoformat(),
            "expires_at": None if kept.expires_at is None else kept.expires_at.isoformat(),
            "expired": kept.expired(now),
            "commands": None if kept.commands is None else list(kept.commands),
            "rolled_to": kept.rolled_to,
        }
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

    _refuse_card_numbers(("TENANT_ID", tenant_id), ("KEY_ID", key_id))
    key_id = _key_id(key_id)
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
