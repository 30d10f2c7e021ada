"""SquareGateway: the PaymentGateway protocol over Square's v2 API, through the official
SDK (``squareup``: ``square.AsyncSquare``), one client per tenant.

The SDK's own retries are off (``max_retries: 0`` on every call): the pipeline owns
retries, and resends a request with the same idempotency key. Square takes its keys in
the request BODY, at most 45 characters (CreatePayment, RefundPayment, CreateCard,
CreateDisputeEvidenceText): each is derived from paystream's key by ``square_key``.
Square keys none of CompletePayment, CancelPayment, DisableCard, UpdateCustomer,
DeleteCustomer, SubmitEvidence and AcceptDispute: a state those leave is read back as
itself where it can be told apart (docs/square.md)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydantic
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
    read_payment_ref,
    read_refund_ref,
    require_capability,
    require_operation,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.square import mapping, subscriptions
from paystream.gateways.square.errors import (
    PROVIDER,
    map_square_answer,
    map_transport_error,
)
from paystream.gateways.square.webhooks import (
    REFERENCE_ID_MAX,
    payment_reference,
    refund_reason,
    subscription_source,
)
from paystream.gateways.tenant_config import (
    narrowed_capabilities,
    refuse_unknown_options,
    required_credential,
)
from paystream.gateways.unsupported import (
    PAUSED_NOT_CANCELED,
    NoConnectedAccounts,
    NoInvoices,
    NoPayouts,
    NoTaxRates,
)
from paystream.log_limits import ThrottledLog
from paystream.settings import is_loopback

__all__ = [
    "SQUARE_CAPABILITIES",
    "SQUARE_OPTIONS",
    "WEBHOOK_SECRET",
    "SquareGateway",
    "notification_url_problem",
    "square_key",
]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# What Square offers through the calls this gateway makes. No PARTIAL_CAPTURE:
# CompletePayment completes the whole authorised amount (it takes no amount). WEBHOOKS
# only for a tenant with a webhook signature key (its_capabilities): then its payments
# carry paystream's reference in their reference_id, its refunds at the end of their
# reason (paystream/gateways/square/webhooks.py).
SQUARE_CAPABILITIES = frozenset(
    {
        Capability.CUSTOMERS,
        Capability.PAYMENT_METHODS,
        Capability.PAYMENTS,
        Capability.MANUAL_CAPTURE,
        Capability.REFUNDS,
        Capability.DISPUTES,
        Capability.SUBSCRIPTIONS,
        Capability.WEBHOOKS,
    }
)
# The secret that turns WEBHOOKS on: the tenant's subscription's signature key.
WEBHOOK_SECRET = "webhook_signature_key"  # noqa: S105 - the secret's name

# Tenant gateway options the Square gateway reads; anything else is a mistake.
# (``webhook_url``: the notification URL of the tenant's webhook subscription, exactly as
# configured at Square; read by web/webhooks.py, which checks signatures over it.)
SQUARE_OPTIONS = frozenset({"location_id", "capabilities", "webhook_url"})
# Square's location ids: letters and digits ("L" and 12 more in practice).
_LOCATION_ID = re.compile(r"[A-Za-z0-9]{4,32}")
# At most 45 characters in every idempotency key this gateway sends.
SQUARE_KEY_MAX = 45
_NO_RETRIES: Any = {"max_retries": 0}
# Pages of ListDisputes read for one payment's disputes (Square filters by location
# and state, never by payment): past them the payment reads back without its disputes.
_DISPUTE_PAGES_MAX = 10
# CreateDisputeEvidenceText's evidence_text: at most 500 characters.
_EVIDENCE_TEXT_MAX = 500
# Subscriptions: the keys' stem of the plan and plan variation made per currency and
# cadence; the variation's nominal price (never billed: every subscription is priced by
# its price_override_money: 100 minor units of the currency); the page of the customer's
# newest invoices searched for a subscription's (SearchInvoices's most: it filters by
# location and customer, never by id or subscription).
_PLAN_KEY = "paystream-subscription-plan"
_NOMINAL_PRICE = 100
_INVOICE_PAGE = 200
# Square's subscription statuses that still bill (a cancel or an update applies).
_LIVE = ("ACTIVE", "PENDING", "PAUSED")
_READ, _CANCEL = "retrieve_subscription", "cancel_subscription"
# Square's statuses of a subscription that bills no more, and of an invoice not paid yet
# that can still be canceled.
_ENDED = ("CANCELED", "DEACTIVATED", "COMPLETED")
_UNPAID = ("UNPAID", "SCHEDULED")
_NO_IMMEDIATE_CANCEL = (
    "cancel_subscription(at_period_end=false): Square cancels a subscription only at the "
    "end of its paid period (at once only one never paid: its unpaid invoices canceled); "
    "send at_period_end true"
)
_NO_PAUSE_NOW = (
    "pause_subscription / resume_subscription: Square pauses a subscription only from "
    "the start of its next billing cycle (PauseSubscription), not now; pause or resume "
    "it in Square's dashboard"
)
# Square's invoice statuses of a subscription that was never paid and may be canceled at
# once: its cancel scheduled and these canceled, nothing is ever billed.
_NOTHING_PAID = ("UNPAID", "SCHEDULED", "CANCELED", "FAILED")


_OPTS: dict[str, Any] = {"request_options": _NO_RETRIES}


def _first_declined(sub: Mapping[str, Any], found: list[dict[str, Any]]) -> bool:
    """A subscription just made whose first charge was declined (its one invoice
    UNPAID), its end not scheduled yet."""
    return (
        sub.get("status") in _LIVE
        and not sub.get("canceled_date")
        and len(found) == 1
        and found[0].get("status") == "UNPAID"
    )


def _cancel_scheduled(sub: Mapping[str, Any]) -> bool:
    """A cancel is scheduled (its canceled_date set), or the subscription has ended."""
    return bool(sub.get("canceled_date")) or sub.get("status") in _ENDED


async def _system_today() -> date:
    """Today in UTC (paystream's Square subscriptions bill in timezone UTC)."""
    return datetime.now(UTC).date()


def _bind(
    fn: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    """A call of ``fn`` with ``kwargs``, made when awaited (bound now, in a loop)."""
    return lambda: fn(**kwargs)


def square_key(idempotency_key: str, *parts: str) -> str:
    """Square's key for paystream's: ``ps-`` and 40 hex digits of a SHA-256 over the key
    (and ``parts``, for the several requests one command makes), so that a redelivered
    command sends the same key, within Square's 45 characters. (A prefix of the key
    would make two keys sharing their first 45 characters one.)"""
    text = "\x1f".join((idempotency_key, *parts))
    return "ps-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _capabilities(options: Mapping[str, Any], webhooks: bool = True) -> frozenset[Capability]:
    """The tenant's capabilities: Square's (WEBHOOKS only with ``webhooks``: the tenant has
    a signature key), or as the ``capabilities`` option narrows them."""
    names = options.get("capabilities")
    if names is None:
        return SQUARE_CAPABILITIES if webhooks else SQUARE_CAPABILITIES - {Capability.WEBHOOKS}
    return narrowed_capabilities(
        names,
        SQUARE_CAPABILITIES,
        "square",
    )


def validate_options(options: Mapping[str, Any]) -> None:
    """Refuse, before they are stored, options the gateway would refuse at its first call."""
    refuse_unknown_options(options, SQUARE_OPTIONS, "square")
    location = options.get("location_id")
    if location is None:
        raise ConfigurationError("a square tenant needs --option location_id=<its location id>")
    if not isinstance(location, str) or location.startswith("EAAA"):
        # (Not repeated: an access token pasted here would be stored in clear.)
        raise ConfigurationError(
            "location_id must be a Square location id (it looks like an access token: "
            "give tokens with --secret access_token, which seals them)"
            if isinstance(location, str) and location.startswith("EAAA")
            else "location_id must be a Square location id"
        )
    if _LOCATION_ID.fullmatch(location) is None:
        raise ConfigurationError("location_id must be a Square location id (letters and digits)")
    url = options.get("webhook_url")
    if url is not None:
        problem = notification_url_problem(url)
        if problem is not None:
            raise ConfigurationError(f"webhook_url {problem}")
    _capabilities(options)


def notification_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a webhook subscription's notification URL, or None. Square
    posts to https:// URLs; http:// is taken for this machine only (the tests). Kept as
    given (Square signs the URL as configured, byte for byte): no credentials, no
    fragment, no spaces or control characters."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        return "must be a URL (the subscription's notification URL, as configured at Square)"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "must be a URL of printable ASCII, as Square's subscription shows it"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - (raises for a port out of range)
    except ValueError:
        return "has an invalid port"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials"
    if parts.fragment or url.endswith("#"):
        return "must not have a #fragment"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return None
    return "must be an https:// URL (http:// only to this machine)"


def _dump(obj: Any) -> dict[str, Any]:
    """An SDK model as Square's JSON (its field names: ``last_4``), unset fields left out."""
    if isinstance(obj, Mapping):
        return dict(obj)
    return dict(obj.model_dump(mode="json", by_alias=True, exclude_none=True))


class SquareGateway(NoPayouts, NoTaxRates, NoConnectedAccounts, NoInvoices):
    """Square for one tenant (one seller's access token, one of its locations).

    Payouts, tax rates, connected accounts and one-off invoices are not built for it
    (its capabilities lack them: the handler answers `unsupported` before any call):
    gateways/unsupported.py answers them."""

    provider = PROVIDER
    offered = SQUARE_CAPABILITIES

    def __init__(
        self,
        client: Any,
        *,
        location_id: str,
        capabilities: frozenset[Capability] = SQUARE_CAPABILITIES,
        http_client: httpx.AsyncClient | None = None,
        tenant_id: str = "",
    ) -> None:
        self.capabilities = capabilities
        self._sq: Any = client
        self._location_id = location_id
        self._http_client = http_client
        self._tenant_id = tenant_id
        # Plan variations: made, by (currency, cadence); read, by id (never changed).
        self._variations: dict[tuple[str, str], str] = {}
        self._variation_objects: dict[str, dict[str, Any]] = {}
        # Square's today, which a trial's start_date counts from (tests: the fake's clock).
        self.today: Callable[[], Awaitable[date]] = _system_today

    @classmethod
    def from_context(cls, ctx: GatewayContext, deps: GatewayDeps) -> SquareGateway:
        from square import AsyncSquare

        token = required_credential(ctx, "access_token", PROVIDER, "Square")
        validate_options(ctx.options)
        timeout = deps.settings.gateway_timeout_seconds
        # No redirects followed: every request carries the seller's token.
        http_client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        client = AsyncSquare(
            token=token,
            base_url=deps.settings.square_api_base,
            timeout=timeout,
            httpx_client=http_client,
        )
        return cls(
            client,
            location_id=str(ctx.options["location_id"]),
            capabilities=_capabilities(ctx.options, WEBHOOK_SECRET in ctx.credentials),
            http_client=http_client,
            tenant_id=ctx.tenant_id,
        )

    async def _call(self, operation: str, fn: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """Check the capability, make the call, normalise errors at the boundary."""
        from square.core.api_error import ApiError

        require_operation(operation, self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        try:
            return _dump(await fn())
        except ApiError as exc:
            raise map_square_answer(exc.status_code, exc.body) from None
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise map_transport_error(exc) from exc
        except (pydantic.ValidationError, ValueError) as exc:
            # A success answer the SDK cannot read (a field of a type it does not know):
            # Square ran the request; retried under the key it answers alike. Parked.
            error = GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"an answer from Square this version cannot read ({type(exc).__name__})",
                provider=PROVIDER,
                retryable=True,
            )
            error.unreadable_answer = True
            raise error from exc

    @staticmethod
    def _part(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
        part = obj.get(name)
        if not isinstance(part, Mapping):
            error = GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"Square's answer has no {name}",
                provider=PROVIDER,
                retryable=True,
            )
            error.unreadable_answer = True
            raise error
        return dict(part)

    def _own(self, obj: dict[str, Any], kind: str, some_id: str) -> dict[str, Any]:
        """``obj`` if it is this tenant's location's; another location's (another tenant
        on the same Square seller) reads as not found, and nothing is done to it."""
        if obj.get("location_id") not in (None, self._location_id):
            raise GatewayError(
                ErrorCode.NOT_FOUND,
                f"{kind} {some_id!r} not found",
                provider=PROVIDER,
                retryable=False,
                http_status=404,
            )
        return obj

    async def _payment_now(self, operation: str, payment_id: str) -> dict[str, Any]:
        obj = await self._call(
            operation,
            lambda: self._sq.payments.get(payment_id, request_options=_NO_RETRIES),
        )
        return self._own(self._part(obj, "payment"), "payment", payment_id)

    # ---- customers -------------------------------------------------------------------

    @staticmethod
    def _no_metadata(operation: str, metadata: Mapping[str, str] | None) -> None:
        # A Square customer has no metadata (custom attributes are another API, with
        # definitions of their own): kept nowhere, a later read would report it gone.
        if metadata:
            raise UnsupportedOperation(PROVIDER, f"{operation}(metadata=...)")

    async def create_customer(self, req: CreateCustomer, *, idempotency_key: str) -> CustomerResult:
        self._no_metadata("create_customer", req.metadata)
        params = mapping.customer_params(req.email, req.name, req.description)
        obj = await self._call(
            "create_customer",
            lambda: self._sq.customers.create(
                idempotency_key=square_key(idempotency_key),
                **params,
                request_options=_NO_RETRIES,
            ),
        )
        return mapping.customer(self._part(obj, "customer"))

    async def update_customer(self, req: UpdateCustomer, *, idempotency_key: str) -> CustomerResult:
        self._no_metadata("update_customer", req.metadata)
        params = mapping.customer_params(req.email, req.name, req.description)
        # (Square keys no UpdateCustomer: sent again, it sets the same fields again.)
        obj = await self._call(
            "update_customer",
            lambda: self._sq.customers.update(
                req.provider_customer_id, **params, request_options=_NO_RETRIES
            ),
        )
        return mapping.customer(self._part(obj, "customer"))

    async def retrieve_customer(
        self, req: RetrieveCustomer, *, idempotency_key: str
    ) -> CustomerDetails:
        obj = await self._call(
            "retrieve_customer",
            lambda: self._sq.customers.get(req.provider_customer_id, request_options=_NO_RETRIES),
        )
        return mapping.customer_details(self._part(obj, "customer"))

    async def delete_customer(self, req: DeleteCustomer, *, idempotency_key: str) -> CustomerResult:
        # Keyless at Square: a retry after a lost answer meets NOT_FOUND, which the
        # handler counts as deleted (as Stripe's DELETE).
        await self._call(
            "delete_customer",
            lambda: self._sq.customers.delete(
                req.provider_customer_id, request_options=_NO_RETRIES
            ),
        )
        return CustomerResult(provider_customer_id=req.provider_customer_id, deleted=True)

    # ---- cards -----------------------------------------------------------------------

    async def attach_payment_method(
        self, req: AttachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        obj = await self._call(
            "attach_payment_method",
            lambda: self._sq.cards.create(
                idempotency_key=square_key(idempotency_key),
                source_id=req.token,
                card={"customer_id": req.provider_customer_id},
                request_options=_NO_RETRIES,
            ),
        )
        return mapping.card(self._part(obj, "card"))

    async def detach_payment_method(
        self, req: DetachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        card_id = req.provider_payment_method_id
        now = await self._call(
            "detach_payment_method",
            lambda: self._sq.cards.get(card_id, request_options=_NO_RETRIES),
        )
        if self._part(now, "card").get("enabled") is False:
            # Disabled before (or with its customer): as Stripe answers a detached one.
            raise GatewayError(
                ErrorCode.INVALID_STATE,
                f"card {card_id!r} is disabled already",
                provider=PROVIDER,
                retryable=False,
                http_status=400,
            )
        obj = await self._call(
            "detach_payment_method",
            lambda: self._sq.cards.disable(card_id, request_options=_NO_RETRIES),
        )
        return mapping.card(self._part(obj, "card"))

    # ---- payments --------------------------------------------------------------------

    async def create_payment(self, req: CreatePayment, *, idempotency_key: str) -> PaymentResult:
        manual = req.capture_method is CaptureMethod.MANUAL
        if manual:
            require_capability(
                Capability.MANUAL_CAPTURE, "create_payment(capture_method=manual)",
                self.capabilities, SQUARE_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        # Sent: what Square keeps of a payment. The metadata stays paystream's own (a
        # Square payment has none); a return_url has no use (no redirect step here).
        params: dict[str, Any] = {
            "source_id": req.provider_payment_method_id,
            "amount_money": {"amount": req.amount.amount, "currency": req.amount.currency},
            "autocomplete": not manual,
            "location_id": self._location_id,
        }
        if req.provider_customer_id is not None:
            params["customer_id"] = req.provider_customer_id
        if req.description is not None:
            params["note"] = req.description
        if req.statement_descriptor is not None:
            params["statement_description_identifier"] = req.statement_descriptor
        ref = self._own_ref(read_payment_ref(req.metadata))
        if ref is not None:
            # (Only for a WEBHOOKS tenant: the handler adds it then. A payment id too long
            # for Square's 40 characters goes without: read back by payment.refresh.)
            reference = payment_reference(*ref)
            if reference is not None:
                params["reference_id"] = reference
            else:
                _throttled.warning(
                    ("no reference", ref[0]),
                    "tenant %s: payment ids over %d characters are not named at Square "
                    "(reference_id holds 40): webhooks will not find them; send "
                    "payment.refresh for their disputes",
                    ref[0], REFERENCE_ID_MAX - 9,
                )  # fmt: skip
        obj = await self._call(
            "create_payment",
            lambda: self._sq.payments.create(
                idempotency_key=square_key(idempotency_key), **params, request_options=_NO_RETRIES
            ),
        )
        return mapping.payment(self._part(obj, "payment"))

    async def capture_payment(self, req: CapturePayment, *, idempotency_key: str) -> PaymentResult:
        if req.amount is not None:
            # CompletePayment takes no amount: Square completes what it authorised.
            require_capability(
                Capability.PARTIAL_CAPTURE, "capture_payment(amount=...)",
                self.capabilities, SQUARE_CAPABILITIES, PROVIDER,
            )  # fmt: skip
        now = await self._payment_now("capture_payment", req.provider_payment_id)
        if now.get("status") == "COMPLETED":
            # Keyless CompletePayment: completed already (this command's first request,
            # its answer lost, or one before it): nothing moves, and the answer is the
            # one CompletePayment gave. Refunds made since (a payment is refunded only
            # once completed) are left out: they are their own commands' to record, and
            # a capture re-run after a crash that reported them would count them on the
            # payment before their refund commands, re-run too, count them again (or
            # refuse a refund of the rest as "nothing left": review h73h).
            return mapping.payment({k: v for k, v in now.items() if k != "refunded_money"})
        obj = await self._call(
            "capture_payment",
            lambda: self._sq.payments.complete(
                req.provider_payment_id, request_options=_NO_RETRIES
            ),
        )
        return mapping.payment(self._part(obj, "payment"))

    async def cancel_payment(self, req: CancelPayment, *, idempotency_key: str) -> PaymentResult:
        now = await self._payment_now("cancel_payment", req.provider_payment_id)
        if now.get("status") == "CANCELED":
            return mapping.payment(now)  # (keyless CancelPayment, as capture)
        obj = await self._call(
            "cancel_payment",
            lambda: self._sq.payments.cancel(req.provider_payment_id, request_options=_NO_RETRIES),
        )
        return mapping.payment(self._part(obj, "payment"))

    async def retrieve_payment(
        self, req: RetrievePayment, *, idempotency_key: str
    ) -> PaymentResult:
        """The payment, and its disputes (newest first): Square opens a dispute by itself
        later, and only ListDisputes finds it (it filters by location, not payment)."""
        res = mapping.payment(await self._payment_now("retrieve_payment", req.provider_payment_id))
        if Capability.DISPUTES not in self.capabilities or res.amount_captured == 0:
            return res  # (only a completed payment can be disputed)
        disputes = await self._disputes_of(res.provider_payment_id)
        if not disputes:
            return res
        newest, *older = disputes
        listed = (
            mapping.dispute(newest),
            *(mapping.dispute(d) for d in older if mapping.dispute_status(d.get("state"))),
        )
        return res.model_copy(update={"dispute": listed[0], "disputes": listed})

    async def _disputes_of(self, payment_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_DISPUTE_PAGES_MAX):
            kwargs: dict[str, Any] = {"location_id": self._location_id}
            if cursor:
                kwargs["cursor"] = cursor
            page = await self._call("retrieve_payment", _bind(self._list_disputes, kwargs))
            for d in page.get("disputes") or []:
                disputed = d.get("disputed_payment") if isinstance(d, Mapping) else None
                if (
                    isinstance(disputed, Mapping)
                    and disputed.get("payment_id") == payment_id
                    # (asked for this location's: another's, the filter not applied, is not
                    # this tenant's to see or answer)
                    and d.get("location_id") in (None, self._location_id)
                ):
                    found.append(dict(d))
            cursor = page.get("cursor")
            if not cursor:
                break
        found.sort(key=lambda d: str(d.get("created_at") or ""), reverse=True)
        return found

    async def _list_disputes(self, **kwargs: Any) -> Any:
        """One page of ListDisputes, as Square answers it (the SDK's pager reads on by
        itself; one page at a time keeps the count of calls bounded)."""
        pager = await self._sq.disputes.list(**kwargs, request_options=_NO_RETRIES)
        response = getattr(pager, "response", None)
        if response is not None:
            return response
        return {"disputes": [_dump(d) for d in (pager.items or [])], "cursor": None}

    # ---- refunds ---------------------------------------------------------------------

    async def create_refund(self, req: CreateRefund, *, idempotency_key: str) -> RefundResult:
        require_operation("create_refund", self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        key = square_key(idempotency_key)
        if req.amount is not None:
            return await self._refund(req, key, req.amount)
        # RefundPayment needs an amount: "what is left" is read from the payment. Sent
        # again after a first refund went through, what is left has changed and Square
        # refuses the key with another amount: then each amount refunded on the payment
        # is tried under the key, and only the very first request's body is answered
        # (with its refund) by Square; no other body under the key can refund.
        # (The payment alone, never its disputes: a token without DISPUTES_READ refunds.)
        now = mapping.payment(await self._payment_now("create_refund", req.provider_payment_id))
        left = now.amount_captured - now.amount_refunded
        try:
            if left <= 0:
                raise GatewayError(
                    ErrorCode.INVALID_STATE,
                    "nothing is left to refund on the payment",
                    provider=PROVIDER,
                    retryable=False,
                    http_status=400,
                )
            return await self._refund(req, key, left)
        except GatewayError as exc:
            # Only where the key is spent (Square refused another body under it) or
            # nothing is left (no body can refund): never after Square refused the key's
            # first request, which a new body under it would run as a new refund.
            if exc.code is not ErrorCode.IDEMPOTENCY_ERROR and left > 0:
                raise
            for amount in await self._refunded_amounts(req.provider_payment_id):
                try:
                    return await self._refund(req, key, amount)
                except GatewayError as again:
                    if again.retryable:
                        raise
            raise

    async def _refund(self, req: CreateRefund, key: str, amount: int) -> RefundResult:
        payment = await self._payment_now("create_refund", req.provider_payment_id)
        currency = str(payment.get("amount_money", {}).get("currency"))
        params: dict[str, Any] = {
            "payment_id": req.provider_payment_id,
            "amount_money": {"amount": amount, "currency": currency},
        }
        ref = self._own_ref(read_refund_ref(req.metadata))
        if ref is not None:
            # A Square refund has no reference: paystream's is named at the end of its
            # reason (only for a WEBHOOKS tenant: the handler adds it then).
            params["reason"] = refund_reason(req.reason, *ref)
        elif req.reason is not None:
            params["reason"] = req.reason
        obj = await self._call(
            "create_refund",
            lambda: self._sq.refunds.refund_payment(
                idempotency_key=key, **params, request_options=_NO_RETRIES
            ),
        )
        return mapping.refund(self._part(obj, "refund"))

    async def _refunded_amounts(self, payment_id: str) -> list[int]:
        obj = await self._call(
            "create_refund",
            lambda: self._sq.payments.get(payment_id, request_options=_NO_RETRIES),
        )
        amounts: list[int] = []
        for refund_id in self._part(obj, "payment").get("refund_ids") or []:
            got = await self._call(
                "create_refund",
                _bind(self._sq.refunds.get, {"refund_id": refund_id, **_OPTS}),
            )
            amount = int(self._part(got, "refund")["amount_money"]["amount"])
            if amount not in amounts:
                amounts.append(amount)
        return amounts

    async def retrieve_refund(self, req: RetrieveRefund, *, idempotency_key: str) -> RefundResult:
        obj = await self._call(
            "retrieve_refund",
            lambda: self._sq.refunds.get(req.provider_refund_id, request_options=_NO_RETRIES),
        )
        refund = self._own(self._part(obj, "refund"), "refund", req.provider_refund_id)
        return mapping.refund(refund)

    # ---- disputes --------------------------------------------------------------------

    async def _dispute(self, operation: str, dispute_id: str) -> dict[str, Any]:
        obj = await self._call(
            operation, lambda: self._sq.disputes.get(dispute_id, request_options=_NO_RETRIES)
        )
        return self._own(self._part(obj, "dispute"), "dispute", dispute_id)

    async def submit_dispute_evidence(
        self, req: SubmitDisputeEvidence, *, idempotency_key: str
    ) -> DisputeResult:
        op = "submit_dispute_evidence"
        dispute_id = req.provider_dispute_id
        require_operation(op, self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        current = await self._dispute(op, dispute_id)
        state = current.get("state")
        # Submitted already: keyless SubmitEvidence, maybe this command's with its answer
        # lost. Its evidence is sent again under the same keys: Square answers each as
        # it did (a key's successful answer) only if it was added; then the dispute is
        # answered as it is. Any refused: submitted otherwise, invalid_state.
        submitted = req.submit and state in mapping.SUBMITTED_STATES
        refused = GatewayError(
            ErrorCode.INVALID_STATE,
            f"dispute {dispute_id!r} is {state} and takes no evidence",
            provider=PROVIDER,
            retryable=False,
            http_status=400,
        )
        if state not in mapping.ANSWERABLE_STATES and not submitted:
            raise refused
        # One text evidence per field, each under its own key (a redelivery adds none).
        # Square takes at most 500 characters a text: a longer one goes in parts, each
        # under its own key (never cut: submitted, evidence cannot be added to).
        for name, text in sorted(req.evidence.items()):
            whole = f"{name}: {text}"
            for n, start in enumerate(range(0, len(whole), _EVIDENCE_TEXT_MAX)):
                parts = ("evidence", name) if n == 0 else ("evidence", name, str(n))
                params = {
                    "dispute_id": dispute_id,
                    "idempotency_key": square_key(idempotency_key, *parts),
                    "evidence_type": mapping.evidence_type(name),
                    "evidence_text": whole[start : start + _EVIDENCE_TEXT_MAX],
                    **_OPTS,
                }
                try:
                    await self._call(op, _bind(self._sq.disputes.create_evidence_text, params))
                except GatewayError as exc:
                    if not submitted or exc.retryable:
                        raise
                    raise refused from None
        if not req.submit or submitted:
            return mapping.dispute(current)
        obj = await self._call(
            op,
            lambda: self._sq.disputes.submit_evidence(dispute_id, request_options=_NO_RETRIES),
        )
        return mapping.dispute(self._part(obj, "dispute"))

    async def accept_dispute(self, req: AcceptDispute, *, idempotency_key: str) -> DisputeResult:
        op = "accept_dispute"
        require_operation(op, self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        current = await self._dispute(op, req.provider_dispute_id)
        if current.get("state") == "ACCEPTED":
            return mapping.dispute(current)  # (accepted before: a redelivery, keyless)
        obj = await self._call(
            op,
            lambda: self._sq.disputes.accept(req.provider_dispute_id, request_options=_NO_RETRIES),
        )
        return mapping.dispute(self._part(obj, "dispute"))

    def _own_ref(self, ref: tuple[str, str] | None) -> tuple[str, str] | None:
        """paystream's reference, as the handler adds it (a WEBHOOKS tenant's, naming this
        tenant); None for a producer's own value under the key, kept off Square."""
        if ref is None or Capability.WEBHOOKS not in self.capabilities:
            return None
        return ref if ref[0] == self._tenant_id else None

    async def read_payment(self, provider_payment_id: str) -> dict[str, Any]:
        """The Square payment as Square answers it (its reference_id names paystream's
        payment): a dispute event's, read by web/webhooks.py. Another location's (another
        tenant on the same seller) reads as not found, as every read by id does."""
        return await self._payment_now("retrieve_payment", provider_payment_id)

    # ---- subscriptions ---------------------------------------------------------------
    # A subscription bills a plan variation (one endless phase of a cadence, made once
    # per currency and cadence) at its own price_override_money, charged to its card on
    # file. Square keys CreateSubscription and UpsertCatalogObject; not
    # UpdateSubscription, CancelSubscription or DeleteSubscriptionAction: each of those
    # is asked only after a read shows it is still to be done (docs/square.md).

    def _cadence(self, req: gw_base.CreateSubscription) -> str:
        """Square's cadence for the request, or `unsupported` before any call: a shape
        Square cannot bill (no such cadence; tax rates, not built)."""
        cadence = subscriptions.cadence_for(req.interval, req.interval_count)
        if cadence is None:
            every = sorted(f"{n} {i}" for i, n in subscriptions.CADENCES)
            raise UnsupportedOperation(
                PROVIDER,
                f"create_subscription(interval={req.interval}, "
                f"interval_count={req.interval_count}): Square bills only its cadences "
                f"(every {', '.join(every)})",
            )
        if req.tax_rates:
            raise UnsupportedOperation(PROVIDER, "create_subscription(tax_rates=...)")
        return cadence

    async def _plan_variation(self, currency: str, cadence: str, gone: str = "") -> str:
        """The plan variation billing ``cadence`` in ``currency``: a SUBSCRIPTION_PLAN and
        its SUBSCRIPTION_PLAN_VARIATION made by UpsertCatalogObject under keys derived
        from the pair alone, so that every create (every tenant on the seller) finds the
        same ones while Square keeps the keys. Its price is nominal, never billed: each
        subscription carries its own price_override_money. ``gone``: the variation that
        was deleted at Square (its Dashboard); the keys then derive from it too, so that
        every worker makes the same one in its place (the pair's own keys would replay
        the deleted one)."""
        known = self._variations.get((currency, cadence))
        if known is not None and known != gone:
            return known
        op = "create_subscription"
        name = f"paystream {cadence.lower().replace('_', ' ')} {currency}"
        plan_obj = {
            "type": "SUBSCRIPTION_PLAN",
            "id": "#plan",
            "subscription_plan_data": {"name": name},
        }
        plan = await self._call(
            op,
            _bind(
                self._sq.catalog.object.upsert,
                {
                    "idempotency_key": square_key(_PLAN_KEY, currency, cadence, gone),
                    "object": plan_obj,
                    **_OPTS,
                },
            ),
        )
        plan_id = str(self._part(plan, "catalog_object")["id"])
        phase = {
            "cadence": cadence,
            "ordinal": 0,
            "pricing": {
                "type": "STATIC",
                "price_money": {"amount": _NOMINAL_PRICE, "currency": currency},
            },
        }
        variation_obj = {
            "type": "SUBSCRIPTION_PLAN_VARIATION",
            "id": "#variation",
            "subscription_plan_variation_data": {
                "name": name,
                "subscription_plan_id": plan_id,
                "phases": [phase],
            },
        }
        made = await self._call(
            op,
            _bind(
                self._sq.catalog.object.upsert,
                {
                    "idempotency_key": square_key(_PLAN_KEY, currency, cadence, plan_id, gone),
                    "object": variation_obj,
                    **_OPTS,
                },
            ),
        )
        variation = self._part(made, "catalog_object")
        self._variations[(currency, cadence)] = str(variation["id"])
        self._variation_objects[str(variation["id"])] = variation
        return str(variation["id"])

    async def create_subscription(
        self, req: gw_base.CreateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """CreateSubscription under the command's key. Square charges the card on file for
        the first period at once; a trial is a start_date ``trial_days`` on (PENDING,
        nothing invoiced until then: price_override_money prices every phase, so no free
        phase could). A declined first charge leaves its invoice UNPAID (emailed) and the
        subscription ACTIVE, billing on: its end is scheduled (CancelSubscription, after
        the first period), so it is answered incomplete, nothing more billed, the invoice
        still payable (paid, it reads active). The metadata stays paystream's own (a
        Square subscription has none); a WEBHOOKS tenant's subscription is named in its
        ``source.name``, for its events."""
        op = "create_subscription"
        require_operation(op, self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        cadence = self._cadence(req)
        variation_id = await self._plan_variation(req.amount.currency, cadence)
        try:
            return await self._create_subscription(req, idempotency_key, variation_id)
        except GatewayError as exc:
            refused = exc.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_REQUEST)
            if exc.retryable or not refused or not await self._variation_gone(variation_id):
                raise
        # (deleted or disabled at Square since this worker made or read it: made again,
        # once; the create refused made nothing, so it is sent again under its key)
        self._variations.pop((req.amount.currency, cadence), None)
        self._variation_objects.pop(variation_id, None)
        variation_id = await self._plan_variation(req.amount.currency, cadence, variation_id)
        return await self._create_subscription(req, idempotency_key, variation_id)

    async def _variation_gone(self, variation_id: str) -> bool:
        """The plan variation is gone at Square: not found, read as deleted, or not
        present at the tenant's location (a plan disabled in the Dashboard)."""
        try:
            got = await self._call(
                "create_subscription",
                _bind(self._sq.catalog.object.get, {"object_id": variation_id, **_OPTS}),
            )
        except GatewayError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return True
            raise
        obj = self._part(got, "object")
        here = self._location_id
        present = (
            here in (obj.get("present_at_location_ids") or [])
            if obj.get("present_at_all_locations") is False
            else here not in (obj.get("absent_at_location_ids") or [])
        )
        return bool(obj.get("is_deleted")) or not present

    async def _create_subscription(
        self, req: gw_base.CreateSubscription, idempotency_key: str, variation_id: str
    ) -> gw_base.SubscriptionResult:
        op = "create_subscription"
        params = {
            "idempotency_key": square_key(idempotency_key),
            "location_id": self._location_id,
            "plan_variation_id": variation_id,
            "customer_id": req.provider_customer_id,
            "card_id": req.provider_payment_method_id,
            "price_override_money": {"amount": req.amount.amount, "currency": req.amount.currency},
            "timezone": "UTC",
            **_OPTS,
        }
        ref = self._own_ref(gw_base.read_subscription_ref(req.metadata))
        name = subscription_source(*ref) if ref is not None else None
        if name is not None:
            # (its events find paystream's subscription by it: a WEBHOOKS tenant's only)
            params["source"] = {"name": name}
        start = None
        if req.trial_days:
            # Square starts (bills) it at the start of that UTC day: a day more than the
            # trial, so that no trial is cut short by the time of day it was made (review
            # h78l L4): it lasts trial_days to trial_days + 1.
            start = await self.today() + timedelta(days=req.trial_days + 1)
            params["start_date"] = start.isoformat()
        try:
            obj = await self._call(op, _bind(self._sq.subscriptions.create, params))
        except GatewayError as exc:
            if start is None or exc.code is not ErrorCode.IDEMPOTENCY_ERROR:
                raise
            # The key is spent by another body: a try whose answer was lost before a UTC
            # midnight sent the day before's start date (review h78l H1). Within the
            # key's day no earlier one: that body is answered with the subscription it
            # made (any other body under the key is refused again).
            params["start_date"] = (start - timedelta(days=1)).isoformat()
            obj = await self._call(op, _bind(self._sq.subscriptions.create, params))
        sid = str(self._part(obj, "subscription")["id"])
        # (read back: a replayed create answers the subscription as it was made)
        sub = await self._read_subscription(sid)
        found = await self._invoices_of(sub)
        if _first_declined(sub, found):
            await self._keyless(
                op,
                _bind(self._sq.subscriptions.cancel, {"subscription_id": sid, **_OPTS}),
                sid,
                _cancel_scheduled,
            )
            sub = await self._read_subscription(sid)
        return await self._subscription(sub, found)

    async def _read_subscription(self, subscription_id: str) -> dict[str, Any]:
        """The subscription with its scheduled actions (its CANCEL, if any); another
        location's reads as not found. (A read: open to a narrowed tenant, as every read
        of a subscription here.)"""
        obj = await self._call(
            _READ,
            _bind(
                self._sq.subscriptions.get,
                {"subscription_id": subscription_id, "include": "actions", **_OPTS},
            ),
        )
        return self._own(self._part(obj, "subscription"), "subscription", subscription_id)

    async def read_subscription(self, provider_subscription_id: str) -> dict[str, Any]:
        """The Square subscription as Square answers it (its source name names
        paystream's subscription): an invoice event's, read by web/webhooks.py. Another
        location's reads as not found."""
        return await self._read_subscription(provider_subscription_id)

    async def retrieve_subscription(
        self, req: gw_base.RetrieveSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        sub = await self._read_subscription(req.provider_subscription_id)
        return await self._subscription(sub)

    async def pause_subscription(
        self, req: gw_base.PauseSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """`unsupported`: Square's PauseSubscription schedules a PAUSE at the start of
        the next billing cycle (never now: a date within the cycle under way is moved
        there), its resume at least a cycle later; subscription.pause pauses now."""
        raise UnsupportedOperation(PROVIDER, _NO_PAUSE_NOW)

    async def resume_subscription(
        self, req: gw_base.ResumeSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """`unsupported`, as pause_subscription (a subscription paused in Square's
        dashboard is resumed there)."""
        raise UnsupportedOperation(PROVIDER, _NO_PAUSE_NOW)

    async def cancel_subscription(
        self, req: gw_base.CancelSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """CancelSubscription: a CANCEL action at the end of the paid period (Square has no
        other cancel). At once only for one never paid (incomplete): its cancel
        scheduled and its unpaid invoices canceled, nothing is ever billed, and it is
        answered canceled (as the simulator voids an incomplete's invoice); any other is
        `unsupported`, as is any cancel of one PAUSED (Square's reference cancels an
        active one: PAUSED_NOT_CANCELED). Keyless: read first, and a cancel scheduled
        already (this command's, its answer lost) or done is answered as it is."""
        op = "cancel_subscription"
        require_operation(op, self.capabilities, SQUARE_CAPABILITIES, PROVIDER)
        sid = req.provider_subscription_id
        sub = await self._read_subscription(sid)
        if sub.get("status") == "PAUSED":
            # (paused in Square's dashboard, its record not yet read so: refused as the
            # handler refuses a paused one, nothing sent)
            raise UnsupportedOperation(PROVIDER, op, message=PAUSED_NOT_CANCELED)
        found: list[dict[str, Any]] = []
        if not req.at_period_end:
            found = await self._invoices_of(sub)
            if not found or any(i.get("status") not in _NOTHING_PAID for i in found):
                raise UnsupportedOperation(PROVIDER, _NO_IMMEDIATE_CANCEL)
        if sub.get("status") in _LIVE and not sub.get("canceled_date"):
            await self._keyless(
                op,
                _bind(self._sq.subscriptions.cancel, {"subscription_id": sid, **_OPTS}),
                sid,
                _cancel_scheduled,
            )
            sub = await self._read_subscription(sid)
        if not req.at_period_end:
            # (only paystream's cancel voids an invoice: one the seller ended at Square
            # may still be collected, review h78f F7)
            found = [await self._voided(i) if i.get("status") in _UNPAID else i for i in found]
            return await self._subscription(sub, found)
        return await self._subscription(sub)

    async def _keyless(
        self,
        op: str,
        fn: Callable[[], Awaitable[Any]],
        sid: str,
        done: Callable[[Mapping[str, Any]], bool],
    ) -> None:
        """A keyless call sent because a read showed it still to do. Refused (another
        worker did it since that read, or this command's first try racing its retry:
        a second cancel, an action deleted already, a version moved on), the
        subscription is read again: done, the refusal is no failure of this command."""
        try:
            await self._call(op, fn)
        except GatewayError as exc:
            if exc.retryable or exc.code not in (
                ErrorCode.INVALID_STATE,
                ErrorCode.INVALID_REQUEST,
                ErrorCode.NOT_FOUND,
            ):
                raise
            if not done(await self._read_subscription(sid)):
                raise

    async def update_subscription(
        self, req: gw_base.UpdateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """UpdateSubscription (price_override_money, card_id, at the version read: billed
        from the next period, nothing prorated); cancel_at_period_end true is a cancel's
        CANCEL action, false deletes it (DeleteSubscriptionAction). None of these takes
        a key: each is sent only where the subscription read first does not hold it yet,
        so a retry after a lost answer changes nothing twice."""
        op = "update_subscription"
        require_operation(op, self.capabilities, SQUARE_CAPABILITIES, PROVIDER, req)
        if req.proration is not None:
            # (Square does not prorate a price change made by UpdateSubscription:
            # refused before anything is sent)
            raise UnsupportedOperation(PROVIDER, f"update_subscription(proration={req.proration})")
        if req.trial_end is not None:
            # (a Square trial is the subscription's later start_date, made at create: not
            # moved nor cut short by paystream; refused before anything is sent)
            raise UnsupportedOperation(
                PROVIDER,
                "update_subscription(trial_end=...)",
                message="square: a trial is the subscription's later start_date, which "
                "paystream does not move nor end early at Square (trial_end is for the "
                "simulator, Stripe and Paddle): cancel it and subscribe anew to start billing now",
            )
        sid = req.provider_subscription_id
        sub = await self._read_subscription(sid)
        if sub.get("status") not in _LIVE:
            raise GatewayError(
                ErrorCode.INVALID_STATE,
                f"subscription {sid!r} is {sub.get('status')} and is not updated",
                provider=PROVIDER,
                retryable=False,
                reached_provider=False,
            )
        change: dict[str, Any] = {}
        if req.amount is not None:
            price = {"amount": req.amount.amount, "currency": req.amount.currency}
            if sub.get("price_override_money") != price:
                change["price_override_money"] = price
        if req.provider_payment_method_id not in (None, sub.get("card_id")):
            change["card_id"] = req.provider_payment_method_id
        if change:
            wanted = dict(change)
            change["version"] = sub.get("version")
            await self._keyless(
                op,
                _bind(
                    self._sq.subscriptions.update,
                    {"subscription_id": sid, "subscription": change, **_OPTS},
                ),
                sid,
                lambda now: all(now.get(k) == v for k, v in wanted.items()),
            )
        action = subscriptions.cancel_action(sub)
        # (a cancel at period end, scheduled or resumed, is a cancel's: unnarrowed)
        if req.cancel_at_period_end and not sub.get("canceled_date"):
            await self._keyless(
                _CANCEL,
                _bind(self._sq.subscriptions.cancel, {"subscription_id": sid, **_OPTS}),
                sid,
                _cancel_scheduled,
            )
        elif req.cancel_at_period_end is False and action is not None:
            await self._keyless(
                _CANCEL,
                _bind(
                    self._sq.subscriptions.delete_action,
                    {"subscription_id": sid, "action_id": str(action.get("id")), **_OPTS},
                ),
                sid,
                lambda now: not now.get("canceled_date"),
            )
        elif not change:
            return await self._subscription(sub)
        return await self._subscription(await self._read_subscription(sid))

    async def _variation(self, variation_id: str) -> dict[str, Any]:
        """A plan variation (its phases never change once made: kept once read)."""
        known = self._variation_objects.get(variation_id)
        if known is None:
            obj = await self._call(
                _READ, _bind(self._sq.catalog.object.get, {"object_id": variation_id, **_OPTS})
            )
            known = self._variation_objects[variation_id] = self._part(obj, "object")
        return known

    async def _subscription(
        self, sub: Mapping[str, Any], found: list[dict[str, Any]] | None = None
    ) -> gw_base.SubscriptionResult:
        """The subscription with its invoices (newest first, at most INVOICES_LISTED_MAX;
        ``found``: as just read): the ones its invoice_ids name (``_invoices_of``); each
        paid one's payment from its order's tender. An incomplete one ended (never paid,
        no trial: paystream's create scheduled its end) has its unpaid invoice canceled, as Stripe
        voids an expired incomplete's; any other ended one's are left as they are (the
        seller's to collect: review h78f F7)."""
        variation = await self._variation(str(sub.get("plan_variation_id")))
        cadence = subscriptions.phase_cadence(variation)
        phase = variation["subscription_plan_variation_data"]["phases"][0]
        base = phase.get("pricing", {}).get("price_money") if isinstance(phase, Mapping) else None
        if found is None:
            found = await self._invoices_of(sub)
        incomplete = found and subscriptions.never_paid(found) and not subscriptions.was_trial(sub)
        if sub.get("status") in _ENDED and incomplete:
            # (a trial's was never an incomplete: its first charge came after the create,
            # so its end was a cancel at period end's, whose invoices are kept: h78l L3)
            found = [await self._voided(i) if i.get("status") in _UNPAID else i for i in found]
        payments = await self._tendered(found)
        start = subscriptions.start_of(sub)
        invoices = tuple(
            inv
            for inv in (
                subscriptions.invoice(i, start, cadence, payments.get(str(i.get("order_id"))))
                for i in found
            )
            if inv is not None
        )
        price = subscriptions.money_of(base)
        return subscriptions.subscription(sub, cadence, price, invoices, found)

    async def _voided(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """An unpaid invoice of a subscription paystream ended canceled (CancelInvoice, at
        the version read): left, it stays payable from the email Square sent, while
        paystream reads an ended subscription no more (review h73q, as Stripe's are
        voided). Keyless, and sent only while the read shows it unpaid; refused (paid
        or canceled meanwhile), it is read back as it is."""
        invoice_id = str(invoice["id"])
        try:
            got = await self._call(
                _CANCEL,
                _bind(
                    self._sq.invoices.cancel,
                    {"invoice_id": invoice_id, "version": invoice.get("version") or 0, **_OPTS},
                ),
            )
        except GatewayError as exc:
            if exc.retryable or exc.code not in (
                ErrorCode.INVALID_STATE,
                ErrorCode.INVALID_REQUEST,
            ):
                raise
            got = await self._call(
                _READ, _bind(self._sq.invoices.get, {"invoice_id": invoice_id, **_OPTS})
            )
        return self._part(got, "invoice")

    async def _invoices_of(self, sub: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The subscription's newest INVOICES_LISTED_MAX invoices, newest first: the ones
        its ``invoice_ids`` name (Square lists them newest first), whatever else the
        customer was invoiced. Square has no batch read of invoices, and SearchInvoices
        filters by location and customer only (never by id): one page of the customer's
        newest is searched (one call finds them all while the customer has few other
        invoices), and each one named that is not on it is read by GetInvoice. One alone
        is read by GetInvoice (one call either way, and the smaller answer)."""
        ids = [str(i) for i in sub.get("invoice_ids") or []][: gw_base.INVOICES_LISTED_MAX]
        held: dict[str, dict[str, Any]] = {}
        if len(ids) > 1:
            query = {
                "filter": {
                    "location_ids": [self._location_id],
                    "customer_ids": [str(sub.get("customer_id"))],
                },
                "sort": {"field": "INVOICE_SORT_DATE", "order": "DESC"},
            }
            page = await self._call(
                _READ,
                _bind(self._sq.invoices.search, {"query": query, "limit": _INVOICE_PAGE, **_OPTS}),
            )
            wanted = set(ids)
            for inv in page.get("invoices") or []:
                if isinstance(inv, Mapping) and str(inv.get("id")) in wanted:
                    held[str(inv["id"])] = dict(inv)
        for invoice_id in ids:
            if invoice_id not in held:
                got = await self._call(
                    _READ, _bind(self._sq.invoices.get, {"invoice_id": invoice_id, **_OPTS})
                )
                held[invoice_id] = self._own(self._part(got, "invoice"), "invoice", invoice_id)
        return [held[i] for i in ids]

    async def _tendered(self, invoices: list[dict[str, Any]]) -> dict[str, str]:
        """order id → the payment that paid it (an invoice names its order, the order's
        tender its payment); one BatchRetrieveOrders for the paid invoices listed."""
        paid = [
            str(i["order_id"])
            for i in invoices
            if i.get("order_id") and i.get("status") in ("PAID", "PARTIALLY_REFUNDED", "REFUNDED")
        ]
        if not paid:
            return {}
        got = await self._call(
            _READ,
            _bind(
                self._sq.orders.batch_get,
                {"order_ids": paid, "location_id": self._location_id, **_OPTS},
            ),
        )
        tendered: dict[str, str] = {}
        for order in got.get("orders") or []:
            tenders = order.get("tenders") if isinstance(order, Mapping) else None
            for tender in tenders or []:
                if isinstance(tender, Mapping) and tender.get("payment_id"):
                    tendered[str(order["id"])] = str(tender["payment_id"])
        return tendered

    async def knows_request(
        self, operation: str, req: BaseModel, *, idempotency_key: str
    ) -> bool | None:
        """Square cannot say without acting: a request resent under the key is run."""
        return None

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()
