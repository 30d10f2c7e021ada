"""What a provider's gateway reads from a tenant's record, checked alike for every
provider: its options (none the gateway does not know), the capabilities it narrows
the gateway's to, and the credential it cannot call the provider without."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paystream.errors import ConfigurationError
from paystream.gateways.base import Capability, GatewayContext
from paystream.gateways.errors import ErrorCode, GatewayError

__all__ = ["narrowed_capabilities", "refuse_unknown_options", "required_credential"]


def refuse_unknown_options(options: Mapping[str, Any], known: frozenset[str], name: str) -> None:
    """Refuse options the ``name`` gateway does not read (a misspelt one is a mistake)."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown {name} option(s): {', '.join(unknown)}; valid: " + ", ".join(sorted(known))
        )


def narrowed_capabilities(
    names: Any,
    offered: frozenset[Capability],
    name: str,
) -> frozenset[Capability]:
    """The capabilities the ``capabilities`` option ``names`` (a list of their names)
    narrows the ``name`` gateway's ``offered`` ones to; refused when it is not a list,
    names one unknown or one not offered."""
    if not isinstance(names, list | tuple):  # a number or a string is not iterated
        raise ConfigurationError(f"the {name} capabilities option must be a list of names")
    try:
        narrowed = frozenset(Capability(n) for n in names)
    except ValueError:
        # The unknown name is never repeated, nor chained: a credential pasted into the
        # option by mistake would be echoed to the operator's terminal and logs.
        raise ConfigurationError(
            f"the {name} capabilities option names an unknown capability; valid: "
            + ", ".join(sorted(c.value for c in offered))
        ) from None
    if not narrowed <= offered:
        extra = ", ".join(sorted(narrowed - offered))
        raise ConfigurationError(f"the {name} gateway cannot offer capabilities: {extra}")
    return narrowed


def required_credential(ctx: GatewayContext, secret: str, provider: str, label: str) -> str:
    """The tenant's ``secret`` credential for ``provider`` (``label``: its name in
    prose, "Stripe"), refused as a non-retryable authentication failure when it has
    none: no call is made without it."""
    value = ctx.credentials.get(secret)
    if value is None or not value.get_secret_value():
        raise GatewayError(
            ErrorCode.AUTHENTICATION_FAILED,
            f"tenant {ctx.tenant_id!r} has no {label} {secret} credential configured",
            provider=provider,
            retryable=False,
        )
    return value.get_secret_value()
