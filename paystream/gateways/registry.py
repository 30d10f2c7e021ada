"""Gateway registry: provider name → factory. Unknown names fail loudly, listing valid ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paystream.errors import ConfigurationError
from paystream.gateways.base import GatewayContext, PaymentGateway

if TYPE_CHECKING:
    from paystream.settings import Settings

__all__ = ["GATEWAYS", "GatewayDeps", "GatewayFactory", "build_gateway"]


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


# Imports are deferred inside each factory so a worker only loads the SDKs it uses.
GATEWAYS: dict[str, GatewayFactory] = {
    "simulator": _simulator,
    "stripe": _stripe,
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
