"""Gateway registry: provider name → factory. Unknown names fail loudly, listing valid ones."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paystream.errors import ConfigurationError
from paystream.gateways.base import GatewayContext, PaymentGateway

if TYPE_CHECKING:
    from paystream.settings import Settings

__all__ = [
    "GATEWAYS",
    "KNOWN_SECRETS",
    "REQUIRED_SECRETS",
    "GatewayDeps",
    "GatewayFactory",
    "build_gateway",
    "validate_options",
]


@dataclass(frozen=True)
class GatewayDeps:
    """Process-wide resources a gateway may use (shared, never per-tenant state)."""

    settings: Settings
    redis: Any = None  # redis.asyncio.Redis; the simulator keeps its provider-side state there


GatewayFactory = Callable[[GatewayContext, GatewayDeps], PaymentGateway]


def _simulator(ctx: GatewayContext, deps: GatewayDeps) -> PaymentGateway:
    from paystream.gateways.simulator import SimulatorGateway

    return SimulatorGateway.from_context(ctx, deps)


def _stripe(ctx: GatewayContext, deps: GatewayDeps) -> PaymentGateway:
    from paystream.gateways.stripe import StripeGateway

    return StripeGateway.from_context(ctx, deps)


def _square(ctx: GatewayContext, deps: GatewayDeps) -> PaymentGateway:
    from paystream.gateways.square import SquareGateway

    return SquareGateway.from_context(ctx, deps)


def _paddle(ctx: GatewayContext, deps: GatewayDeps) -> PaymentGateway:
    from paystream.gateways.paddle import PaddleGateway

    return PaddleGateway.from_context(ctx, deps)


# Imports are deferred inside each factory so a worker only loads the SDKs it uses.
GATEWAYS: dict[str, GatewayFactory] = {
    "simulator": _simulator,
    "stripe": _stripe,
    "square": _square,
    "paddle": _paddle,
}


def build_gateway(ctx: GatewayContext, deps: GatewayDeps) -> PaymentGateway:
    """Build the gateway named by ``ctx.provider`` for one tenant."""
    try:
        factory = GATEWAYS[ctx.provider]
    except KeyError:
        raise ConfigurationError(
            f"unknown gateway provider {ctx.provider!r}; valid: {', '.join(sorted(GATEWAYS))}"
        ) from None
    return factory(ctx, deps)


# The secrets each provider needs (by name) before its first call can succeed.
REQUIRED_SECRETS: dict[str, frozenset[str]] = {
    "simulator": frozenset(),
    "stripe": frozenset({"api_key"}),
    # A seller's access token (its own personal token, or one granted by OAuth).
    "square": frozenset({"access_token"}),
    # A seller's API key (pdl_live_apikey_... or pdl_sdbx_apikey_...).
    "paddle": frozenset({"api_key"}),
}
# Every secret each provider reads: the only names `tenants add --secret` takes (a name
# is stored in plain text; a key typed where its name goes must not be).
KNOWN_SECRETS: dict[str, frozenset[str]] = {
    **REQUIRED_SECRETS,
    # The signing secret of the tenant's webhook endpoint (web/webhooks.py).
    "stripe": REQUIRED_SECRETS["stripe"] | {"webhook_secret"},
    # The signature key of the tenant's webhook subscription (web/webhooks.py); with it the
    # tenant's gateway has the webhooks capability.
    "square": REQUIRED_SECRETS["square"] | {"webhook_signature_key"},
    # The secret key of the tenant's notification destination (web/webhooks.py); with it
    # the tenant's gateway has the webhooks capability.
    "paddle": REQUIRED_SECRETS["paddle"] | {"webhook_secret_key"},
}


# A Stripe account id; and what a provider secret key starts with (pasted into the wrong
# option it would be stored in clear, and shown by `tenants list`).
_STRIPE_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,64}")
# Square's access tokens (production and sandbox alike) start EAAA; Paddle's API keys
# pdl_live_apikey_ or pdl_sdbx_apikey_, its notification secret keys pdl_ntfset_.
_SECRET_KEY_PREFIXES = ("sk_", "rk_", "whsec_", "EAAA", "pdl_")


def validate_connected_account(provider: str, account: str) -> None:
    """ConfigurationError for a connected account the provider would refuse, or one that
    is a secret key given in its place (the message never repeats the value)."""
    if account.startswith(_SECRET_KEY_PREFIXES):
        raise ConfigurationError(
            "the connected account looks like a secret key: give keys with --secret, "
            "which seals them"
        )
    if provider == "stripe" and not _STRIPE_ACCOUNT.fullmatch(account):
        raise ConfigurationError("a Stripe connected account is an account id (acct_...)")
    if provider == "square":
        # A seller is reached with its own access token (OAuth gives one per seller):
        # Square has no header acting for another account.
        raise ConfigurationError(
            "a Square tenant takes no connected account: give the seller's access token "
            "with --secret access_token"
        )
    if provider == "paddle":
        # Paddle has no header acting for another seller: each has its own API key.
        raise ConfigurationError(
            "a Paddle tenant takes no connected account: give the seller's API key with "
            "--secret api_key"
        )


def validate_options(provider: str, options: Mapping[str, Any]) -> None:
    """ConfigurationError for gateway options the provider would refuse at its first call,
    so an operator learns it when registering the tenant, not from rejected payments."""
    if provider == "simulator":
        from paystream.gateways.simulator.options import SimulatorOptions

        SimulatorOptions.parse(options)
    elif provider == "stripe":
        from paystream.gateways.stripe.gateway import validate_options as stripe_options

        stripe_options(options)
    elif provider == "square":
        from paystream.gateways.square.gateway import validate_options as square_options

        square_options(options)
    elif provider == "paddle":
        from paystream.gateways.paddle.gateway import validate_options as paddle_options

        paddle_options(options)
