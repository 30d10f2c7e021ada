"""`paystream tenants`: the tenant registry, limits and API keys."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from paystream.settings import Settings
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant

if TYPE_CHECKING:
    pass
from paystream.cli.base import _run, _settings, cli

# Secrets and connected accounts end up in provider HTTP headers, which refuse these.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
            "--daily-transfer-volume",
            multiple=True,
            help="what transfer.create may move out per UTC day, CURRENCY=MINOR_UNITS (repeatable)",
        ),
        click.option(
            "--daily-payout-volume",
            multiple=True,
            help="what payout.create may pay out per UTC day, CURRENCY=MINOR_UNITS (repeatable)",
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
    transfers = args.get("daily_transfer_volume") or ()
    payouts = args.get("daily_payout_volume") or ()
    only_listed = bool(args.get("only_listed_currencies"))
    if not (rate or burst or caps or daily or transfers or payouts or only_listed):
        return None
    try:
        return TenantLimits(
            commands_per_second=rate,
            burst=burst,
            max_payment_amount=_per_currency(caps, "--max-payment"),
            daily_payment_volume=_per_currency(daily, "--daily-volume"),
            daily_transfer_volume=_per_currency(transfers, "--daily-transfer-volume"),
            daily_payout_volume=_per_currency(payouts, "--daily-payout-volume"),
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


_A_KEY = re.compile(r"psk_[0-9a-f]{8}_")


def _refuse_keys(*given: tuple[str, str | None]) -> None:
    """A key given where an id, a label or a command goes (``Bearer psk_…``, with a blank,
    as TENANT_ID): refused, never repeated (a label is written to the registry topic)."""
    from paystream.tenancy.ingress_keys import key_id_of

    for hint, text in given:
        found = None if text is None else _A_KEY.search(text)
        if text is not None and found is not None:
            said = key_id_of(text[found.start() :].strip())
            hint_id = f": its id is {said}" if said else ""
            raise click.BadParameter(
                f"that is a key{hint_id} (do not paste keys where they are kept or logged)",
                param_hint=hint,
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
    _refuse_keys(("TENANT_ID", tenant_id), ("--name", name))
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
            # (Not repeated: a provider key pasted here would land in the terminal's and
            # a CI log's scrollback, as --secret never lets one; review h67u.)
            raise click.BadParameter(
                "an option is not key=value (not repeated here: it may be a pasted secret)",
                param_hint="--option",
            )
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
        _refuse_unknown_option_names(tenant.gateway, tenant.gateway_options)
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
    if _webhooks_left_out(tenant.gateway, tenant.gateway_options, set(tenant.secrets)):
        click.echo(
            f"warning: the tenant has a {_WEBHOOK_SECRETS[tenant.gateway]} but its "
            "capabilities leave out webhooks: its provider webhooks will all be passed over "
            "(paystream tags none of its payments or refunds with its own ids); add webhooks "
            "to --option capabilities",
            err=True,
        )
    if (
        tenant.gateway == "square"
        and "webhook_signature_key" in tenant.secrets
        and not tenant.gateway_options.get("webhook_url")
        and settings.webhook_base_url is None
    ):
        click.echo(
            "warning: the tenant has a webhook_signature_key but no notification URL to "
            "check Square's signatures over: give --option webhook_url=<the subscription's "
            "notification URL, exactly> or set PAYSTREAM_WEBHOOK_BASE_URL on the workers "
            "(until then its webhooks are answered 503, and Square sends them again for 72 "
            "hours)",
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


# The secret that signs each provider's webhooks (web/webhooks.py).
_WEBHOOK_SECRETS = {
    "stripe": "webhook_secret",
    "square": "webhook_signature_key",
    "paddle": "webhook_secret_key",
}


def _webhooks_left_out(provider: str, options: dict[str, Any], secrets: set[str]) -> bool:
    """A Stripe (or Square, or Paddle) tenant given a webhook signing secret whose capabilities,
    narrowed, leave out webhooks: without the capability no payment or refund carries
    paystream's ids, so each webhook is taken for one paystream did not make (review
    h60a)."""
    names = options.get("capabilities")
    return (
        provider in _WEBHOOK_SECRETS
        and _WEBHOOK_SECRETS[provider] in secrets
        and isinstance(names, list)
        and "webhooks" not in names
    )


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

    # (Else "unknown tenant '4242…'" / "unknown tenant 'psk_…'".)
    _refuse_keys(("TENANT_ID", tenant_id))
    _refuse_card_numbers(("TENANT_ID", tenant_id))

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
    _refuse_keys(("TENANT_ID", tenant_id))
    _refuse_card_numbers(("TENANT_ID", tenant_id))
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


# ---- send -------------------------------------------------------------------------


def _refuse_unknown_option_names(provider: str, options: dict[str, Any]) -> None:
    """Options the provider does not take, counted and not named: an option's name may be
    a provider key pasted in the wrong place (review h67u)."""
    if provider == "stripe":
        from paystream.gateways.stripe.gateway import STRIPE_OPTIONS

        known: frozenset[str] = STRIPE_OPTIONS
    elif provider == "square":
        from paystream.gateways.square.gateway import SQUARE_OPTIONS

        known = SQUARE_OPTIONS
    elif provider == "paddle":
        from paystream.gateways.paddle.gateway import PADDLE_OPTIONS

        known = PADDLE_OPTIONS
    elif provider == "simulator":
        from paystream.gateways.simulator.options import SimulatorOptions

        known = frozenset(SimulatorOptions.model_fields)
    else:
        return
    if unknown := [name for name in options if name not in known]:
        raise click.BadParameter(
            f"{len(unknown)} option name(s) the {provider} gateway does not take (not "
            f"repeated here: one may be a pasted secret); valid: {', '.join(sorted(known))}",
            param_hint="--option",
        )


# (Registered on `tenants` as it loads: its own module.)
from paystream.cli import api_keys as _api_keys  # noqa: E402,F401
