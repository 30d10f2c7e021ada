"""SimulatorGateway: the whole PaymentGateway protocol against a Redis-backed fake provider.

Scenarios are chosen by token, as in django-payments' dummy provider, using Stripe's
test-card tokens (`pm_card_visa`, `pm_card_chargeDeclinedInsufficientFunds`, ...), so a
test written against the simulator reads the same as one against Stripe.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    KEYLESS_OPERATIONS,
    AcceptDispute,
    AccountLinkResult,
    ArchiveTaxRate,
    AttachPaymentMethod,
    BalanceResult,
    CancelPayment,
    CancelPayout,
    CancelSubscription,
    Capability,
    CaptureMethod,
    CapturePayment,
    ConnectedAccountResult,
    CreateAccountLink,
    CreateConnectedAccount,
    CreateCustomer,
    CreateInvoice,
    CreatePayment,
    CreatePayout,
    CreateRefund,
    CreateSubscription,
    CreateTaxRate,
    CreateTransfer,
    CustomerDetails,
    CustomerResult,
    DeleteCustomer,
    DetachPaymentMethod,
    DisputeResult,
    FinalizeInvoice,
    GatewayContext,
    InvoiceResult,
    MarkInvoiceUncollectible,
    PauseSubscription,
    PayInvoice,
    PaymentMethodResult,
    PaymentResult,
    PayoutResult,
    RefundResult,
    ResumeSubscription,
    RetrieveBalance,
    RetrieveConnectedAccount,
    RetrieveCustomer,
    RetrieveInvoice,
    RetrievePayment,
    RetrievePayout,
    RetrieveRefund,
    RetrieveSubscription,
    RetrieveTransfer,
    ReverseTransfer,
    SubmitDisputeEvidence,
    SubscriptionResult,
    TaxRateResult,
    TransferResult,
    UpdateCustomer,
    UpdateInvoice,
    UpdateSubscription,
    VoidInvoice,
    require_capability,
    require_operation,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import invoices
from paystream.gateways.simulator import operations as ops
from paystream.gateways.simulator.options import SimulatorOptions
from paystream.gateways.simulator.store import (
    EFFECTS_CAP,
    PROVIDER,
    STATE_TTL_SECONDS,
    Effect,
    SimulatorStore,
    Tx,
    model_fingerprint,
    request_fingerprint,
)
from paystream.gateways.stripe_rules import platform_only_problem
from paystream.money import Money

__all__ = ["SIMULATOR_CAPABILITIES", "SimulatorGateway"]

SIMULATOR_CAPABILITIES = frozenset(
    {
        Capability.CUSTOMERS,
        Capability.PAYMENT_METHODS,
        Capability.PAYMENTS,
        Capability.MANUAL_CAPTURE,
        Capability.PARTIAL_CAPTURE,
        Capability.REFUNDS,
        Capability.DISPUTES,
        Capability.SUBSCRIPTIONS,
        Capability.INVOICES,
        Capability.PAYOUTS,
        Capability.TAX,
        Capability.CONNECTED_ACCOUNTS,
    }
)

R = TypeVar("R", bound=BaseModel)
Req = TypeVar("Req", bound=BaseModel)


# (A member as a global: cheaper to look up than on its enum class, on every payment.)
_MANUAL_CAPTURE = CaptureMethod.MANUAL

# A key answered "known" must still be known when the command runs: at least this long.
KEY_KEPT_MS = 3_600_000


class SimulatorGateway:
    """A simulated provider for one tenant; its state is in Redis, not in this object."""

    provider = PROVIDER
    offered = SIMULATOR_CAPABILITIES

    def __init__(
        self,
        redis: Any,
        tenant_id: str,
        *,
        options: SimulatorOptions | None = None,
        record_ttl_seconds: int = 24 * 3600,
        state_ttl_seconds: int = STATE_TTL_SECONDS,
        effects_cap: int = EFFECTS_CAP,
        connected_account: str | None = None,
    ) -> None:
        self.options = options or SimulatorOptions()
        # The account the tenant acts for (--connected-account), as a Stripe tenant's:
        # nothing of the simulator's state is kept apart by it, but it refuses what
        # Stripe refuses such a tenant (connected accounts: _platform_only).
        self.connected_account = connected_account
        narrowed = self.options.capabilities
        if narrowed is not None and not narrowed <= SIMULATOR_CAPABILITIES:
            extra = ", ".join(sorted(narrowed - SIMULATOR_CAPABILITIES))
            raise ConfigurationError(f"the simulator cannot offer capabilities: {extra}")
        self.capabilities: frozenset[Capability] = (
            SIMULATOR_CAPABILITIES if narrowed is None else narrowed
        )
        self.tenant_id = tenant_id
        self._store = SimulatorStore(
            redis,
            tenant_id,
            record_ttl_seconds=record_ttl_seconds,
            state_ttl_seconds=state_ttl_seconds,
            effects_cap=effects_cap,
            settlement_delay_seconds=self.options.settlement_delay_days * 24 * 3600,
        )
        self._random = random.Random(self.options.seed)
        # Options that inject nothing (most tenants'), known as such once: `misbehaves`
        # is a property, worked out again on every call otherwise (options are frozen).
        self._calm = None if self.options.misbehaves else self.options

    @classmethod
    def from_context(cls, ctx: GatewayContext, deps: GatewayDeps) -> SimulatorGateway:
        """Build from tenant config; the provider's state needs ``deps.redis``."""
        if deps.redis is None:
            raise ConfigurationError(
                "the simulator gateway keeps its provider-side state in Redis: pass "
                "GatewayDeps(redis=redis.asyncio.Redis(...)) (set REDIS_URL)"
            )
        return cls(
            deps.redis,
            ctx.tenant_id,
            options=SimulatorOptions.parse(ctx.options),
            record_ttl_seconds=deps.settings.idempotency_ttl_seconds,
            connected_account=ctx.connected_account,
        )

    # ---- the machinery every call goes through -------------------------------------

    async def _inject_failure(self, key: str) -> None:
        """Fail before reaching the "provider" (nothing applied, nothing stored)."""
        opts = self.options
        if opts.latency_ms:
            await asyncio.sleep(opts.latency_ms / 1000)
        # Counted only for a key the knob names (or "*"): a counter per call otherwise.
        failures = opts.injected_failures(key, opts.fail_first)
        if failures:
            attempt = await self._store.count_attempt(key, "attempts")
            if attempt <= failures:
                raise self._transient(f"injected failure (attempt {attempt} of key {key!r})")
        if opts.fail_rate and self._random.random() < opts.fail_rate:
            raise self._transient("injected random failure")

    async def _lose_response(self, key: str) -> None:
        """The provider applied (or replayed) the call but its answer never arrives.

        Counted apart from ``fail_first``, among the calls that reached the provider
        only: with both knobs set, the first calls fail and the next ones lose their
        answers, rather than the failed calls using up the lost ones.
        """
        lost = self.options.injected_failures(key, self.options.lose_response_first)
        if lost and await self._store.count_attempt(key, "answered") <= lost:
            raise GatewayError(ErrorCode.TIMEOUT, "injected lost response", provider=PROVIDER)

    def _transient(self, message: str) -> GatewayError:
        return GatewayError(self.options.fail_code, message, provider=PROVIDER, http_status=503)

    async def _run(
        self,
        operation: str,
        req: BaseModel,
        key: str,
        fn: Callable[[Tx], Awaitable[dict[str, Any]]],
        result: type[R],
        *,
        keyed: bool = True,
    ) -> R:
        require_operation(operation, self.capabilities, SIMULATOR_CAPABILITIES, PROVIDER, req)
        fingerprint = model_fingerprint(operation, req)
        try:
            # Injection counts its attempts in Redis too: inside the try, so a store
            # that is down is the provider down whichever knob is set.
            if self.options is not self._calm and self.options.misbehaves:
                await self._inject_failure(key)
            response = await self._store.execute(key, fingerprint, fn, keyed=keyed)
            if self.options.lose_response_first:
                await self._lose_response(key)
        except (
            RedisConnectionError,
            RedisTimeoutError,
            RedisResponseError,
            ConnectionError,
        ) as exc:
            # The "provider" is down as far as the worker can tell (unreachable, or its
            # store refusing writes: READONLY after a failover, OOM, BUSY): retried with
            # backoff, then parked, like a real provider's outage (the call may have
            # applied; the retry reuses the key).
            raise GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"simulator state store unreachable ({type(exc).__name__})",
                provider=PROVIDER,
            ) from exc
        return _answer(response, result)

    # ---- the protocol --------------------------------------------------------------

    async def create_customer(self, req: CreateCustomer, *, idempotency_key: str) -> CustomerResult:
        return await self._run(
            "create_customer", req, idempotency_key,
            lambda tx: ops.create_customer(tx, req, idempotency_key), CustomerResult,
        )  # fmt: skip

    async def update_customer(self, req: UpdateCustomer, *, idempotency_key: str) -> CustomerResult:
        return await self._run(
            "update_customer", req, idempotency_key,
            lambda tx: ops.update_customer(tx, req, idempotency_key), CustomerResult,
        )  # fmt: skip

    async def retrieve_customer(
        self, req: RetrieveCustomer, *, idempotency_key: str
    ) -> CustomerDetails:
        # A read, as retrieve_payment: no key kept, every call answers afresh.
        return await self._run(
            "retrieve_customer", req, idempotency_key,
            lambda tx: ops.retrieve_customer(tx, req), CustomerDetails,
            keyed=False,
        )  # fmt: skip

    async def delete_customer(self, req: DeleteCustomer, *, idempotency_key: str) -> CustomerResult:
        # Stripe's DELETE takes no idempotency key: a retry after a lost answer runs
        # afresh and finds no such customer (404), as the handler expects of Stripe. The
        # customer's `deleted` flag, read-checked at commit, keeps customer.deleted once.
        return await self._run(
            "delete_customer", req, idempotency_key,
            lambda tx: ops.delete_customer(tx, req, idempotency_key), CustomerResult,
            keyed=False,
        )  # fmt: skip

    async def attach_payment_method(
        self, req: AttachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        return await self._run(
            "attach_payment_method", req, idempotency_key,
            lambda tx: ops.attach_payment_method(tx, req, idempotency_key), PaymentMethodResult,
        )  # fmt: skip

    async def detach_payment_method(
        self, req: DetachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        return await self._run(
            "detach_payment_method", req, idempotency_key,
            lambda tx: ops.detach_payment_method(tx, req, idempotency_key), PaymentMethodResult,
        )  # fmt: skip

    async def create_payment(self, req: CreatePayment, *, idempotency_key: str) -> PaymentResult:
        if req.capture_method is _MANUAL_CAPTURE:
            require_capability(
                Capability.MANUAL_CAPTURE, "create_payment(capture_method=manual)",
                self.capabilities, SIMULATOR_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        if req.destination_account is not None:
            self._platform_only("create_payment(transfer_data)")  # (as Stripe's gateway)
        return await self._run(
            "create_payment", req, idempotency_key,
            lambda tx: ops.create_payment(tx, req, idempotency_key), PaymentResult,
        )  # fmt: skip

    async def capture_payment(self, req: CapturePayment, *, idempotency_key: str) -> PaymentResult:
        if req.amount is not None:
            require_capability(
                Capability.PARTIAL_CAPTURE, "capture_payment(amount=...)",
                self.capabilities, SIMULATOR_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        return await self._run(
            "capture_payment", req, idempotency_key,
            lambda tx: ops.capture_payment(tx, req, idempotency_key), PaymentResult,
        )  # fmt: skip

    async def cancel_payment(self, req: CancelPayment, *, idempotency_key: str) -> PaymentResult:
        return await self._run(
            "cancel_payment", req, idempotency_key,
            lambda tx: ops.cancel_payment(tx, req, idempotency_key), PaymentResult,
        )  # fmt: skip

    async def retrieve_payment(
        self, req: RetrievePayment, *, idempotency_key: str
    ) -> PaymentResult:
        # A read, as Stripe's GET: no key kept, every call answers afresh. Its commit
        # checks the reads and writes nothing.
        return await self._run(
            "retrieve_payment", req, idempotency_key,
            lambda tx: ops.retrieve_payment(tx, req), PaymentResult,
            keyed=False,
        )  # fmt: skip

    async def create_refund(self, req: CreateRefund, *, idempotency_key: str) -> RefundResult:
        return await self._run(
            "create_refund", req, idempotency_key,
            lambda tx: ops.create_refund(tx, req, idempotency_key), RefundResult,
        )  # fmt: skip

    async def retrieve_refund(self, req: RetrieveRefund, *, idempotency_key: str) -> RefundResult:
        # A read, as retrieve_payment; it commits what the provider did meanwhile (a
        # refund of pm_card_refundFail fails, one of pm_card_pendingRefund settles).
        return await self._run(
            "retrieve_refund", req, idempotency_key,
            lambda tx: ops.retrieve_refund(tx, req), RefundResult,
            keyed=False,
        )  # fmt: skip

    async def submit_dispute_evidence(
        self, req: SubmitDisputeEvidence, *, idempotency_key: str
    ) -> DisputeResult:
        return await self._run(
            "submit_dispute_evidence", req, idempotency_key,
            lambda tx: ops.submit_dispute_evidence(tx, req, idempotency_key), DisputeResult,
        )  # fmt: skip

    async def accept_dispute(self, req: AcceptDispute, *, idempotency_key: str) -> DisputeResult:
        return await self._run(
            "accept_dispute", req, idempotency_key,
            lambda tx: ops.accept_dispute(tx, req, idempotency_key), DisputeResult,
        )  # fmt: skip

    async def create_subscription(
        self, req: CreateSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        return await self._run(
            "create_subscription", req, idempotency_key,
            lambda tx: ops.create_subscription(tx, req, idempotency_key), SubscriptionResult,
        )  # fmt: skip

    async def cancel_subscription(
        self, req: CancelSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        return await self._run(
            "cancel_subscription", req, idempotency_key,
            lambda tx: ops.cancel_subscription(tx, req, idempotency_key), SubscriptionResult,
        )  # fmt: skip

    async def update_subscription(
        self, req: UpdateSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        return await self._run(
            "update_subscription", req, idempotency_key,
            lambda tx: ops.update_subscription(tx, req, idempotency_key), SubscriptionResult,
        )  # fmt: skip

    async def pause_subscription(
        self, req: PauseSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        return await self._run(
            "pause_subscription", req, idempotency_key,
            lambda tx: ops.pause_subscription(tx, req, idempotency_key), SubscriptionResult,
        )  # fmt: skip

    async def resume_subscription(
        self, req: ResumeSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        return await self._run(
            "resume_subscription", req, idempotency_key,
            lambda tx: ops.resume_subscription(tx, req, idempotency_key), SubscriptionResult,
        )  # fmt: skip

    async def retrieve_subscription(
        self, req: RetrieveSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        # A read, as retrieve_payment: no key kept, every call answers afresh. It commits
        # the renewals the simulator's clock has made due since (each period once).
        return await self._run(
            "retrieve_subscription", req, idempotency_key,
            lambda tx: ops.retrieve_subscription(tx, req), SubscriptionResult,
            keyed=False,
        )  # fmt: skip

    async def create_payout(self, req: CreatePayout, *, idempotency_key: str) -> PayoutResult:
        destination = self.options.payout_destination
        return await self._run(
            "create_payout", req, idempotency_key,
            lambda tx: ops.create_payout(tx, req, idempotency_key, destination), PayoutResult,
        )  # fmt: skip

    async def cancel_payout(self, req: CancelPayout, *, idempotency_key: str) -> PayoutResult:
        return await self._run(
            "cancel_payout", req, idempotency_key,
            lambda tx: ops.cancel_payout(tx, req, idempotency_key), PayoutResult,
        )  # fmt: skip

    async def retrieve_payout(self, req: RetrievePayout, *, idempotency_key: str) -> PayoutResult:
        # A read, as retrieve_payment: it commits the moves the clock has made due (in
        # transit, paid, or failed: its amount available again), each once.
        return await self._run(
            "retrieve_payout", req, idempotency_key,
            lambda tx: ops.retrieve_payout(tx, req), PayoutResult,
            keyed=False,
        )  # fmt: skip

    async def retrieve_balance(
        self, req: RetrieveBalance, *, idempotency_key: str
    ) -> BalanceResult:
        return await self._run(
            "retrieve_balance", req, idempotency_key,
            lambda tx: ops.retrieve_balance(tx, req), BalanceResult,
            keyed=False,
        )  # fmt: skip

    async def create_tax_rate(self, req: CreateTaxRate, *, idempotency_key: str) -> TaxRateResult:
        return await self._run(
            "create_tax_rate", req, idempotency_key,
            lambda tx: ops.create_tax_rate(tx, req, idempotency_key), TaxRateResult,
        )  # fmt: skip

    async def archive_tax_rate(self, req: ArchiveTaxRate, *, idempotency_key: str) -> TaxRateResult:
        return await self._run(
            "archive_tax_rate", req, idempotency_key,
            lambda tx: ops.archive_tax_rate(tx, req, idempotency_key), TaxRateResult,
        )  # fmt: skip

    def _platform_only(self, operation: str) -> None:
        """As StripeGateway's: a tenant acting for a connected account makes, links and
        reads no connected accounts (Stripe would be asked to make them under a
        merchant's account): `unsupported` before any call (review h78m F4)."""
        if self.connected_account is not None:
            raise UnsupportedOperation(
                PROVIDER, operation, message=platform_only_problem(self.connected_account)
            )

    async def create_connected_account(
        self, req: CreateConnectedAccount, *, idempotency_key: str
    ) -> ConnectedAccountResult:
        self._platform_only("create_connected_account")
        return await self._run(
            "create_connected_account", req, idempotency_key,
            lambda tx: ops.create_connected_account(tx, req, idempotency_key),
            ConnectedAccountResult,
        )  # fmt: skip

    async def create_account_link(
        self, req: CreateAccountLink, *, idempotency_key: str
    ) -> AccountLinkResult:
        self._platform_only("create_account_link")
        return await self._run(
            "create_account_link", req, idempotency_key,
            lambda tx: ops.create_account_link(tx, req, idempotency_key), AccountLinkResult,
        )  # fmt: skip

    async def retrieve_connected_account(
        self, req: RetrieveConnectedAccount, *, idempotency_key: str
    ) -> ConnectedAccountResult:
        self._platform_only("retrieve_connected_account")
        return await self._run(
            "retrieve_connected_account", req, idempotency_key,
            lambda tx: ops.retrieve_connected_account(tx, req), ConnectedAccountResult,
            keyed=False,
        )  # fmt: skip

    async def create_transfer(self, req: CreateTransfer, *, idempotency_key: str) -> TransferResult:
        self._platform_only("create_transfer")
        return await self._run(
            "create_transfer", req, idempotency_key,
            lambda tx: ops.create_transfer(tx, req, idempotency_key), TransferResult,
        )  # fmt: skip

    async def reverse_transfer(
        self, req: ReverseTransfer, *, idempotency_key: str
    ) -> TransferResult:
        self._platform_only("reverse_transfer")
        return await self._run(
            "reverse_transfer", req, idempotency_key,
            lambda tx: ops.reverse_transfer(tx, req, idempotency_key), TransferResult,
        )  # fmt: skip

    async def retrieve_transfer(
        self, req: RetrieveTransfer, *, idempotency_key: str
    ) -> TransferResult:
        # A read, as retrieve_payment: no key kept, every call answers afresh.
        self._platform_only("retrieve_transfer")
        return await self._run(
            "retrieve_transfer", req, idempotency_key,
            lambda tx: ops.retrieve_transfer(tx, req), TransferResult,
            keyed=False,
        )  # fmt: skip

    async def create_invoice(self, req: CreateInvoice, *, idempotency_key: str) -> InvoiceResult:
        return await self._run(
            "create_invoice", req, idempotency_key,
            lambda tx: invoices.create_invoice(tx, req, idempotency_key), InvoiceResult,
        )  # fmt: skip

    async def update_invoice(self, req: UpdateInvoice, *, idempotency_key: str) -> InvoiceResult:
        return await self._run(
            "update_invoice", req, idempotency_key,
            lambda tx: invoices.update_invoice(tx, req, idempotency_key), InvoiceResult,
        )  # fmt: skip

    async def finalize_invoice(
        self, req: FinalizeInvoice, *, idempotency_key: str
    ) -> InvoiceResult:
        req = _as_sent(req)
        return await self._run(
            "finalize_invoice", req, idempotency_key,
            lambda tx: invoices.finalize_invoice(tx, req, idempotency_key), InvoiceResult,
        )  # fmt: skip

    async def pay_invoice(self, req: PayInvoice, *, idempotency_key: str) -> InvoiceResult:
        return await self._run(
            "pay_invoice", req, idempotency_key,
            lambda tx: invoices.pay_invoice(tx, req, idempotency_key), InvoiceResult,
        )  # fmt: skip

    async def void_invoice(self, req: VoidInvoice, *, idempotency_key: str) -> InvoiceResult:
        return await self._run(
            "void_invoice", req, idempotency_key,
            lambda tx: invoices.void_invoice(tx, req, idempotency_key), InvoiceResult,
        )  # fmt: skip

    async def mark_invoice_uncollectible(
        self, req: MarkInvoiceUncollectible, *, idempotency_key: str
    ) -> InvoiceResult:
        return await self._run(
            "mark_invoice_uncollectible", req, idempotency_key,
            lambda tx: invoices.mark_invoice_uncollectible(tx, req, idempotency_key),
            InvoiceResult,
        )  # fmt: skip

    async def retrieve_invoice(
        self, req: RetrieveInvoice, *, idempotency_key: str
    ) -> InvoiceResult:
        # A read, as retrieve_payment: no key kept, every call answers afresh.
        return await self._run(
            "retrieve_invoice", req, idempotency_key,
            lambda tx: invoices.retrieve_invoice(tx, req), InvoiceResult,
            keyed=False,
        )  # fmt: skip

    async def knows_request(
        self, operation: str, req: BaseModel, *, idempotency_key: str
    ) -> bool | None:
        """Whether the simulator finished this request under the key and keeps its
        record for a while yet (records live for the idempotency window; one expiring
        within KEY_KEPT_MS is not counted on); a delete takes no key, so none is ever
        known. A store that cannot be asked raises, as for any call."""
        if operation in KEYLESS_OPERATIONS:
            return False
        fingerprint = model_fingerprint(operation, _as_sent(req))
        return await self._store.finished(idempotency_key, fingerprint, kept_ms=KEY_KEPT_MS)

    async def aclose(self) -> None:
        """The Redis client belongs to the caller (shared GatewayDeps); nothing to close."""

    # ---- provider-side actions and inspection (tests, dev tooling) ------------------

    async def effects(self) -> list[Effect]:
        """Every effect applied for this tenant, oldest first; each key appears once."""
        return await self._store.effects()

    async def complete_authentication(
        self, payment_id: str, *, succeed: bool = True
    ) -> PaymentResult:
        """The cardholder finishes (or fails) the 3-D Secure challenge."""
        return await self._provider_action(
            f"3ds:{payment_id}", {"succeed": succeed},
            lambda tx: ops.complete_authentication(tx, payment_id, succeed), PaymentResult,
        )  # fmt: skip

    async def complete_onboarding(
        self, provider_account_id: str, outcome: str = "enabled"
    ) -> ConnectedAccountResult:
        """The account's holder finishes onboarding (``outcome``: enabled, restricted or
        rejected), as its visit to an onboarding link would: the next read shows it.
        Each call is a visit of its own (an account may be restricted, then enabled)."""
        return await self._provider_action(
            f"onboard:{provider_account_id}:{uuid.uuid4().hex}", {"outcome": outcome},
            lambda tx: ops.complete_onboarding(tx, provider_account_id, outcome),
            ConnectedAccountResult,
        )  # fmt: skip

    async def credit_customer(self, provider_customer_id: str, amount: Money) -> CustomerResult:
        """The seller credits a customer's balance (as in Stripe's dashboard): applied to
        their one-off invoices as they are finalized, one it covers paid at once. Each
        call is a credit of its own."""
        return await self._provider_action(
            f"credit:{provider_customer_id}:{uuid.uuid4().hex}",
            {"amount": amount.amount, "currency": amount.currency},
            lambda tx: invoices.credit_customer(
                tx, provider_customer_id, amount.amount, amount.currency
            ),
            CustomerResult,
        )

    async def reverse_transfer_outside(
        self, provider_transfer_id: str, amount: int | None = None
    ) -> TransferResult:
        """The platform reverses ``amount`` (None: all that is left) of a transfer outside
        paystream (Stripe's dashboard, or Stripe recovering a negative balance): only a
        ``transfer.refresh`` (or a webhook's) tells paystream. Each call is one of its own."""
        req = ReverseTransfer(provider_transfer_id=provider_transfer_id, amount=amount)
        key = f"reversal:{provider_transfer_id}:{uuid.uuid4().hex}"
        return await self._provider_action(
            key, {"amount": amount},
            lambda tx: ops.reverse_transfer(tx, req, key), TransferResult,
        )  # fmt: skip

    async def customer_credit(self, provider_customer_id: str, currency: str) -> int:
        """The customer's balance in ``currency`` as the seller's dashboard shows it (a
        read, nothing kept): a credit positive, a debit negative (an invoice under the
        minimum charge carried to their next one)."""
        response = await self._store.execute(
            f"balance:{provider_customer_id}",
            request_fingerprint("customer_credit", {"currency": currency}),
            lambda tx: invoices.customer_credit(tx, provider_customer_id, currency),
            keyed=False,
        )
        if "error" in response:
            _answer(response, CustomerResult)  # (raises its error)
        return int(response["ok"]["credit"])

    async def resolve_dispute(self, dispute_id: str, *, won: bool) -> DisputeResult:
        """The card network decides a dispute."""
        return await self._provider_action(
            f"resolve:{dispute_id}", {"won": won},
            lambda tx: ops.resolve_dispute(tx, dispute_id, won), DisputeResult,
        )  # fmt: skip

    async def advance_clock(self, seconds: int) -> dict[str, int]:
        """Move this tenant's simulator clock forward (a test clock): periods begun by
        then are billed when the subscription is next read (`subscription.refresh`)."""
        response = await self._store.execute(
            "clock", request_fingerprint("advance_clock", {"seconds": seconds}),
            lambda tx: ops.advance_clock(tx, seconds), keyed=False,
        )  # fmt: skip
        return dict(response["ok"])

    async def clock_now(self) -> int:
        """This tenant's simulator clock (unix seconds: the machine's plus what
        `simulator advance` added). A time a request names (a pause's resumes_at) is
        judged by it, as Stripe's own clock judges at Stripe (handlers.provider_now)."""
        return ops.clock_of(await self._store.read(ops.CLOCK_ID))

    async def _provider_action(
        self,
        key: str,
        params: dict[str, Any],
        fn: Callable[[Tx], Awaitable[dict[str, Any]]],
        result: type[R],
    ) -> R:
        # Provider-initiated changes go through the same commit, so they happen once; the
        # verdict is in the fingerprint, so the opposite one (a lost dispute after a won
        # one) is an idempotency error, not the first one replayed as if it were new.
        fingerprint = request_fingerprint(key, params)
        response = await self._store.execute(f"provider:{key}", fingerprint, fn)
        return _answer(response, result)


def _answer(response: dict[str, Any], result: type[R]) -> R:
    """The stored or fresh response as the result, or as the error it records."""
    if "error" in response:
        err = response["error"]
        raise GatewayError(
            ErrorCode(err["code"]),
            err["message"],
            provider=PROVIDER,
            decline_code=err.get("decline_code"),
            http_status=err.get("http_status"),
            provider_payment_id=err.get("provider_payment_id"),
        )
    # ``model_validate`` is this call with every option left unset; made directly, it
    # skips a Python frame and its keyword handling (a fifth of the validation's cost).
    return cast(R, result.__pydantic_validator__.validate_python(response["ok"]))


def _as_sent(req: Req) -> Req:
    """A request as the simulator keys it: a finalize without the draft's recorded lines
    (not checked: an update replaces them in one transaction, never half; and left out
    of the key's parameters, as Stripe's /finalize is sent without), so that asking
    whether a key is known (knows_request: a suspended tenant's command let through
    after a crash) matches the key the finalize was made under."""
    if isinstance(req, FinalizeInvoice) and req.lines is not None:
        return cast(Req, req.model_copy(update={"lines": None}))
    return req
