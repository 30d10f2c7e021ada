"""The command types paystream runs (after COMMAND_PREFIX), apart from their models:
`paystream send --help` lists them without building every model (~0.2 s). The registry,
commands.COMMANDS, refuses to load unless its types are these."""

from __future__ import annotations

COMMAND_TYPES: tuple[str, ...] = (
    "customer.create",
    "customer.update",
    "customer.delete",
    "customer.erase",
    "customer.export",
    "payment_method.attach",
    "payment_method.detach",
    "payment.create",
    "payment.capture",
    "payment.cancel",
    "payment.refresh",
    "refund.create",
    "refund.refresh",
    "dispute.submit_evidence",
    "dispute.accept",
    "subscription.create",
    "subscription.cancel",
    "subscription.update",
    "subscription.refresh",
    "payout.create",
    "payout.cancel",
    "payout.refresh",
    "balance.retrieve",
    "tax_rate.create",
    "tax_rate.archive",
    "tax.calculate",
    "connected_account.create",
    "connected_account.onboarding_link",
    "connected_account.refresh",
)
