"""Stripe via the official SDK: one StripeClient per tenant, async, errors normalised."""

from paystream.gateways.stripe.errors import map_stripe_error
from paystream.gateways.stripe.gateway import STRIPE_CAPABILITIES, StripeGateway

__all__ = ["STRIPE_CAPABILITIES", "StripeGateway", "map_stripe_error"]
