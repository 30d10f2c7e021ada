"""StripeGateway: the PaymentGateway protocol over the official SDK, one client per tenant.

Configuration lives on the tenant's ``StripeClient`` instance, never on the module
globals (``stripe.api_key``), because many tenants share one event loop. The SDK's own
retries are off: the pipeline owns retries and always reuses the idempotency key.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import aiohttp
import stripe
from pydantic import BaseModel

from paystream.errors import ConfigurationError
from paystream.gateways import base as gw_base
from paystream.gateways.base import (
    AcceptDispute,
    AttachPaymentMethod,
    CancelPayment,
    Capability,
    CaptureMethod,
    CapturePayment,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    CustomerDetails,
    CustomerResult,
    DeleteCustomer,
    DetachPaymentMethod,
    DisputeResult,
    GatewayContext,
    PaymentMethodResult,
    PaymentResult,
    RefundResult,
    RetrieveCustomer,
    RetrievePayment,
    RetrieveRefund,
    SubmitDisputeEvidence,
    UpdateCustomer,
    require_capability,
    require_operation,
)
from paystream.gateways.errors import (
    DraftLinesDiffer,
    ErrorCode,
    GatewayError,
    UnsupportedOperation,
)
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.stripe import mapping
from paystream.gateways.stripe.errors import PROVIDER, map_stripe_error
from paystream.gateways.stripe_rules import (
    below_minimum_charge,
    payment_parameters_problem,
    payout_amount_problem,
    platform_only_problem,
    stripe_units_problem,
    three_decimal_problem,
    withdrawn_currency_problem,
)
from paystream.gateways.tenant_config import (
    narrowed_capabilities,
    refuse_unknown_options,
    required_credential,
)
from paystream.tax import Line, Rate, calculate, parse_percentage

__all__ = ["STRIPE_CAPABILITIES", "StripeGateway"]

log = logging.getLogger(__name__)

STRIPE_CAPABILITIES = frozenset(
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
        Capability.WEBHOOKS,
    }
)

# The API version from which an invoice names its PaymentIntent in ``payments`` only.
INVOICE_PAYMENTS_SINCE = "2025-03-31"

# A page of pending invoice items (Stripe's most per list request).
PENDING_PAGE = 100


def _derived_key(key: str, part: str) -> str:
    """A key of its own for a second call of one command, within Stripe's 255 characters."""
    derived = f"{key}:{part}"
    if len(derived) <= 255:
        return derived
    return f"{part}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _without_none(**params: Any) -> dict[str, Any]:
    # Send only what was set: Stripe treats an empty value as "unset this field".
    return {k: v for k, v in params.items() if v is not None and v != {}}


def _require_hundredths(operation: str, amount: gw_base.Money) -> None:
    """``unsupported`` for an amount in a currency Stripe counts in hundredths where this
    version counts it otherwise: this version's setup, not the command (the same request
    is good on another provider, or once converted), so not remembered under its key,
    and one let through by an older version (Stripe may have acted on it) is parked
    again, not refused for good (review h67e)."""
    if stripe_units_problem(amount) is not None:
        raise UnsupportedOperation(
            PROVIDER, f"{operation} in {amount.currency} (Stripe counts it in hundredths)"
        )


def _refuse_unsent(problem: str | None) -> None:
    """A request that breaks one of Stripe's rules (``problem``, from stripe_rules),
    refused ``invalid_request`` before it is sent: it never reached Stripe."""
    if problem is not None:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            problem,
            provider=PROVIDER,
            retryable=False,
            reached_provider=False,
        )


def _uncharged_total_problem(req: gw_base.CreateInvoice | gw_base.UpdateInvoice) -> str | None:
    """Why Stripe could not charge an invoice's total (with its exclusive tax, as
    paystream.tax works it out, the simulator's arithmetic): under the currency's minimum
    charge Stripe marks it paid uncharged and adds the amount to the customer's credit
    balance, taken from their next invoice; a three-decimal amount not in tens is no
    charge its partners take. Refused before any call, as the simulator refuses it at
    create (review h78o M3). (A payment's minimum is left to Stripe, which refuses it.)"""
    rates = [
        Rate(r.provider_tax_rate_id, parse_percentage(r.percentage), r.inclusive)
        for r in req.tax_rates
    ]
    lines = [Line(line.unit_amount, line.quantity, rates) for line in req.lines or ()]
    try:
        total = calculate(lines, req.currency).amount_total
    except ValueError:
        return None  # (Stripe decides a request the arithmetic cannot take)
    amount = gw_base.Money(amount=total, currency=req.currency)
    return below_minimum_charge(amount) or three_decimal_problem(amount)


def _repriced(sub: Mapping[str, Any], amount: gw_base.Money) -> tuple[str, dict[str, Any]]:
    """(its one item's id, the parameters of a Plan of ``amount`` for it): the item's
    interval and Product kept, as paystream subscribes (one item, one Plan)."""
    items = sub.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    if not data or len(data) != 1 or not isinstance(data[0], Mapping):
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            "the subscription has not one item (not made by paystream): its price is not changed",
            provider=PROVIDER,
            retryable=False,
            reached_provider=False,
        )
    item = data[0]
    price: Mapping[str, Any] = item.get("plan") or item.get("price") or {}
    # (a Plan holds its interval; a Price, in ``recurring``)
    recurring = price.get("recurring")
    if not isinstance(recurring, Mapping):
        recurring = price
    product = price.get("product")
    if isinstance(product, Mapping):
        product = product.get("id")
    return str(item["id"]), {
        "amount": amount.amount,
        "currency": amount.currency.lower(),
        "interval": recurring.get("interval"),
        "interval_count": int(recurring.get("interval_count") or 1),
        "product": product,
    }


def _capabilities(options: Mapping[str, Any]) -> frozenset[Capability]:
    names = options.get("capabilities")
    if names is None:
        return STRIPE_CAPABILITIES
    return narrowed_capabilities(
        names,
        STRIPE_CAPABILITIES,
        "stripe",
    )


# Tenant gateway options the Stripe gateway reads; anything else is a mistake.
STRIPE_OPTIONS = frozenset({"stripe_version", "capabilities"})


# An invoice action refused, the invoice read back at the status it was to reach: the
# answer (a void, or a write-off, sent again once its key's answer is gone).
_ALREADY_SO = frozenset({("void_invoice", "void"), ("mark_invoice_uncollectible", "uncollectible")})
# How a refused invoice action is named in its invalid_state message.
_INVOICE_VERB = {
    "finalize_invoice": "finalize",
    "pay_invoice": "pay",
    "void_invoice": "void",
    "mark_invoice_uncollectible": "mark uncollectible",
}
# An invoice item an invoice.update made names the update (a digest of its key), its
# line's place and the update's count of lines in its metadata: the update sent again
# keeps those, deletes the others and adds only the lines still missing (a crash between
# two item calls leaves none twice); a read tells a replacement done from one parked part
# way (_whole_update). The count is a key of its own, not in the place ("2/3"): an item
# of the release before (no count) still matches, and the release before, rolled back to,
# still matches this one's (it would delete and re-add under a key Stripe answers from).
_UPDATE_TAG = "paystream_update"
_UPDATE_LINE = "paystream_line"
_UPDATE_LINES = "paystream_lines"


def _whole_update(lines: list[Mapping[str, Any]]) -> bool:
    """Whether a draft's lines are an invoice.update's whole replacement (review h82ra
    F1). An update deletes every item it did not make before it adds any of its own, so
    an item of its beside the others is newer than it (made at Stripe since), never left
    over: the lines are whole when the items of one update, and of one only, are its
    places 0..n-1 of its count n. Parked part way they are not: some of the old left
    (none of its own yet, or another update's short of its count), some of its own
    missing, or none at all. Lines no update of this release made (the create's, whose
    items are untagged; an update's of the release before, which named no count) cannot
    be told from such a part (the create's half deleted): not whole either."""
    tags: set[str] = set()
    places: list[str] = []
    counts: set[str] = set()
    for line in lines:
        meta = line.get("metadata")
        if not isinstance(meta, Mapping) or not meta.get(_UPDATE_TAG):
            continue
        tags.add(str(meta[_UPDATE_TAG]))
        places.append(str(meta.get(_UPDATE_LINE)))
        if meta.get(_UPDATE_LINES) is not None:
            counts.add(str(meta[_UPDATE_LINES]))
    if len(tags) != 1 or len(counts) != 1 or not next(iter(counts)).isdigit():
        return False
    return sorted(places) == sorted(str(n) for n in range(int(counts.pop())))


def _item_line(item: Mapping[str, Any]) -> tuple[str, int, int]:
    """An invoice item as (description, unit amount, quantity), as a line is recorded
    (``unit_amount_decimal`` is a decimal string; an item of other units reads apart)."""
    quantity = int(item.get("quantity") or 1)
    try:
        unit = Decimal(str(item.get("unit_amount_decimal")))
    except ArithmeticError:
        unit = Decimal(int(item.get("amount") or 0)) / quantity
    whole = int(unit) if unit == unit.to_integral_value() else -1
    return (str(item.get("description") or ""), whole, quantity)


# Stripe API versions: a date, and since 2024-09-30 a release name ("2024-09-30.acacia").
_STRIPE_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:\.[a-z]+)?")


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def validate_options(options: Mapping[str, Any]) -> None:
    """Refuse, before they are stored, options the gateway would refuse at its first call."""
    refuse_unknown_options(options, STRIPE_OPTIONS, "stripe")
    version = options.get("stripe_version")
    # Sent as the Stripe-Version header: a newline (a value read from a file) made every
    # call fail as Stripe unreachable, retried behind an opening circuit.
    if version is not None and (
        not isinstance(version, str)
        or _STRIPE_VERSION.fullmatch(version) is None
        or not _is_date(version[:10])  # (2024-13-45 too: review h67o)
    ):
        raise ConfigurationError(
            "stripe_version must be an API version such as 2024-06-20 or 2025-03-31.basil"
        )
    _capabilities(options)


class StripeGateway:
    """Stripe for one tenant (optionally acting for one connected account)."""

    provider = PROVIDER
    offered = STRIPE_CAPABILITIES

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        capabilities: frozenset[Capability] = STRIPE_CAPABILITIES,
        http_client: stripe.HTTPClient | None = None,
        stripe_version: str | None = None,
        connected_account: str | None = None,
    ) -> None:
        self.capabilities = capabilities
        # The connected account this tenant acts for (Stripe-Account on every call), or
        # None: the platform's own (which alone makes connected accounts).
        self.connected_account = connected_account
        # Invoices name their PaymentIntent in ``payments`` (to be expanded) from API
        # version 2025-03-31.basil (the SDK's own is later, when the tenant pins none).
        version = stripe_version or stripe.api_version
        self._payments_listed = version[:10] >= INVOICE_PAYMENTS_SINCE
        self._v1: Any = client.v1  # params are plain dicts; our result types are the typed edge
        self._http_client = http_client

    @classmethod
    def from_context(
        cls,
        ctx: GatewayContext,
        deps: GatewayDeps,
        *,
        http_client: stripe.HTTPClient | None = None,
    ) -> StripeGateway:
        """Build the tenant's client; ``http_client`` lets tests inject a fake transport."""
        api_key = required_credential(ctx, "api_key", PROVIDER, "Stripe")
        settings = deps.settings
        if http_client is None:
            http_client = stripe.AIOHTTPClient(
                timeout=aiohttp.ClientTimeout(total=settings.gateway_timeout_seconds)
            )
        client = stripe.StripeClient(
            api_key,
            stripe_account=ctx.connected_account,
            stripe_version=ctx.options.get("stripe_version"),
            base_addresses={"api": settings.stripe_api_base},
            max_network_retries=0,
            http_client=http_client,
        )
        return cls(
            client,
            capabilities=_capabilities(ctx.options),
            http_client=http_client,
            stripe_version=ctx.options.get("stripe_version"),
            connected_account=ctx.connected_account,
        )

    async def _call(
        self, operation: str, fn: Callable[[], Awaitable[Any]], req: BaseModel | None = None
    ) -> dict[str, Any]:
        """Check the capability (``operation``'s, asked ``req``: gw_base.unnarrowed),
        make the call, and normalise errors at the boundary."""
        return (await self._answer(operation, fn, req))[0]

    async def _payment(self, operation: str, fn: Callable[[], Awaitable[Any]]) -> PaymentResult:
        """A call answered with a PaymentIntent, read by the API version it was written in."""
        obj, api_version = await self._answer(operation, fn)
        return mapping.payment(obj, api_version=api_version)

    async def _answer(
        self, operation: str, fn: Callable[[], Awaitable[Any]], req: BaseModel | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """``_call``'s object, and the API version Stripe answered in (its header)."""
        require_operation(operation, self.capabilities, STRIPE_CAPABILITIES, PROVIDER, req)
        try:
            obj = await fn()
        except stripe.StripeError as exc:
            raise map_stripe_error(exc) from exc
        except aiohttp.ClientError as exc:
            # The SDK reads the response body outside its own error handling: a connection
            # cut mid-answer surfaces raw. Stripe may have acted: retried under the same key,
            # it answers with the original result.
            raise GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"the connection to Stripe broke mid-answer ({type(exc).__name__})",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        except TimeoutError as exc:
            # The same, with the answer stalled past the call's timeout mid-body (the SDK
            # maps a timeout before the answer; a raw one broke the gateway's contract:
            # GatewayError only, review finding). Stripe may have acted: retried under
            # the same key, it answers with the original result.
            raise GatewayError(
                ErrorCode.TIMEOUT,
                "Stripe's answer stalled past the call's timeout",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        response = obj.last_response
        headers = response.headers if response is not None else {}
        # (aiohttp's headers ignore case; a plain mapping, as a test transport's, does not)
        version = headers.get("Stripe-Version") or headers.get("stripe-version")
        return dict(obj.to_dict(for_json=True)), version

    @staticmethod
    def _opts(idempotency_key: str) -> dict[str, Any]:
        return {"idempotency_key": idempotency_key}

    # ---- customers -------------------------------------------------------------------

    async def create_customer(self, req: CreateCustomer, *, idempotency_key: str) -> CustomerResult:
        params = _without_none(**req.model_dump())
        obj = await self._call(
            "create_customer",
            lambda: self._v1.customers.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.customer(obj)

    async def update_customer(self, req: UpdateCustomer, *, idempotency_key: str) -> CustomerResult:
        params = _without_none(**req.model_dump(exclude={"provider_customer_id"}))
        obj = await self._call(
            "update_customer",
            lambda: self._v1.customers.update_async(
                req.provider_customer_id, params, self._opts(idempotency_key)
            ),
        )
        return mapping.customer(obj)

    async def retrieve_customer(
        self, req: RetrieveCustomer, *, idempotency_key: str
    ) -> CustomerDetails:
        # A GET: Stripe keys no read, so no key is sent.
        obj = await self._call(
            "retrieve_customer",
            lambda: self._v1.customers.retrieve_async(req.provider_customer_id),
        )
        if obj.get("deleted"):  # (Stripe answers a deleted customer's id with a stub)
            raise GatewayError(
                ErrorCode.NOT_FOUND,
                f"no such customer: {req.provider_customer_id!r}",
                provider=self.provider,
                http_status=404,
            )
        return mapping.customer_details(obj)

    async def delete_customer(self, req: DeleteCustomer, *, idempotency_key: str) -> CustomerResult:
        # Stripe takes no idempotency key on DELETE: a retry after a lost answer (or a
        # customer deleted in Stripe's dashboard) meets a 404, answered as NOT_FOUND like
        # any provider's; the handler then counts the customer deleted and says so.
        obj = await self._call(
            "delete_customer",
            lambda: self._v1.customers.delete_async(req.provider_customer_id),
        )
        return mapping.customer(obj)

    # ---- payment methods -------------------------------------------------------------

    async def attach_payment_method(
        self, req: AttachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        obj = await self._call(
            "attach_payment_method",
            lambda: self._v1.payment_methods.attach_async(
                req.token, {"customer": req.provider_customer_id}, self._opts(idempotency_key)
            ),
        )
        return mapping.payment_method(obj)

    async def detach_payment_method(
        self, req: DetachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        obj = await self._call(
            "detach_payment_method",
            lambda: self._v1.payment_methods.detach_async(
                req.provider_payment_method_id, None, self._opts(idempotency_key)
            ),
        )
        return mapping.payment_method(obj)

    # ---- payments --------------------------------------------------------------------

    async def create_payment(self, req: CreatePayment, *, idempotency_key: str) -> PaymentResult:
        if req.capture_method is CaptureMethod.MANUAL:
            require_capability(
                Capability.MANUAL_CAPTURE, "create_payment(capture_method=manual)",
                self.capabilities, STRIPE_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        _require_hundredths("create_payment", req.amount)
        # Stripe's rules (three-decimal amounts, a withdrawn currency, descriptors,
        # metadata keys, return URLs): said before the call, in the command's own words
        # (the simulator applies them too, inside its keyed call).
        _refuse_unsent(
            three_decimal_problem(req.amount)
            or withdrawn_currency_problem(req.amount)
            or payment_parameters_problem(req.statement_descriptor, req.return_url, req.metadata)
        )
        params = _without_none(
            amount=req.amount.amount,
            currency=req.amount.currency.lower(),
            customer=req.provider_customer_id,
            payment_method=req.provider_payment_method_id,
            capture_method=req.capture_method.value,
            confirm=True,
            # Cards only, so Stripe needs no return_url unless a 3DS redirect is wanted.
            payment_method_types=["card"],
            description=req.description,
            statement_descriptor_suffix=req.statement_descriptor,
            return_url=req.return_url,
            metadata=req.metadata,
            expand=["latest_charge"],
        )
        if req.destination_account is not None:
            # A destination charge (https://docs.stripe.com/connect/destination-charges):
            # charged on the platform, the amount less the fee transferred to the account.
            # No on_behalf_of: the platform stays the settlement merchant (its statement
            # descriptor, its fees), which a destination charge needs no more than this.
            self._platform_only("create_payment(transfer_data)")
            params["transfer_data"] = {"destination": req.destination_account}
            if req.application_fee_amount:  # (a fee of 0 is none: nothing to send)
                params["application_fee_amount"] = req.application_fee_amount
        return await self._payment(
            "create_payment",
            lambda: self._v1.payment_intents.create_async(params, self._opts(idempotency_key)),
        )

    async def capture_payment(self, req: CapturePayment, *, idempotency_key: str) -> PaymentResult:
        if req.amount is not None:
            require_capability(
                Capability.PARTIAL_CAPTURE, "capture_payment(amount=...)",
                self.capabilities, STRIPE_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        params = _without_none(
            amount_to_capture=req.amount,
            application_fee_amount=req.application_fee_amount,
            expand=["latest_charge"],
        )
        return await self._payment(
            "capture_payment",
            lambda: self._v1.payment_intents.capture_async(
                req.provider_payment_id, params, self._opts(idempotency_key)
            ),
        )

    async def cancel_payment(self, req: CancelPayment, *, idempotency_key: str) -> PaymentResult:
        params = _without_none(cancellation_reason=req.reason, expand=["latest_charge"])
        return await self._payment(
            "cancel_payment",
            lambda: self._v1.payment_intents.cancel_async(
                req.provider_payment_id, params, self._opts(idempotency_key)
            ),
        )

    async def retrieve_payment(
        self, req: RetrievePayment, *, idempotency_key: str
    ) -> PaymentResult:
        """The PaymentIntent, and the disputes of its latest charge if it is disputed
        (newest first): on Stripe a dispute opens days after the charge
        (``charge.dispute.created``), and only a read finds it (the dispute, and each
        later decision, is read here)."""
        # GETs: Stripe keys no read, so no key is sent.
        obj, api_version = await self._answer(
            "retrieve_payment",
            lambda: self._v1.payment_intents.retrieve_async(
                req.provider_payment_id, {"expand": ["latest_charge"]}
            ),
        )
        res = mapping.payment(obj, api_version=api_version)
        charge = obj.get("latest_charge")
        if (
            not isinstance(charge, Mapping)
            or charge.get("disputed") is not True
            or Capability.DISPUTES not in self.capabilities
        ):
            return res
        found = await self._call(
            "retrieve_payment",
            lambda: self._v1.disputes.list_async({"payment_intent": res.provider_payment_id}),
        )
        # Newest first; the latest charge's (an earlier charge of the PaymentIntent was
        # declined: only a charge that took money can be disputed).
        disputes = [
            d
            for d in found.get("data") or []
            if isinstance(d, Mapping) and d.get("charge") in (None, charge.get("id"))
        ]
        if not disputes:
            return res  # (listed before the dispute was: read again on its event)
        # Each of them: once a newer one exists, the one paystream recorded is read back
        # from its own entry (its decision, an appeal; review h72g).
        # (An older one in a status this version does not know is left out, not the
        # whole read failed: only the newest was read before.)
        newest, *older = disputes
        listed = (
            mapping.dispute(newest),
            *(mapping.dispute(d) for d in older if mapping.dispute_status(d.get("status"))),
        )
        return res.model_copy(update={"dispute": listed[0], "disputes": listed})

    async def read_payment_intent(self, provider_payment_id: str) -> dict[str, Any]:
        """The PaymentIntent as Stripe holds it, for the webhook endpoint: a dispute's
        event names its PaymentIntent only, whose metadata names paystream's payment.
        A GET (no key), its errors mapped as every call's."""
        return await self._call(
            "retrieve_payment",
            lambda: self._v1.payment_intents.retrieve_async(provider_payment_id),
        )

    # ---- refunds ---------------------------------------------------------------------

    async def create_refund(self, req: CreateRefund, *, idempotency_key: str) -> RefundResult:
        params = _without_none(
            payment_intent=req.provider_payment_id,
            amount=req.amount,
            reason=req.reason,
            metadata=req.metadata,
            reverse_transfer=req.reverse_transfer,
            refund_application_fee=req.refund_application_fee,
        )
        obj = await self._call(
            "create_refund",
            lambda: self._v1.refunds.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.refund(obj)

    async def retrieve_refund(self, req: RetrieveRefund, *, idempotency_key: str) -> RefundResult:
        # A GET: Stripe keys no read, so no key is sent.
        obj = await self._call(
            "retrieve_refund", lambda: self._v1.refunds.retrieve_async(req.provider_refund_id)
        )
        return mapping.refund(obj)

    # ---- disputes --------------------------------------------------------------------

    async def submit_dispute_evidence(
        self, req: SubmitDisputeEvidence, *, idempotency_key: str
    ) -> DisputeResult:
        params = {"evidence": dict(req.evidence), "submit": req.submit}
        obj = await self._call(
            "submit_dispute_evidence",
            lambda: self._v1.disputes.update_async(
                req.provider_dispute_id, params, self._opts(idempotency_key)
            ),
        )
        return mapping.dispute(obj)

    async def accept_dispute(self, req: AcceptDispute, *, idempotency_key: str) -> DisputeResult:
        obj = await self._call(
            "accept_dispute",
            lambda: self._v1.disputes.close_async(
                req.provider_dispute_id, None, self._opts(idempotency_key)
            ),
        )
        return mapping.dispute(obj)

    # ---- subscriptions ---------------------------------------------------------------

    async def create_subscription(
        self, req: gw_base.CreateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """A Subscription of one item, priced by a Plan made for it (under a key derived
        from the create's: a replay finds the same Plan, and the same Subscription), the
        payment method its default, ``payment_behavior=allow_incomplete``: a declined
        first invoice is a subscription `incomplete` with that invoice open (no error)."""
        _require_hundredths("create_subscription", req.amount)
        _refuse_unsent(three_decimal_problem(req.amount) or withdrawn_currency_problem(req.amount))
        # A Plan, not an inline price_data: a subscription item's price_data needs a
        # Product made beforehand (product_data is not taken there), where a Plan takes
        # its Product inline; and a Plan is a price wherever Stripe takes one.
        plan_params = {
            "amount": req.amount.amount,
            "currency": req.amount.currency.lower(),
            "interval": req.interval,
            "interval_count": req.interval_count,
            "product": {"name": (req.description or "paystream subscription")[:250]},
        }
        plan = await self._call(
            "create_subscription",
            lambda: self._v1.plans.create_async(
                plan_params, self._opts(_derived_key(idempotency_key, "plan"))
            ),
        )
        params = _without_none(
            customer=req.provider_customer_id,
            items=[{"plan": plan["id"]}],
            default_payment_method=req.provider_payment_method_id,
            payment_behavior="allow_incomplete",
            trial_period_days=req.trial_days or None,
            description=req.description,
            metadata=req.metadata,
            # Its invoices taxed by Stripe Billing with the tenant's TaxRates (made by
            # create_tax_rate): sent only when there are any, so a subscription without
            # tax is the very request it was before (its key's parameters unchanged).
            default_tax_rates=[r.provider_tax_rate_id for r in req.tax_rates] or None,
        )
        obj = await self._call(
            "create_subscription",
            lambda: self._v1.subscriptions.create_async(params, self._opts(idempotency_key)),
        )
        return await self._subscription(obj)

    async def cancel_subscription(
        self, req: gw_base.CancelSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        sid = req.provider_subscription_id
        if req.at_period_end:
            obj = await self._call(
                "cancel_subscription",
                lambda: self._v1.subscriptions.update_async(
                    sid, {"cancel_at_period_end": True}, self._opts(idempotency_key)
                ),
            )
            return await self._subscription(obj)
        # A DELETE: Stripe takes no key on it. Sent again after a lost answer, the
        # subscription is canceled already: whatever Stripe answers that, the
        # subscription read back canceled is the answer.
        try:
            obj = await self._call(
                "cancel_subscription", lambda: self._v1.subscriptions.cancel_async(sid)
            )
        except GatewayError as exc:
            if exc.retryable or exc.code not in (ErrorCode.INVALID_STATE, ErrorCode.NOT_FOUND):
                raise
            obj = await self._read_subscription(sid)
            if mapping.subscription_status(obj.get("status")) is not (
                gw_base.SubscriptionStatus.CANCELED
            ):
                raise
        return await self._subscription(obj, void_open=True)

    async def update_subscription(
        self, req: gw_base.UpdateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """One ``POST /v1/subscriptions/{id}``: a new amount is a new Plan (under a key
        derived from the update's, as a create's: a replay finds the same Plan) put on
        the subscription's one item with ``proration_behavior=none`` (billed from the
        next period on, nothing credited or charged now); a payment method its
        ``default_payment_method``; ``cancel_at_period_end`` as given; ``trial_end``
        only while Stripe reads it trialing."""
        sid = req.provider_subscription_id
        params: dict[str, Any] = {}
        trial_end, update_key = req.trial_end, idempotency_key
        if req.amount is not None:
            _require_hundredths("update_subscription", req.amount)
            _refuse_unsent(
                three_decimal_problem(req.amount) or withdrawn_currency_problem(req.amount)
            )
        now: Mapping[str, Any] = {}
        if req.amount is not None or trial_end is not None:
            # As it stands (a GET: no key): a new Plan bills on the same interval, for
            # the same Product; a trial_end is sent only while it is trialing.
            now = await self._call(
                "update_subscription", lambda: self._v1.subscriptions.retrieve_async(sid)
            )
        if trial_end is not None and now.get("status") != "trialing":
            # Stripe takes a trial_end on a live subscription whatever its status: on an
            # active one "now" resets the anchor and invoices a full period again (one
            # whose trial ended on its own, or by this update under a key never answered:
            # a parked end re-driven), a time gives it a trial. Not sent: "now" is over
            # already (read back, as Paddle's activation asked again); a time refused.
            if trial_end != "now":
                raise GatewayError(
                    ErrorCode.INVALID_STATE,
                    f"the subscription is {now.get('status')} at Stripe: only a trialing "
                    "subscription's trial_end is moved",
                    provider=PROVIDER,
                    retryable=False,
                    reached_provider=False,
                )
            trial_end = None
            # (its other changes under a key of their own: the command's may hold the
            # first call's, with trial_end, whose parameters these are not)
            update_key = _derived_key(idempotency_key, "trial-over")
        if req.amount is not None:
            item_id, plan_params = _repriced(now, req.amount)
            plan = await self._call(
                "update_subscription",
                lambda: self._v1.plans.create_async(
                    plan_params, self._opts(_derived_key(idempotency_key, "plan"))
                ),
            )
            params["items"] = [{"id": item_id, "plan": plan["id"]}]
            # Stripe's own proration_behavior (none unless asked). No proration_date: a
            # retry under the same key is answered with the first answer (Stripe keeps it
            # 24 hours), its amounts as computed then; and a date paystream picked could
            # fall outside a test clock's period, which Stripe refuses.
            params["proration_behavior"] = req.proration or "none"
        if req.provider_payment_method_id is not None:
            params["default_payment_method"] = req.provider_payment_method_id
        if req.cancel_at_period_end is not None:
            params["cancel_at_period_end"] = req.cancel_at_period_end
        if trial_end is not None:
            # "now": the trial ends, its first period invoiced and its payment attempted
            # in this call (under its key: a replay is answered from it, charged once);
            # declined, the subscription is past_due (the update's default
            # payment_behavior, allow_incomplete). A time: the trial's new end (the
            # billing anchor moves with it). Nothing prorated: nothing was paid.
            params["trial_end"] = trial_end
            params.setdefault("proration_behavior", "none")
        if not params:  # (a trial over already, nothing else asked: read back)
            return await self._subscription(now)
        obj = await self._call(
            "update_subscription",
            lambda: self._v1.subscriptions.update_async(sid, params, self._opts(update_key)),
            req,  # (a cancel at period end alone: open to a narrowed tenant)
        )
        res = await self._subscription(obj)
        if req.proration != "create_prorations":
            return res
        return res.model_copy(update={"pending_prorations": await self._pending_prorations(obj)})

    async def _pending_prorations(
        self, obj: Mapping[str, Any]
    ) -> tuple[gw_base.ProrationLineResult, ...]:
        """The subscription's proration items not invoiced yet: Stripe's pending invoice
        items of its customer (``GET /v1/invoiceitems?pending=true&customer=``, reads,
        no key; the list takes no subscription filter, so every page is read and the
        subscription's kept). Read after the update took effect: a refusal of the read
        (a key restricted from invoice items) answers the update without its lines, never
        turns it into a failure; a retryable failure is raised, as the invoices' read
        after any write is (the update sent again is answered from its key)."""
        customer = obj.get("customer")
        customer = customer.get("id") if isinstance(customer, Mapping) else customer
        items: list[Mapping[str, Any]] = []
        params: dict[str, Any] = {"customer": customer, "pending": True, "limit": PENDING_PAGE}
        try:
            while True:
                found = await self._call(
                    "update_subscription",
                    lambda: self._v1.invoice_items.list_async(dict(params)),
                )
                page = [i for i in found.get("data") or [] if isinstance(i, Mapping)]
                items += page
                if not found.get("has_more") or not page:
                    break
                params["starting_after"] = page[-1]["id"]
        except GatewayError as exc:
            if exc.retryable:
                raise
            log.warning(
                "stripe: pending invoice items of subscription %s unread (%s): the update "
                "is answered without its pending_prorations",
                obj.get("id"),
                exc.code,
            )
            return ()
        lines = [
            line for i in items if (line := mapping.proration_line(i, str(obj["id"]))) is not None
        ]
        # (oldest change first, each change's credit before its charge: Stripe lists
        # them newest first, the two of one change made in the same second)
        return tuple(sorted(lines, key=lambda line: (line.period_start, line.amount >= 0)))

    async def pause_subscription(
        self, req: gw_base.PauseSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """``pause_collection[behavior]=void`` (every invoice made while paused voided:
        nothing billed; Stripe keeps ``status: active`` and the billing cycle), with its
        ``resumes_at`` if given, under the pause's key."""
        pause: dict[str, Any] = {"behavior": "void"}
        if req.resumes_at is not None:
            pause["resumes_at"] = req.resumes_at
        obj = await self._call(
            "pause_subscription",
            lambda: self._v1.subscriptions.update_async(
                req.provider_subscription_id,
                {"pause_collection": pause},
                self._opts(idempotency_key),
            ),
        )
        return await self._subscription(obj)

    async def resume_subscription(
        self, req: gw_base.ResumeSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """``pause_collection=""`` (cleared), under the resume's key: billing goes on
        in the cycle Stripe kept, nothing charged now; the next period is invoiced as
        it begins (the periods begun while paused were voided)."""
        obj = await self._call(
            "resume_subscription",
            lambda: self._v1.subscriptions.update_async(
                req.provider_subscription_id,
                {"pause_collection": ""},
                self._opts(idempotency_key),
            ),
        )
        return await self._subscription(obj)

    async def retrieve_subscription(
        self, req: gw_base.RetrieveSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        # GETs: Stripe keys no read, so no key is sent.
        return await self._subscription(await self._read_subscription(req.provider_subscription_id))

    async def _read_subscription(self, provider_subscription_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve_subscription",
            lambda: self._v1.subscriptions.retrieve_async(provider_subscription_id),
        )

    async def _subscription(
        self, obj: Mapping[str, Any], *, void_open: bool = False
    ) -> gw_base.SubscriptionResult:
        """The subscription with its invoices (newest first, at most
        INVOICES_LISTED_MAX, drafts left out), the newest open one's decline read from
        its PaymentIntent. Since API version 2025-03-31.basil an invoice names its
        PaymentIntent in its ``payments`` alone, which is listed only when expanded."""
        params: dict[str, Any] = {
            "subscription": obj["id"],
            "limit": gw_base.INVOICES_LISTED_MAX,
        }
        if self._payments_listed:
            params["expand"] = ["data.payments"]
        found = await self._call(
            "retrieve_subscription", lambda: self._v1.invoices.list_async(params)
        )
        raw = [i for i in found.get("data") or [] if isinstance(i, Mapping)]
        if void_open:
            # Stripe's cancel only stops collecting them: voided, as the simulator's
            # cancel does (a canceled subscription is never read again here).
            raw = [
                await self._voided(i) if i.get("status") in ("open", "uncollectible") else i
                for i in raw
            ]
        newest_open = next((i for i in raw if i.get("status") == "open"), None)
        declined: dict[str, Any] | None = None
        payment_intent = (
            mapping.invoice_payment_intent(newest_open) if newest_open is not None else None
        )
        if payment_intent is not None:
            declined = await self._call(
                "retrieve_subscription",
                lambda: self._v1.payment_intents.retrieve_async(payment_intent),
            )
        invoices = tuple(
            inv
            for inv in (mapping.invoice(i, declined if i is newest_open else None) for i in raw)
            if inv is not None
        )
        return mapping.subscription(obj, invoices)

    async def _voided(self, invoice: Mapping[str, Any]) -> Mapping[str, Any]:
        """An open invoice voided (a POST that voids once: sent again, Stripe refuses it
        as void already, and the invoice is read as it is)."""
        invoice_id = str(invoice["id"])
        try:
            return await self._call(
                "cancel_subscription",
                lambda: self._v1.invoices.void_invoice_async(invoice_id),
            )
        except GatewayError as exc:
            if exc.retryable or exc.code is not ErrorCode.INVALID_STATE:
                raise
            return await self._call(
                "cancel_subscription", lambda: self._v1.invoices.retrieve_async(invoice_id)
            )

    # ---- payouts and balances --------------------------------------------------------

    async def create_payout(
        self, req: gw_base.CreatePayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        """``POST /v1/payouts`` from the account's (the connected account's, with
        Stripe-Account) available balance to its default external account for the
        currency. Above the available balance Stripe refuses it ``balance_insufficient``
        (no payout exists): ErrorCode.BALANCE_INSUFFICIENT."""
        _require_hundredths("create_payout", req.amount)
        _refuse_unsent(
            payout_amount_problem(req.amount)
            or payment_parameters_problem(None, None, req.metadata)
        )
        params = _without_none(
            amount=req.amount.amount,
            currency=req.amount.currency.lower(),
            method=req.method,
            description=req.description,
            statement_descriptor=req.statement_descriptor,
            metadata=req.metadata,
        )
        obj = await self._call(
            "create_payout",
            lambda: self._v1.payouts.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.payout(obj)

    async def cancel_payout(
        self, req: gw_base.CancelPayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        """``POST /v1/payouts/{id}/cancel`` (a pending payout only; its amount is available
        again). Refused, the payout is read back: one canceled already is the answer (a
        cancel sent again once its key's answer is gone), one in any other status is
        ``invalid_state`` (Stripe names no code of its own for that refusal)."""
        pid = req.provider_payout_id
        try:
            obj = await self._call(
                "cancel_payout",
                lambda: self._v1.payouts.cancel_async(pid, None, self._opts(idempotency_key)),
            )
        except GatewayError as exc:
            if exc.retryable or exc.code not in (
                ErrorCode.INVALID_REQUEST,
                ErrorCode.INVALID_STATE,
            ):
                raise
            held = await self._read_payout(pid)
            status = mapping.payout_status(held.get("status"))
            if status is gw_base.PayoutStatus.CANCELED:
                return mapping.payout(held)
            if status is gw_base.PayoutStatus.PENDING:
                raise  # (refused for something else: the request's own fault)
            raise GatewayError(
                ErrorCode.INVALID_STATE,
                f"cannot cancel a payout that is {held.get('status')} ({exc.message})",
                provider=PROVIDER,
                retryable=False,
                http_status=exc.http_status,
                provider_request_id=exc.provider_request_id,
            ) from exc
        return mapping.payout(obj)

    async def retrieve_payout(
        self, req: gw_base.RetrievePayout, *, idempotency_key: str
    ) -> gw_base.PayoutResult:
        # A GET: Stripe keys no read, so no key is sent.
        return mapping.payout(await self._read_payout(req.provider_payout_id))

    async def _read_payout(self, provider_payout_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve_payout", lambda: self._v1.payouts.retrieve_async(provider_payout_id)
        )

    async def retrieve_balance(
        self, req: gw_base.RetrieveBalance, *, idempotency_key: str
    ) -> gw_base.BalanceResult:
        """``GET /v1/balance`` (the connected account's with Stripe-Account): available and
        pending per currency. A GET: no key."""
        obj = await self._call("retrieve_balance", lambda: self._v1.balance.retrieve_async())
        return mapping.balance(obj)

    # ---- one-off invoices ------------------------------------------------------------

    async def create_invoice(
        self, req: gw_base.CreateInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """A draft Invoice, then one InvoiceItem per line with ``invoice=`` its id (each
        under a key derived from the create's: a replay finds the same invoice and adds
        no line twice), read back with its totals. ``pending_invoice_items_behavior=
        exclude``: an item of the customer's pending elsewhere is not swept in."""
        _require_hundredths("create_invoice", gw_base.Money(amount=1, currency=req.currency))
        _refuse_unsent(
            withdrawn_currency_problem(gw_base.Money(amount=1, currency=req.currency))
            or payment_parameters_problem(None, None, req.metadata)
            or _uncharged_total_problem(req)
        )
        params = _without_none(
            customer=req.provider_customer_id,
            currency=req.currency.lower(),
            collection_method=req.collection_method,
            days_until_due=req.days_until_due,
            default_payment_method=req.provider_payment_method_id,
            default_tax_rates=[r.provider_tax_rate_id for r in req.tax_rates] or None,
            description=req.description,
            metadata=req.metadata,
            pending_invoice_items_behavior="exclude",
            auto_advance=False,  # (finalized by invoice.finalize, never by Stripe's hour)
        )
        made = await self._call(
            "create_invoice",
            lambda: self._v1.invoices.create_async(
                params, self._opts(_derived_key(idempotency_key, "invoice"))
            ),
        )
        invoice_id = str(made["id"])
        for n, line in enumerate(req.lines):
            await self._invoice_item(
                req, invoice_id, line, _derived_key(idempotency_key, f"line{n}")
            )
        read = await self._read_invoice("create_invoice", invoice_id)
        return mapping.one_off_invoice(read, as_made=True)

    async def _invoice_item(
        self, req: gw_base.CreateInvoice, invoice_id: str, line: gw_base.InvoiceLine, key: str
    ) -> None:
        item = {
            "customer": req.provider_customer_id,
            "invoice": invoice_id,
            "currency": req.currency.lower(),
            "description": line.description,
            "quantity": line.quantity,
            "unit_amount_decimal": str(line.unit_amount),
        }
        await self._call(
            "create_invoice",
            lambda: self._v1.invoice_items.create_async(item, self._opts(key)),
        )

    async def update_invoice(
        self, req: gw_base.UpdateInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """A draft changed: ``POST /v1/invoices/{id}`` (description, days_until_due,
        metadata: under a key derived from the command's), then its lines replaced
        (https://docs.stripe.com/api/invoiceitems: items of a draft only): its items read
        (``GET /v1/invoiceitems?invoice=``), those this update did not make deleted
        (``DELETE /v1/invoiceitems/{id}``: one gone already is gone), each line it has
        not made yet added under a derived key, named in the item's metadata. Sent again
        after a cut between two calls, it finishes the same replacement: no line twice,
        none of the old left. Read back, its new totals are the answer. One no longer a
        draft is ``invalid_state`` before any change."""
        iid = req.provider_invoice_id
        if req.lines is not None:
            _require_hundredths("update_invoice", gw_base.Money(amount=1, currency=req.currency))
            _refuse_unsent(_uncharged_total_problem(req))
        if req.metadata is not None:
            _refuse_unsent(payment_parameters_problem(None, None, req.metadata))
        held = await self._read_invoice("update_invoice", iid)
        if held.get("status") != "draft":
            raise GatewayError(
                ErrorCode.INVALID_STATE,
                f"cannot update an invoice that is {held.get('status')}: only a draft's "
                "lines and fields may change",
                provider=PROVIDER,
                retryable=False,
            )
        params = _without_none(
            description=req.description,
            days_until_due=req.days_until_due,
            metadata=req.metadata,
        )
        if params:
            await self._call(
                "update_invoice",
                lambda: self._v1.invoices.update_async(
                    iid, params, self._opts(_derived_key(idempotency_key, "invoice"))
                ),
            )
        if req.lines is not None:
            await self._replace_lines(held, req.lines, idempotency_key)
        read = await self._read_invoice("update_invoice", iid)
        lines = await self._invoice_lines("update_invoice", read)
        return mapping.one_off_invoice(read, as_made=True).model_copy(update={"line_items": lines})

    async def _draft_items(self, operation: str, iid: str) -> list[Mapping[str, Any]]:
        """A draft's invoice items, every page (``GET /v1/invoiceitems?invoice=``)."""
        items: list[Mapping[str, Any]] = []
        params: dict[str, Any] = {"invoice": iid, "limit": PENDING_PAGE}
        while True:
            found = await self._call(
                operation, lambda: self._v1.invoice_items.list_async(dict(params))
            )
            page = [i for i in found.get("data") or [] if isinstance(i, Mapping)]
            items += page
            if not found.get("has_more") or not page:
                return items
            params["starting_after"] = page[-1]["id"]

    async def _require_recorded_lines(
        self, iid: str, lines: tuple[gw_base.InvoiceLine, ...]
    ) -> None:
        """Before a draft is finalized: its items are the lines paystream recorded. An
        update replaces them in several calls (old items deleted, then new ones added);
        parked between two, the draft holds some of each, or none, and finalized so it
        billed them (none: paid at 0, the customer never billed; review h81re F3). Such a
        draft is refused ``invalid_state``, unfinalized. One no longer a draft (finalized
        by this finalize, its answer lost; or otherwise) is left to ``/finalize`` (its
        key's answer, or the read-back of its refusal): its items can change no more."""
        held = await self._read_invoice("finalize_invoice", iid)
        if held.get("status") != "draft":
            return
        items = await self._draft_items("finalize_invoice", iid)
        found = sorted(_item_line(item) for item in items)
        asked = sorted((line.description, line.unit_amount, line.quantity) for line in lines)
        if found != asked:
            raise DraftLinesDiffer(
                f"the draft holds {len(found)} line(s) at Stripe, not the {len(asked)} "
                "recorded: an update of its lines is unfinished (re-drive it: `paystream "
                "dlq replay`) or they were changed at Stripe; send invoice.update again with "
                "the lines to bill, then finalize it",
                provider=PROVIDER,
            )

    async def _replace_lines(
        self, held: Mapping[str, Any], lines: tuple[gw_base.InvoiceLine, ...], key: str
    ) -> None:
        iid = str(held["id"])
        customer = held.get("customer")
        customer = customer.get("id") if isinstance(customer, Mapping) else customer
        tag = hashlib.sha256(key.encode()).hexdigest()[:32]
        items = await self._draft_items("update_invoice", iid)
        made: set[str] = set()
        for item in items:
            meta = item.get("metadata") or {}
            place = meta.get(_UPDATE_LINE) if isinstance(meta, Mapping) else None
            if isinstance(meta, Mapping) and meta.get(_UPDATE_TAG) == tag and place not in made:
                made.add(str(place))
                continue
            await self._delete_item(str(item["id"]))
        for n, line in enumerate(lines):
            if str(n) in made:
                continue
            item = {
                "customer": customer,
                "invoice": iid,
                "currency": str(held.get("currency") or "").lower(),
                "description": line.description,
                "quantity": line.quantity,
                "unit_amount_decimal": str(line.unit_amount),
                "metadata": {
                    _UPDATE_TAG: tag,
                    _UPDATE_LINE: str(n),
                    _UPDATE_LINES: str(len(lines)),
                },
            }
            await self._add_item(item, _derived_key(key, f"line{n}"))

    async def _add_item(self, item: dict[str, Any], key: str) -> None:
        await self._call(
            "update_invoice", lambda: self._v1.invoice_items.create_async(item, self._opts(key))
        )

    async def _delete_item(self, item_id: str) -> None:
        """``DELETE /v1/invoiceitems/{id}`` (takes no key: deleting twice deletes nothing
        more; one gone already, 404, is as asked)."""
        try:
            await self._call("update_invoice", lambda: self._v1.invoice_items.delete_async(item_id))
        except GatewayError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise

    async def finalize_invoice(
        self, req: gw_base.FinalizeInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """``POST /v1/invoices/{id}/finalize``. Refused, the invoice is read back: one no
        longer a draft is ``invalid_state`` (Stripe names no code of its own for it).
        With ``lines``, a draft's items are read first and compared with them (see
        ``_require_recorded_lines``)."""
        iid = req.provider_invoice_id
        if req.lines is not None:
            await self._require_recorded_lines(iid, req.lines)
        try:
            obj = await self._call(
                "finalize_invoice",
                lambda: self._v1.invoices.finalize_invoice_async(
                    iid, {"auto_advance": False}, self._opts(idempotency_key)
                ),
            )
        except GatewayError as exc:
            await self._refused_for_status("finalize_invoice", iid, exc, "draft")
            raise
        return mapping.one_off_invoice(obj)

    async def pay_invoice(
        self, req: gw_base.PayInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """``POST /v1/invoices/{id}/pay`` off session, with the payment method given (a
        decline is Stripe's 402 card error, mapped as a payment's; the invoice stays
        open). Refused otherwise, the invoice is read back: paid or void is
        ``invalid_state``."""
        iid = req.provider_invoice_id
        params = _without_none(payment_method=req.provider_payment_method_id, off_session=True)
        try:
            obj = await self._call(
                "pay_invoice",
                lambda: self._v1.invoices.pay_async(iid, params, self._opts(idempotency_key)),
            )
        except GatewayError as exc:
            if exc.http_status != 402:
                await self._refused_for_status(
                    "pay_invoice", iid, exc, "open", "draft", "uncollectible"
                )
            raise
        return mapping.one_off_invoice(obj)

    async def void_invoice(
        self, req: gw_base.VoidInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """``POST /v1/invoices/{id}/void``: refused, read back: one void already is the
        answer (a void sent again once its key's answer is gone), a paid one
        ``invalid_state``, and a draft is deleted (``DELETE /v1/invoices/{id}``): Stripe
        voids only finalized invoices (docs.stripe.com/api/invoices/void), and a draft
        refused for good stayed at Stripe (review h78o M2). The draft as read, void, is
        the answer: deleted, it can never be finalized or paid."""
        iid = req.provider_invoice_id
        try:
            obj = await self._call(
                "void_invoice",
                lambda: self._v1.invoices.void_invoice_async(
                    iid, None, self._opts(idempotency_key)
                ),
            )
        except GatewayError as exc:
            try:
                if exc.code is ErrorCode.NOT_FOUND:
                    raise
                held = await self._refused_for_status(
                    "void_invoice", iid, exc, "open", "draft", "uncollectible"
                )
            except GatewayError as gone:
                if gone.code is not ErrorCode.NOT_FOUND or req.draft_amount is None:
                    raise
                # A draft gone from Stripe: deleted by a void before (its answer lost, or
                # sent again under a new key). A void's answer: it is never to be paid.
                return gw_base.InvoiceResult(
                    provider_invoice_id=iid,
                    status=gw_base.InvoiceStatus.VOID,
                    amount=req.draft_amount,
                )
            if held is not None and held.get("status") == "void":
                return mapping.one_off_invoice(held)
            if held is not None and held.get("status") == "draft":
                # (A DELETE takes no key: deleting a draft twice deletes nothing more.)
                await self._call("void_invoice", lambda: self._v1.invoices.delete_async(iid))
                made = mapping.one_off_invoice(held)
                return made.model_copy(update={"status": gw_base.InvoiceStatus.VOID})
            raise
        return mapping.one_off_invoice(obj)

    async def mark_invoice_uncollectible(
        self, req: gw_base.MarkInvoiceUncollectible, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        """``POST /v1/invoices/{id}/mark_uncollectible`` (an open invoice only; it may
        still be paid or voided). Refused, read back: one uncollectible already is the
        answer (sent again once its key's answer is gone), any other ``invalid_state``."""
        iid = req.provider_invoice_id
        try:
            obj = await self._call(
                "mark_invoice_uncollectible",
                lambda: self._v1.invoices.mark_uncollectible_async(
                    iid, None, self._opts(idempotency_key)
                ),
            )
        except GatewayError as exc:
            held = await self._refused_for_status("mark_invoice_uncollectible", iid, exc, "open")
            if held is not None and held.get("status") == "uncollectible":
                return mapping.one_off_invoice(held)
            raise
        return mapping.one_off_invoice(obj)

    async def retrieve_invoice(
        self, req: gw_base.RetrieveInvoice, *, idempotency_key: str
    ) -> gw_base.InvoiceResult:
        # A GET: Stripe keys no read, so no key is sent. A draft's lines are read with it.
        read = await self._read_invoice("retrieve_invoice", req.provider_invoice_id)
        made = mapping.one_off_invoice(read)
        if made.status is not gw_base.InvoiceStatus.DRAFT:
            return made
        lines = await self._invoice_lines("retrieve_invoice", read)
        return made.model_copy(update={"line_items": lines})

    async def _invoice_lines(
        self, operation: str, invoice: Mapping[str, Any]
    ) -> tuple[gw_base.InvoiceLine, ...] | None:
        """A draft's lines, every one: the first page the invoice carries (``lines``,
        Stripe's first ten), the rest listed after it (``GET /v1/invoices/{id}/lines``,
        ``starting_after``; reads, no key). None unless they are an update's whole
        replacement (``_whole_update``: an update parked part way left a part, which
        recorded, finalize's check of the items would pass and bill)."""
        iid = str(invoice["id"])
        listed = invoice.get("lines")
        found: Mapping[str, Any] = listed if isinstance(listed, Mapping) else {"has_more": True}
        lines: list[Mapping[str, Any]] = []
        params: dict[str, Any] = {"limit": PENDING_PAGE}
        asked = False
        while True:
            page = [line for line in found.get("data") or [] if isinstance(line, Mapping)]
            lines += page
            if not found.get("has_more") or (asked and not page):
                return mapping.invoice_lines(lines) if _whole_update(lines) else None
            if lines:
                params["starting_after"] = str(lines[-1]["id"])
            found = await self._call(
                operation, lambda: self._v1.invoices.line_items.list_async(iid, dict(params))
            )
            asked = True

    async def _read_invoice(self, operation: str, invoice_id: str) -> dict[str, Any]:
        return await self._call(operation, lambda: self._v1.invoices.retrieve_async(invoice_id))

    async def _refused_for_status(
        self, operation: str, invoice_id: str, exc: GatewayError, *allowed: str
    ) -> dict[str, Any] | None:
        """After a refused invoice action: the invoice read back (None when the refusal
        is not about its state: retryable, or another error than a request's), and
        ``invalid_state`` raised when its status is not one the action takes."""
        if exc.retryable or exc.code not in (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_STATE):
            return None
        held = await self._read_invoice("retrieve_invoice", invoice_id)
        status = held.get("status")
        if status in allowed:
            return held  # (refused for something else: the request's own fault)
        if (operation, status) in _ALREADY_SO:
            return held
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            f"cannot {_INVOICE_VERB.get(operation, operation)} an invoice that is {status} "
            f"({exc.message})",
            provider=PROVIDER,
            retryable=False,
            http_status=exc.http_status,
            provider_request_id=exc.provider_request_id,
        ) from exc

    # ---- tax rates -------------------------------------------------------------------

    async def create_tax_rate(
        self, req: gw_base.CreateTaxRate, *, idempotency_key: str
    ) -> gw_base.TaxRateResult:
        """A TaxRate (https://docs.stripe.com/api/tax_rates/create): its percentage sent
        as the decimal string it was given (never a float: Stripe reads the form value)."""
        params = _without_none(
            display_name=req.display_name,
            percentage=req.percentage,
            inclusive=req.inclusive,
            country=req.country,
            state=req.state,
            jurisdiction=req.jurisdiction,
            tax_type=req.tax_type,
            description=req.description,
            metadata=req.metadata,
        )
        obj = await self._call(
            "create_tax_rate",
            lambda: self._v1.tax_rates.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.tax_rate(obj)

    async def archive_tax_rate(
        self, req: gw_base.ArchiveTaxRate, *, idempotency_key: str
    ) -> gw_base.TaxRateResult:
        """Stripe archives a TaxRate by ``active=false`` (it is never deleted)."""
        obj = await self._call(
            "archive_tax_rate",
            lambda: self._v1.tax_rates.update_async(
                req.provider_tax_rate_id, {"active": False}, self._opts(idempotency_key)
            ),
        )
        return mapping.tax_rate(obj)

    # ---- connected accounts (Connect) --------------------------------------------------

    def _platform_only(self, operation: str) -> None:
        """Connected accounts are the platform's: made, linked and read on its own key.
        A tenant acting for a connected account (Stripe-Account) would ask Stripe to make
        accounts under a merchant's account: refused `unsupported` before any call (the
        tenant's setup, not the command: not remembered)."""
        if self.connected_account is not None:
            raise UnsupportedOperation(
                PROVIDER, operation, message=platform_only_problem(self.connected_account)
            )

    async def create_connected_account(
        self, req: gw_base.CreateConnectedAccount, *, idempotency_key: str
    ) -> gw_base.ConnectedAccountResult:
        """``POST /v1/accounts`` (https://docs.stripe.com/api/accounts/create): an
        ``express`` or ``custom`` account in ``country``, its requested capabilities,
        under the command's key."""
        self._platform_only("create_connected_account")
        _refuse_unsent(payment_parameters_problem(None, None, req.metadata))
        params = _without_none(
            type=req.type.value,
            country=req.country,
            email=req.email,
            business_type=req.business_type,
            capabilities={name: {"requested": True} for name in req.capabilities} or None,
            metadata=req.metadata,
        )
        obj = await self._call(
            "create_connected_account",
            lambda: self._v1.accounts.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.connected_account(obj)

    async def create_account_link(
        self, req: gw_base.CreateAccountLink, *, idempotency_key: str
    ) -> gw_base.AccountLinkResult:
        """``POST /v1/account_links`` (type ``account_onboarding``): a bearer URL, valid for
        minutes and one visit. Never logged; its answer is only returned."""
        self._platform_only("create_account_link")
        params = {
            "account": req.provider_account_id,
            "type": "account_onboarding",
            "refresh_url": req.refresh_url,
            "return_url": req.return_url,
        }
        obj = await self._call(
            "create_account_link",
            lambda: self._v1.account_links.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.account_link(obj)

    async def retrieve_connected_account(
        self, req: gw_base.RetrieveConnectedAccount, *, idempotency_key: str
    ) -> gw_base.ConnectedAccountResult:
        """``GET /v1/accounts/{id}`` (a GET: no key)."""
        self._platform_only("retrieve_connected_account")
        aid = req.provider_account_id
        obj = await self._call(
            "retrieve_connected_account", lambda: self._v1.accounts.retrieve_async(aid)
        )
        return mapping.connected_account(obj)

    # ---- transfers (Connect: separate charges and transfers) ---------------------------

    async def create_transfer(
        self, req: gw_base.CreateTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        """``POST /v1/transfers`` (https://docs.stripe.com/api/transfers/create) on the
        platform's key under the command's key: ``destination`` the connected account;
        with a source payment, ``source_transaction`` its charge (the PaymentIntent's
        ``latest_charge``, read first: a GET, no key), whose funds it moves (Stripe
        refuses more than is left of it). Without one, above the available balance
        Stripe refuses it ``balance_insufficient``: ErrorCode.BALANCE_INSUFFICIENT."""
        self._platform_only("create_transfer")
        _require_hundredths("create_transfer", req.amount)
        _refuse_unsent(payment_parameters_problem(None, None, req.metadata))
        source = None
        if req.source_payment_id is not None:
            pid = req.source_payment_id
            pi = await self._call(
                "create_transfer", lambda: self._v1.payment_intents.retrieve_async(pid)
            )
            source = mapping.latest_charge_id(pi)
            if source is None:
                raise GatewayError(
                    ErrorCode.INVALID_STATE,
                    f"payment {pid} has no charge to transfer from",
                    provider=PROVIDER,
                    retryable=False,
                    reached_provider=False,
                )
        params = _without_none(
            amount=req.amount.amount,
            currency=req.amount.currency.lower(),
            destination=req.destination_account,
            source_transaction=source,
            transfer_group=req.transfer_group,
            description=req.description,
            metadata=req.metadata,
        )
        obj = await self._call(
            "create_transfer",
            lambda: self._v1.transfers.create_async(params, self._opts(idempotency_key)),
        )
        return mapping.transfer(obj)

    async def reverse_transfer(
        self, req: gw_base.ReverseTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        """``POST /v1/transfers/{id}/reversals``
        (https://docs.stripe.com/api/transfer_reversals/create) under the command's key:
        ``amount`` (all that is left without it). It answers a TransferReversal: the
        transfer is read back after it (a GET: no key) for what is reversed of it now."""
        self._platform_only("reverse_transfer")
        _refuse_unsent(payment_parameters_problem(None, None, req.metadata))
        tid = req.provider_transfer_id
        params = _without_none(amount=req.amount, metadata=req.metadata)
        await self._call(
            "reverse_transfer",
            lambda: self._v1.transfers.reversals.create_async(
                tid, params, self._opts(idempotency_key)
            ),
        )
        obj = await self._call("reverse_transfer", lambda: self._v1.transfers.retrieve_async(tid))
        return mapping.transfer(obj)

    async def retrieve_transfer(
        self, req: gw_base.RetrieveTransfer, *, idempotency_key: str
    ) -> gw_base.TransferResult:
        """``GET /v1/transfers/{id}`` (https://docs.stripe.com/api/transfers/retrieve; a
        GET: no key): ``amount_reversed`` counts every reversal, those made in the
        Dashboard or by Stripe (an account's negative balance recovered) included."""
        self._platform_only("retrieve_transfer")
        tid = req.provider_transfer_id
        obj = await self._call("retrieve_transfer", lambda: self._v1.transfers.retrieve_async(tid))
        return mapping.transfer(obj)

    async def knows_request(
        self, operation: str, req: BaseModel, *, idempotency_key: str
    ) -> bool | None:
        """Stripe cannot say without acting: a request resent under the key is run."""
        return None

    async def aclose(self) -> None:
        """Close the tenant's HTTP session."""
        if self._http_client is not None:
            await self._http_client.close_async()
