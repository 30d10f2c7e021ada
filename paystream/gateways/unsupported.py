"""Gateway methods a provider does not offer, answered `unsupported` (shared mixins).

Each mixin is one capability a gateway lacks (its capabilities leave it out, so the
handler answers `unsupported` before any call; these answer the same if one is made):
a gateway lists the ones it lacks among its bases, and each method raises
:class:`UnsupportedOperation` naming the gateway's ``provider`` and the operation, as the
copies in each gateway did.
"""

from __future__ import annotations

from typing import NoReturn

from paystream.gateways import base as gw_base
from paystream.gateways.errors import UnsupportedOperation

__all__ = [
    "PAUSED_NOT_CANCELED",
    "PAUSED_NOT_CANCELED_AT",
    "NoConnectedAccounts",
    "NoInvoices",
    "NoPayouts",
    "NoTaxRates",
]

# Providers that cancel no paused subscription through their API (Square's
# CancelSubscription "schedules a CANCEL action to cancel an active subscription" at the
# end of its paid period: none for one paused, which its API reference does not
# offer), and what a cancel of one is answered, whether now or at period end (one
# refusal, one message: review h82re L2). Refused before any call by the handler, and
# by the gateway for one its record has not yet read paused.
PAUSED_NOT_CANCELED_AT = frozenset({"square"})
PAUSED_NOT_CANCELED = (
    "square: a paused subscription (paused in Square's dashboard) is not canceled through "
    "paystream: Square's CancelSubscription cancels an active subscription at the end of "
    "its paid period, and a paused one has none. Resume it in Square's dashboard and "
    "send subscription.cancel with at_period_end true, or cancel it in Square's dashboard"
)


class _Unsupported:
    provider: str

    def _unsupported(self, operation: str) -> NoReturn:
        raise UnsupportedOperation(self.provider, operation)


class NoPayouts(_Unsupported):
    """Payouts and balances (no PAYOUTS capability)."""

    async def create_payout(
        self, req: gw_base.CreatePayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        self._unsupported("create_payout")

    async def cancel_payout(
        self, req: gw_base.CancelPayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        self._unsupported("cancel_payout")

    async def retrieve_payout(
        self, req: gw_base.RetrievePayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        self._unsupported("retrieve_payout")

    async def retrieve_balance(
        self, req: gw_base.RetrieveBalance, *, idempotency_key: str
    ) -> gw_base.BalanceResult:
        self._unsupported("retrieve_balance")


class NoTaxRates(_Unsupported):
    """Tax rates (no TAX capability)."""

    async def create_tax_rate(
        self, req: gw_base.CreateTaxRate, *, idempotency_key: str
    ) -> gw_base.TaxRateResult:
        self._unsupported("create_tax_rate")

    async def archive_tax_rate(
        self, req: gw_base.ArchiveTaxRate, *, idempotency_key: str
    ) -> gw_base.TaxRateResult:
        self._unsupported("archive_tax_rate")


class NoConnectedAccounts(_Unsupported):
    """Connected accounts (no CONNECTED_ACCOUNTS capability)."""

    async def create_connected_account(
        self, req: gw_base.CreateConnectedAccount, *, idempotency_key: str
    ) -> gw_base.ConnectedAccountResult:
        self._unsupported("create_connected_account")

    async def create_account_link(
        self, req: gw_base.CreateAccountLink, *, idempotency_key: str
    ) -> gw_base.AccountLinkResult:
        self._unsupported("create_account_link")

    async def retrieve_connected_account(
        self, req: gw_base.RetrieveConnectedAccount, *, idempotency_key: str
    ) -> gw_base.ConnectedAccountResult:
        self._unsupported("retrieve_connected_account")

    async def create_transfer(
        self, req: gw_base.CreateTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        self._unsupported("create_transfer")

    async def reverse_transfer(
        self, req: gw_base.ReverseTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        self._unsupported("reverse_transfer")

    async def retrieve_transfer(
        self, req: gw_base.RetrieveTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        self._unsupported("retrieve_transfer")


class NoInvoices(_Unsupported):
    """One-off invoices (no INVOICES capability)."""

    async def create_invoice(
        self, req: gw_base.CreateInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("create_invoice")

    async def finalize_invoice(
        self, req: gw_base.FinalizeInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("finalize_invoice")

    async def pay_invoice(
        self, req: gw_base.PayInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("pay_invoice")

    async def void_invoice(
        self, req: gw_base.VoidInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("void_invoice")

    async def update_invoice(
        self, req: gw_base.UpdateInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("update_invoice")

    async def mark_invoice_uncollectible(
        self, req: gw_base.MarkInvoiceUncollectible, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("mark_invoice_uncollectible")

    async def retrieve_invoice(
        self, req: gw_base.RetrieveInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        self._unsupported("retrieve_invoice")
