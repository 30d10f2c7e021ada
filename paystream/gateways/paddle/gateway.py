"""PaddleGateway: the PaymentGateway protocol over Paddle Billing's API, through Paddle's
official SDK (paddle-python-sdk: paystream/gateways/paddle/client.py), one client per
tenant.

Paddle is a merchant of record: it charges no card from the API for a one-off payment.
A payment is a transaction (one non-catalog item priced at the amount, tax included,
collected automatically) that its customer pays at Paddle Checkout: ``payment.create``
answers ``requires_action``, its next action the checkout URL, and the payment completes
by webhook (transaction.completed) or ``payment.refresh``. A refund is an adjustment,
which Paddle approves later (``pending``, then settled by webhook or ``refund.refresh``).

Paddle keeps no idempotency keys: a create sent again makes a second object. So every
create first looks for what an earlier try of the same request made (its key's tag in
the object's custom_data, or a refund's reason: references.py): customers by their
email (Paddle keeps one customer per email), transactions among the tenant's API
transactions made since the request can first have been sent (base.REQUEST_SENT_SINCE,
less CLOCK_SKEW_SECONDS), refunds among their transaction's adjustments. Found, it is
answered as made; made with other parameters, the key is refused (idempotency_error)
(docs/paddle.md, "Exactly once without idempotency keys")."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from paystream.gateways import base as gw_base
from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    REQUEST_TRIED_BEFORE,
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
    merged_metadata,
    read_refund_ref,
    require_capability,
    require_operation,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.paddle import mapping, subscriptions
from paystream.gateways.paddle.client import PaddleClient, lost_answer
from paystream.gateways.paddle.errors import PROVIDER, paddle_code, unreadable
from paystream.gateways.paddle.in_flight import REDIS_WAIT_SECONDS, InFlight, new_token
from paystream.gateways.paddle.references import (
    params_digest,
    read_refund_reason,
    refund_reason,
    request_tag,
)
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.tenant_config import (
    narrowed_capabilities,
    refuse_unknown_options,
    required_credential,
)
from paystream.gateways.unsupported import NoConnectedAccounts, NoInvoices, NoPayouts, NoTaxRates
from paystream.money import CURRENCY_EXPONENTS, format_minor
from paystream.tenancy.limits import MAX_FUTURE_SKEW_MS

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "CHECKOUT_TOKEN",
    "CLOCK_SKEW_SECONDS",
    "CURRENCIES",
    "PADDLE_CAPABILITIES",
    "PADDLE_OPTIONS",
    "WEBHOOK_SECRET",
    "PaddleGateway",
    "validate_options",
]

# What Paddle offers through the calls this gateway makes: no PAYMENT_METHODS (Paddle
# saves a payment method at checkout, never from a token by API), no MANUAL_CAPTURE
# (Paddle captures at checkout), no DISPUTES (a chargeback is an adjustment Paddle makes;
# there is no evidence API), no PAYOUTS, TAX (docs/paddle.md). SUBSCRIPTIONS start at
# checkout (subscriptions.py). WEBHOOKS only for a tenant with its notification
# destination's secret key.
PADDLE_CAPABILITIES = frozenset(
    {
        Capability.CUSTOMERS,
        Capability.PAYMENTS,
        Capability.REFUNDS,
        Capability.SUBSCRIPTIONS,
        Capability.WEBHOOKS,
    }
)
WEBHOOK_SECRET = "webhook_secret_key"  # noqa: S105 - the secret's name
PADDLE_OPTIONS = frozenset({"capabilities"})
# The payment "method" of a Paddle payment: its customer chooses one at Paddle Checkout.
CHECKOUT_TOKEN = "checkout"  # noqa: S105 - not a secret
# Paddle's currencies (its reference; paddle-python-sdk's CurrencyCode) that paystream's
# Money takes (money.CURRENCY_EXPONENTS lacks ARS, COP, PEN, RUB and UAH: review h75r1 F8).
_CURRENCY_CODES = (
    "USD EUR GBP JPY AUD CAD CHF HKD SGD SEK BRL CLP CNY CZK DKK HUF ILS INR KRW "
    "MXN NOK NZD PLN THB TRY TWD VND ZAR"
)
CURRENCIES = frozenset(_CURRENCY_CODES.split(" "))
# How far the clocks (the one that stamped the command, up to MAX_FUTURE_SKEW_MS ahead
# of the worker's, and Paddle's that stamps created_at) may disagree: an earlier try is
# looked for from this long before.
CLOCK_SKEW_SECONDS = 120
# Without REQUEST_SENT_SINCE (a direct call): the whole window paystream resends a
# request in (PAYSTREAM_IDEMPOTENCY_TTL_SECONDS at most).
LOOKBACK_SECONDS = 24 * 3600
# Pages of the tenant's transactions read for an earlier try (30 a page): past them
# nothing is created (it cannot be told that none was), and the command is retried.
LOOKUP_PAGES_MAX = 50
_TRANSACTIONS_PER_PAGE = 30
# How long a lookup's answer waits for the try after the one it ran for (a retry comes
# within a second or so; a re-drive later looks afresh).
LOOKUP_KEPT_SECONDS = 30.0
_ADJUSTMENTS_PER_PAGE = 200
_DESCRIPTION_KEY = "paystream_description"
# How a paused subscription resumes (resume_subscription): a new billing period from the
# resume, charged at once (Paddle's default; continuing the paused period fails once
# that period has ended).
_ON_RESUME = "start_new_billing_period"
# The creates sent under an in-flight key (in_flight.py); a customer needs none (one per
# email at Paddle: a second try is refused `customer_already_exists`).
_IN_FLIGHT_CREATES = frozenset({"create_payment", "create_refund", "create_subscription"})


def _capabilities(options: Mapping[str, Any], webhooks: bool = True) -> frozenset[Capability]:
    names = options.get("capabilities")
    if names is None:
        return PADDLE_CAPABILITIES if webhooks else PADDLE_CAPABILITIES - {Capability.WEBHOOKS}
    return narrowed_capabilities(names, PADDLE_CAPABILITIES, "paddle")


def validate_options(options: Mapping[str, Any]) -> None:
    """Refuse, before they are stored, options the gateway would refuse at its first call."""
    refuse_unknown_options(options, PADDLE_OPTIONS, "paddle")
    _capabilities(options)


LIVE_API_BASE = "https://api.paddle.com"
SANDBOX_API_BASE = "https://sandbox-api.paddle.com"


def api_base(api_key: str, configured: str) -> str:
    """Paddle's host for the key: its sandbox for a ``pdl_sdbx_`` key while the setting is
    left at the live default (the environments are different hosts, and a deployment
    may serve sandbox and live tenants: review h75r1 F7); any other setting stands for
    every key (a proxy, the tests' fake)."""
    if configured.rstrip("/") == LIVE_API_BASE and api_key.startswith("pdl_sdbx_"):
        return SANDBOX_API_BASE
    return configured


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _figure(money: tuple[int, str]) -> str:
    """An amount Paddle reported, for a message: in major units where paystream knows
    its currency (Paddle may name one paystream takes no payments in)."""
    amount, currency = money
    if currency in CURRENCY_EXPONENTS:
        return format_minor(amount, currency)
    return f"{amount} minor units of {currency[:8]!r}"


@dataclass
class _Lookup:
    """A create's lookup, and the token of the in-flight key it runs under (its answer
    holds only while that key has stayed this process's)."""

    token: str
    task: asyncio.Task[dict[str, Any] | None]


@dataclass
class _Try:
    """One try of a create, under its in-flight key (in_flight.py): whether its POST was
    sent (from then its thread settles the key), and the call's deadline (the event
    loop's time), past which no wait on Redis goes."""

    tag: str
    token: str
    deadline: float | None = None
    sent: bool = False


def _refused(code: ErrorCode, message: str, *, reached: bool = True) -> GatewayError:
    return GatewayError(
        code,
        message,
        provider=PROVIDER,
        retryable=False,
        http_status=400,
        reached_provider=reached,
    )


class PaddleGateway(NoPayouts, NoTaxRates, NoConnectedAccounts, NoInvoices):
    """Paddle for one tenant (one seller's API key).

    Payouts, tax rates, connected accounts and one-off invoices are not built for it
    (its capabilities lack them: the handler answers `unsupported` before any call):
    gateways/unsupported.py answers them."""

    provider = PROVIDER
    offered = PADDLE_CAPABILITIES
    # Its creates look for an earlier try among objects made since REQUEST_SENT_SINCE:
    # the pipeline sets it (agents/provider_window.py) for gateways that say so.
    finds_earlier_attempts = True

    def __init__(
        self,
        client: PaddleClient,
        *,
        capabilities: frozenset[Capability] = PADDLE_CAPABILITIES,
        tenant_id: str = "",
        redis: Any = None,
    ) -> None:
        self.capabilities = capabilities
        self._client = client
        self._tenant_id = tenant_id
        # Creates in flight, in the fleet's Redis (None: no create is sent). Each request
        # to it ends well inside the call's deadline: a Redis that hangs is refused as
        # one that is down, not taken for Paddle's timeout (in_flight.REDIS_WAIT_SECONDS).
        wait = min(REDIS_WAIT_SECONDS, client.timeout / 4)
        self._in_flight = InFlight(redis, tenant_id, wait_seconds=wait)
        # A create's lookup under way (or done, its answer not yet used), by request tag:
        # a retry after the deadline cut a try short joins it rather than start again
        # from the first page (review h75r1 F4), while its in-flight key is still held.
        self._lookups: dict[str, _Lookup] = {}

    @classmethod
    def from_context(cls, ctx: GatewayContext, deps: GatewayDeps) -> PaddleGateway:
        key = required_credential(ctx, "api_key", PROVIDER, "Paddle")
        validate_options(ctx.options)
        client = PaddleClient(
            key, api_base(key, deps.settings.paddle_api_base), deps.settings.gateway_timeout_seconds
        )
        return cls(
            client,
            capabilities=_capabilities(ctx.options, WEBHOOK_SECRET in ctx.credentials),
            tenant_id=ctx.tenant_id,
            redis=deps.redis,
        )

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        settled: Callable[[bool], None] | None = None,
        req: BaseModel | None = None,
    ) -> dict[str, Any]:
        require_operation(operation, self.capabilities, PADDLE_CAPABILITIES, PROVIDER, req)
        return await self._client.call(method, path, body=body, query=query, settled=settled)

    @staticmethod
    def _one(answer: Mapping[str, Any]) -> dict[str, Any]:
        data = answer.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise unreadable("data is not an entity")
        return data

    @staticmethod
    def _many(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
        data = answer.get("data")
        if not isinstance(data, list):
            raise unreadable("data is not a list")
        return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]

    @staticmethod
    def _has_more(answer: Mapping[str, Any]) -> bool:
        meta = answer.get("meta")
        page = meta.get("pagination") if isinstance(meta, Mapping) else None
        return bool(page.get("has_more")) if isinstance(page, Mapping) else False

    @staticmethod
    def _found(obj: Mapping[str, Any], tag: str, params: str, kind: str) -> bool:
        """Is ``obj`` the one the request under ``tag`` made? Refused when it was made by
        another request under the same key (as a provider's idempotency check refuses)."""
        custom = obj.get("custom_data")
        if not isinstance(custom, Mapping) or custom.get(mapping.REQUEST_KEY) != tag:
            return False
        if custom.get(mapping.PARAMS_KEY) != params:
            raise _refused(
                ErrorCode.IDEMPOTENCY_ERROR,
                f"the key was used for another {kind} request ({obj.get('id')})",
            )
        return True

    def _as_asked(
        self,
        kind: str,
        obj: Mapping[str, Any],
        reported: tuple[int, str],
        asked: tuple[int, str],
        *,
        at_most: bool = False,
    ) -> None:
        """Paddle's ``obj`` is answered as the command's outcome only with the money the
        command asked for (``at_most``: up to that amount, in its currency): Paddle keeps
        no request to hold its figures to, and a discount taken at checkout, an object
        changed at Paddle, or a fault would go out as a success with other figures.
        Otherwise a final ``invalid_state`` (the object named; logged by ids and figures
        only: docs/paddle.md, "The money Paddle reports")."""
        amount, currency = reported
        if currency == asked[1] and (amount == asked[0] or (at_most and 0 < amount <= asked[0])):
            return
        what = f"up to {_figure(asked)}" if at_most else _figure(asked)
        obj_id = str(obj.get("id"))[:64]
        log.error(
            "paddle %s %s of tenant %s reports %s where %s was asked: answered invalid_state, "
            "not as made",
            kind,
            obj_id,
            self._tenant_id,
            _figure(reported),
            what,
        )
        txn_id = obj.get("id") if kind == "transaction" else obj.get("transaction_id")
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            f"Paddle's {kind} {obj_id} reports {_figure(reported)} where {what} was "
            'asked: not answered as made (docs/paddle.md, "The money Paddle reports")',
            provider=PROVIDER,
            retryable=False,
            provider_payment_id=txn_id[:64] if isinstance(txn_id, str) else None,
        )

    def _payment_as_asked(self, txn: Mapping[str, Any], asked: tuple[int, str]) -> PaymentResult:
        self._as_asked("transaction", txn, mapping.transaction_money(txn), asked)
        return mapping.payment(txn)

    # ---- customers -------------------------------------------------------------------

    async def create_customer(self, req: CreateCustomer, *, idempotency_key: str) -> CustomerResult:
        require_operation("create_customer", self.capabilities, PADDLE_CAPABILITIES, PROVIDER)
        if not req.email:
            # (Paddle's customer needs an email, and keeps one customer per email.)
            raise _refused(
                ErrorCode.INVALID_REQUEST, "a Paddle customer needs an email", reached=False
            )
        tag = request_tag(idempotency_key)
        params = params_digest("create_customer", req)
        custom = {**req.metadata, mapping.REQUEST_KEY: tag, mapping.PARAMS_KEY: params}
        if req.description is not None:
            custom[_DESCRIPTION_KEY] = req.description
        body: dict[str, Any] = {"email": req.email, "custom_data": custom}
        if req.name is not None:
            body["name"] = req.name
        try:
            made = await self._call("create_customer", "POST", "customers", body=body)
        except GatewayError as exc:
            if paddle_code(exc) != "customer_already_exists":
                raise
            # One customer per email at Paddle: an earlier try of this request made it
            # (its answer lost), or another customer has the email.
            held = await self._customer_by_email("create_customer", req.email)
            if held is None or not self._found(held, tag, params, "customer"):
                raise _refused(
                    ErrorCode.INVALID_REQUEST,
                    f"Paddle has a customer with this email already "
                    f"({held['id'] if held else 'not listed'}): it keeps one per email, an "
                    "archived (deleted) one's too",
                ) from exc
            return mapping.customer(held)
        return mapping.customer(self._one(made))

    async def _customer_by_email(self, operation: str, email: str) -> dict[str, Any] | None:
        answer = await self._call(operation, "GET", "customers", query={"email": email})
        found = self._many(answer)
        return found[0] if found else None

    async def _live_customer(self, operation: str, customer_id: str) -> dict[str, Any]:
        """The customer, unless archived (paystream's delete): then not found."""
        obj = self._one(await self._call(operation, "GET", f"customers/{customer_id}"))
        if obj.get("status") == "archived":
            raise GatewayError(
                ErrorCode.NOT_FOUND,
                f"customer {customer_id!r} is archived at Paddle (deleted)",
                provider=PROVIDER,
                retryable=False,
                http_status=404,
            )
        return obj

    async def update_customer(self, req: UpdateCustomer, *, idempotency_key: str) -> CustomerResult:
        # (Keyless, as at every provider: sent again, it sets the same fields again.)
        now = await self._live_customer("update_customer", req.provider_customer_id)
        body: dict[str, Any] = {}
        if req.email is not None:
            body["email"] = req.email
        if req.name is not None:
            body["name"] = req.name
        if req.metadata or req.description is not None:
            held = now.get("custom_data")
            current: dict[str, Any] = held if isinstance(held, dict) else {}
            reserved = {k: v for k, v in current.items() if k.startswith("paystream_request")}
            own = mapping.own_metadata(current)
            description = own.pop(_DESCRIPTION_KEY, None)
            custom = {**merged_metadata(own, req.metadata), **reserved}
            if req.description is not None:
                description = req.description
            if description is not None:
                custom[_DESCRIPTION_KEY] = description
            # (Paddle's PATCH replaces custom_data whole: sent whole)
            body["custom_data"] = custom
        if not body:
            return mapping.customer(now)
        path = f"customers/{req.provider_customer_id}"
        return mapping.customer(
            self._one(await self._call("update_customer", "PATCH", path, body=body))
        )

    async def retrieve_customer(
        self, req: RetrieveCustomer, *, idempotency_key: str
    ) -> CustomerDetails:
        obj = await self._live_customer("retrieve_customer", req.provider_customer_id)
        details = mapping.customer_details(obj)
        custom = obj.get("custom_data")
        description = custom.get(_DESCRIPTION_KEY) if isinstance(custom, Mapping) else None
        metadata = {k: v for k, v in details.metadata.items() if k != _DESCRIPTION_KEY}
        return details.model_copy(update={"description": description, "metadata": metadata})

    async def delete_customer(self, req: DeleteCustomer, *, idempotency_key: str) -> CustomerResult:
        # Paddle deletes no customer: archived (its email stays taken). An archived one
        # reads as not found, so a retry after a lost answer meets not_found, counted
        # deleted by the handler (as Stripe's keyless DELETE).
        await self._live_customer("delete_customer", req.provider_customer_id)
        path = f"customers/{req.provider_customer_id}"
        await self._call("delete_customer", "PATCH", path, body={"status": "archived"})
        return CustomerResult(provider_customer_id=req.provider_customer_id, deleted=True)

    # ---- payments --------------------------------------------------------------------

    async def create_payment(self, req: CreatePayment, *, idempotency_key: str) -> PaymentResult:
        operation = "create_payment"
        require_operation(operation, self.capabilities, PADDLE_CAPABILITIES, PROVIDER)
        if req.capture_method is CaptureMethod.MANUAL:
            require_capability(
                Capability.MANUAL_CAPTURE,
                "create_payment(capture=manual)",
                self.capabilities,
                PADDLE_CAPABILITIES,
                PROVIDER,
            )
        if req.provider_payment_method_id != CHECKOUT_TOKEN:
            raise _refused(
                ErrorCode.INVALID_REQUEST,
                f"a Paddle payment is paid by its customer at Paddle Checkout: send "
                f'payment_method_token "{CHECKOUT_TOKEN}" (Paddle charges no card token or '
                "saved payment method from the API for a one-off payment)",
                reached=False,
            )
        if req.amount.currency not in CURRENCIES:
            raise _refused(
                ErrorCode.INVALID_REQUEST,
                f"Paddle takes no payments in {req.amount.currency}",
                reached=False,
            )
        deadline = self._deadline()
        tag = request_tag(idempotency_key)
        params = params_digest(operation, req)
        self._not_dated_ahead()
        joined = self._lookups.get(tag)
        token = joined.token if joined is not None else new_token()
        taken = await self._in_flight.take(tag, token, self._held_for, deadline=deadline)
        if taken and joined is not None and self._lookups.get(tag) is joined:
            # (the key expired since that lookup began: another try may have sent since;
            # looked for afresh, under the key just taken)
            del self._lookups[tag]
        attempt = _Try(tag, token, deadline)
        return await self._while_held(attempt, self._pay_once(req, params, attempt))

    async def _pay_once(self, req: CreatePayment, params: str, attempt: _Try) -> PaymentResult:
        """``create_payment`` under its in-flight key: its lookup, then its POST."""
        operation = "create_payment"
        asked = (req.amount.amount, req.amount.currency)
        earlier = await self._lookup(operation, attempt.tag, params, req, attempt.token)
        if earlier is not None:
            return self._payment_as_asked(earlier, asked)
        body = self._transaction_body(req, attempt.tag, params)
        settled = await self._sending(attempt)
        made = await self._call(operation, "POST", "transactions", body=body, settled=settled)
        return self._payment_as_asked(self._one(made), asked)

    async def _sending(self, attempt: _Try) -> Callable[[bool], None]:
        """Before a create's POST: its key held the whole time the POST may take and
        Paddle may process it after (``idempotency_error`` if it is no longer this try's),
        then left to the POST's thread, which says whether its answer was lost."""
        # (its thread may first wait for a free one, up to the call's deadline: one more
        # timeout; past it the queued POST is cancelled, never sent)
        held_for = self._client.timeout + self._held_for
        await self._in_flight.renew(attempt.tag, attempt.token, held_for, deadline=attempt.deadline)
        attempt.sent = True
        loop = asyncio.get_running_loop()
        margin = self._client.landing_margin
        # (held on while the thread runs: it may run several timeouts, in_flight.py)
        kept = self._in_flight.keep_while_sent(attempt.tag, attempt.token, held_for)

        def settled(lost: bool) -> None:
            self._in_flight.settle_from_thread(
                loop, attempt.tag, attempt.token, margin if lost else None, kept
            )

        return settled

    async def _while_held(self, attempt: _Try, run: Awaitable[T]) -> T:
        """``run`` (a create's lookup and POST), the key released once its answer is known:
        made, found, or refused. Not released when it may still land: a POST sent whose
        answer was lost (its thread sets the key to expire after the landing margin), or
        one under way when the deadline cut the try short (its thread settles the key),
        nor while a lookup cut short holds it for the next try (``_drop_lookup``)."""
        try:
            result = await run
        except GatewayError as exc:
            if not (attempt.sent and lost_answer(exc)) and not self._lookup_holds(attempt):
                await self._in_flight.release_briefly(attempt.tag, attempt.token)
            raise
        except BaseException:  # (cancelled: not awaited, the deadline has passed)
            if not attempt.sent and not self._lookup_holds(attempt):
                self._in_flight.release_soon(attempt.tag, attempt.token)
            raise
        await self._in_flight.release_briefly(attempt.tag, attempt.token)
        return result

    def _lookup_holds(self, attempt: _Try) -> bool:
        lookup = self._lookups.get(attempt.tag)
        return lookup is not None and lookup.token == attempt.token

    @staticmethod
    def _transaction_body(req: CreatePayment, tag: str, params: str) -> dict[str, Any]:
        custom = {**req.metadata, mapping.REQUEST_KEY: tag, mapping.PARAMS_KEY: params}
        name = req.description or "Payment"
        price = {
            "description": name[:255],
            "name": name[:150],
            # The amount is what the customer pays: Paddle's tax is inside it.
            "tax_mode": "internal",
            "unit_price": {"amount": str(req.amount.amount), "currency_code": req.amount.currency},
            "product": {"name": name[:150], "tax_category": "standard"},
        }
        body: dict[str, Any] = {
            "items": [{"quantity": 1, "price": price}],
            "currency_code": req.amount.currency,
            "collection_mode": "automatic",
            "custom_data": custom,
        }
        if req.provider_customer_id is not None:
            body["customer_id"] = req.provider_customer_id
        return body

    def _deadline(self) -> float:
        """The deadline of the call a create runs in (the loop's time): the call timeout
        from now (the policy's limit, PAYSTREAM_GATEWAY_TIMEOUT_SECONDS, as the SDK's).
        Each wait on Redis ends before it: after a long lookup, a renewal waited a whole
        REDIS_WAIT_SECONDS ran past it, and a hung Redis was taken for Paddle's timeout."""
        return asyncio.get_running_loop().time() + self._client.timeout

    @property
    def _held_for(self) -> float:
        """How long a create's in-flight key is held: its POST's thread may run the SDK's
        timeout, and Paddle may make the request up to the landing margin after that."""
        return self._client.timeout + self._client.landing_margin

    @staticmethod
    def _not_dated_ahead() -> None:
        """A command dated more than MAX_FUTURE_SKEW_MS past this worker's clock (a
        producer's clock ahead, on a topic with producer timestamps) is not made until
        its time is near: made now, a redelivery after a crash would look for it only
        from that later time, and miss it (review h75r1 F2). Made only within the skew,
        its lookup from the record time less CLOCK_SKEW_SECONDS covers its first try."""
        since = REQUEST_SENT_SINCE.get()
        ahead = 0.0 if since is None else since - time.time() - MAX_FUTURE_SKEW_MS / 1000
        if ahead > 0:
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR,
                f"the command is dated {ahead + MAX_FUTURE_SKEW_MS / 1000:.0f}s past this "
                "worker's clock (its producer's clock?): Paddle keeps no idempotency keys, "
                "and a payment is made only once its time is near (docs/paddle.md)",
                provider=PROVIDER,
                retryable=True,
                retry_after=ahead,
                reached_provider=False,
            )

    async def _lookup(
        self,
        operation: str,
        tag: str,
        params: str,
        req: CreatePayment | gw_base.CreateSubscription,
        token: str,
    ) -> dict[str, Any] | None:
        """``_earlier_transaction``, run on past the try's deadline (its pages bounded by
        LOOKUP_PAGES_MAX, each by the SDK's timeout) for the next try to use: sound, as no
        try anywhere can have sent the create since it began while the in-flight key it
        runs under stays held (by this process: the next try joins it only if it takes
        the key back with the lookup's token, in_flight.InFlight.take)."""
        lookup = self._lookups.get(tag)
        if lookup is None or lookup.token != token:
            task = asyncio.ensure_future(self._earlier_transaction(operation, tag, params, req))
            lookup = self._lookups[tag] = _Lookup(token, task)
            # (an answer never used: the command parked, or another's. Dropped after a while)
            task.add_done_callback(functools.partial(self._forget_lookup, tag, lookup))
        try:
            return await asyncio.shield(lookup.task)
        finally:
            if lookup.task.done() and self._lookups.get(tag) is lookup:
                del self._lookups[tag]  # (used, or failed: the next try looks afresh)

    def _forget_lookup(self, tag: str, lookup: _Lookup, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # (retrieved: an unused failure is no "never retrieved")
        loop = asyncio.get_running_loop()
        loop.call_later(LOOKUP_KEPT_SECONDS, self._drop_lookup, tag, lookup)

    def _drop_lookup(self, tag: str, lookup: _Lookup) -> None:
        """A lookup's answer never used (its try cut short, no retry here since): dropped,
        and the in-flight key it held released (no POST was sent under it)."""
        if self._lookups.get(tag) is lookup:
            del self._lookups[tag]
            self._in_flight.release_soon(tag, lookup.token)

    async def _earlier_transaction(
        self,
        operation: str,
        tag: str,
        params: str,
        req: CreatePayment | gw_base.CreateSubscription,
    ) -> dict[str, Any] | None:
        """The transaction an earlier try of this request made, if any: looked for among
        the tenant's API transactions made since the request can first have been sent."""
        since = REQUEST_SENT_SINCE.get()
        if since is None:
            since = time.time() - LOOKBACK_SECONDS
        query = {
            "origin": "api",
            "collection_mode": "automatic",
            "created_at[GTE]": _iso(since - CLOCK_SKEW_SECONDS),
            "order_by": "id[ASC]",  # (an earlier try was made soon after that time)
            "per_page": str(_TRANSACTIONS_PER_PAGE),
        }
        if req.provider_customer_id is not None:
            query["customer_id"] = req.provider_customer_id
        for _ in range(LOOKUP_PAGES_MAX):
            answer = await self._call(operation, "GET", "transactions", query=query)
            page = self._many(answer)
            for txn in page:
                if self._found(txn, tag, params, "payment"):
                    return txn
            if not page or not self._has_more(answer):
                return None
            query["after"] = page[-1]["id"]
        raise GatewayError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"more than {LOOKUP_PAGES_MAX * _TRANSACTIONS_PER_PAGE} Paddle transactions made "
            "since this payment was sent: whether an earlier try made it cannot be told, so "
            "none is made (docs/paddle.md)",
            provider=PROVIDER,
            retryable=True,
        )

    async def capture_payment(self, req: CapturePayment, *, idempotency_key: str) -> PaymentResult:
        raise UnsupportedOperation(PROVIDER, "capture_payment")

    async def _transaction(self, operation: str, transaction_id: str) -> dict[str, Any]:
        return self._one(await self._call(operation, "GET", f"transactions/{transaction_id}"))

    async def cancel_payment(self, req: CancelPayment, *, idempotency_key: str) -> PaymentResult:
        op = "cancel_payment"
        txn = await self._transaction(op, req.provider_payment_id)
        status = txn.get("status")
        if status == "canceled":
            return mapping.payment(txn)  # (canceled before: a retry, nothing to do)
        if status == "draft":
            # Paddle cancels a ready or billed transaction only.
            raise _refused(
                ErrorCode.INVALID_STATE,
                f"Paddle cannot cancel transaction {req.provider_payment_id}: it is a draft "
                "(not yet opened at checkout), and stays payable at its checkout link",
            )
        path = f"transactions/{req.provider_payment_id}"
        try:
            made = await self._call(op, "PATCH", path, body={"status": "canceled"})
        except GatewayError as exc:
            if exc.code is not ErrorCode.INVALID_STATE:
                raise
            # Canceled since the read above (an earlier try's PATCH, its answer lost, made
            # late at Paddle): Paddle refuses canceled to canceled. Read again: canceled,
            # the cancel is done (review h77g F4).
            txn = await self._transaction(op, req.provider_payment_id)
            if txn.get("status") != "canceled":
                raise
            return mapping.payment(txn)
        return self._canceled(self._one(made), req.provider_payment_id)

    def _canceled(self, txn: Mapping[str, Any], transaction_id: str) -> PaymentResult:
        """Paddle's answer to a cancel, answered as the command's outcome only if it is
        that transaction, canceled: a 200 with anything else (the transaction still
        payable, or paid meanwhile; another one) would go out as the cancel's success.
        Otherwise a final ``invalid_state`` naming what Paddle answered (logged by ids
        only), as for the money Paddle reports; a status this version does not know is
        unreadable (parked), as for a read."""
        status = txn.get("status")
        if txn.get("id") == transaction_id and status == "canceled":
            return mapping.payment(txn)
        if txn.get("id") == transaction_id and mapping.payment_status(txn) is None:
            return mapping.payment(txn)  # (raises: unreadable)
        answered = f"transaction {str(txn.get('id'))[:64]} {str(status)[:32]}"
        log.error(
            "paddle answered the cancel of transaction %s of tenant %s with %s: answered "
            "invalid_state, not as canceled",
            transaction_id,
            self._tenant_id,
            answered,
        )
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            f"Paddle answered the cancel of transaction {transaction_id} with {answered}, "
            "not canceled: not answered as canceled (read it back: payment.refresh)",
            provider=PROVIDER,
            retryable=False,
            provider_payment_id=transaction_id,
        )

    async def retrieve_payment(
        self, req: RetrievePayment, *, idempotency_key: str
    ) -> PaymentResult:
        op = "retrieve_payment"
        txn = await self._transaction(op, req.provider_payment_id)
        # (a read names no amount: held to what the transaction's items ask, the price
        # its create set at the command's amount; a discount at checkout is caught)
        self._as_asked(
            "transaction", txn, mapping.transaction_money(txn), mapping.transaction_asked(txn)
        )
        refunded = 0
        if txn.get("status") in ("completed", "paid"):
            refunded = mapping.refunded(await self._adjustments(op, str(txn["id"])))
        return mapping.payment(txn, refunded)

    async def _adjustments(self, operation: str, transaction_id: str) -> list[dict[str, Any]]:
        query = {
            "transaction_id": transaction_id,
            "action": "refund",
            "order_by": "id[ASC]",
            "per_page": str(_ADJUSTMENTS_PER_PAGE),
        }
        found: list[dict[str, Any]] = []
        for _ in range(LOOKUP_PAGES_MAX):
            answer = await self._call(operation, "GET", "adjustments", query=query)
            page = self._many(answer)
            found += page
            if not page or not self._has_more(answer):
                break
            query["after"] = page[-1]["id"]
        return found

    # ---- refunds ---------------------------------------------------------------------

    async def create_refund(self, req: CreateRefund, *, idempotency_key: str) -> RefundResult:
        op = "create_refund"
        require_operation(op, self.capabilities, PADDLE_CAPABILITIES, PROVIDER)
        tag = request_tag(idempotency_key)
        params = params_digest(op, req)
        attempt = _Try(tag, new_token(), self._deadline())
        await self._in_flight.take(tag, attempt.token, self._held_for, deadline=attempt.deadline)
        return await self._while_held(attempt, self._refund_once(req, params, attempt))

    async def _refund_once(self, req: CreateRefund, params: str, attempt: _Try) -> RefundResult:
        """``create_refund`` under its in-flight key: its lookup, then its POST."""
        op = "create_refund"
        tag = attempt.tag
        txn = await self._transaction(op, req.provider_payment_id)
        held = await self._adjustments(op, str(txn["id"]))
        earlier = self._earlier_refund(held, tag, params)
        if earlier is not None:
            return self._refund_as_asked(earlier, txn, req.amount)
        if txn.get("status") not in ("completed", "billed"):
            raise _refused(
                ErrorCode.INVALID_STATE,
                f"transaction {txn['id']} is {txn.get('status')}: Paddle refunds a completed one",
            )
        pending = [a for a in held if a.get("status") == "pending_approval"]
        if pending:
            raise _refused(
                ErrorCode.INVALID_STATE,
                f"refund {pending[0]['id']} of this payment awaits Paddle's approval: Paddle "
                "takes no other refund of it until that one is decided",
            )
        line_items = (txn.get("details") or {}).get("line_items") or []
        if not line_items or not isinstance(line_items[0], Mapping):
            raise unreadable("a transaction without line items")
        total = mapping.amount(
            (txn.get("details") or {}).get("totals", {}).get("grand_total") or "0"
        )
        left = total - mapping.refunded(held, pending_too=True)
        if left <= 0:
            raise _refused(ErrorCode.INVALID_STATE, "nothing is left to refund on the payment")
        amount = left if req.amount is None else req.amount
        if amount > left:
            raise _refused(
                ErrorCode.INVALID_REQUEST,
                f"a refund of {amount} is more than the {left} left to refund",
                reached=False,
            )
        ref = self._own_ref(read_refund_ref(req.metadata))
        body: dict[str, Any] = {
            "action": "refund",
            "transaction_id": txn["id"],
            "reason": refund_reason(req.reason, tag, params, ref),
        }
        if amount == total:
            body["type"] = "full"
        else:
            body["type"] = "partial"
            body["items"] = [
                {"item_id": line_items[0]["id"], "type": "partial", "amount": str(amount)}
            ]
        settled = await self._sending(attempt)
        try:
            made = await self._call(op, "POST", "adjustments", body=body, settled=settled)
        except GatewayError as exc:
            if paddle_code(exc) != "adjustment_pending_refund_request":
                raise
            # A refund awaits approval: an earlier try of this one (made after our
            # lookup: another worker's, or Paddle slower than our margin) or another's.
            made_since = await self._adjustments(op, str(txn["id"]))
            earlier = self._earlier_refund(made_since, tag, params)
            if earlier is None:
                raise
            return self._refund_as_asked(earlier, txn, req.amount)
        return self._refund_as_asked(self._one(made), txn, amount)

    def _refund_as_asked(
        self, adj: Mapping[str, Any], txn: Mapping[str, Any], asked: int | None
    ) -> RefundResult:
        """The refund, if it is for ``asked`` in the payment's currency; ``None`` (what
        remained, when an earlier try made it): up to the payment's total, as what
        remained then is not known now."""
        total, currency = mapping.transaction_money(txn)
        self._as_asked(
            "adjustment",
            adj,
            mapping.adjustment_money(adj),
            (total if asked is None else asked, currency),
            at_most=asked is None,
        )
        return mapping.refund(adj)

    @staticmethod
    def _earlier_refund(held: list[dict[str, Any]], tag: str, params: str) -> dict[str, Any] | None:
        for adj in held:
            their_tag, their_params, _, _ = read_refund_reason(adj.get("reason"), "")
            if their_tag and their_tag == tag[:16]:
                if their_params != params:
                    raise _refused(
                        ErrorCode.IDEMPOTENCY_ERROR,
                        f"the key was used for another refund request ({adj['id']})",
                    )
                return adj
        return None

    def _own_ref(self, ref: tuple[str, str] | None) -> tuple[str, str] | None:
        """paystream's reference, as the handler adds it (a WEBHOOKS tenant's, naming this
        tenant); None for a producer's own value under the key, kept off Paddle."""
        if ref is None or Capability.WEBHOOKS not in self.capabilities:
            return None
        return ref if ref[0] == self._tenant_id else None

    async def retrieve_refund(self, req: RetrieveRefund, *, idempotency_key: str) -> RefundResult:
        answer = await self._call(
            "retrieve_refund", "GET", "adjustments", query={"id": req.provider_refund_id}
        )
        found = [a for a in self._many(answer) if a["id"] == req.provider_refund_id]
        if not found:
            raise GatewayError(
                ErrorCode.NOT_FOUND,
                f"refund {req.provider_refund_id!r} not found",
                provider=PROVIDER,
                retryable=False,
                http_status=404,
            )
        return mapping.refund(found[0])

    async def knows_request(
        self, operation: str, req: BaseModel, *, idempotency_key: str
    ) -> bool | None:
        """Did an earlier try of this very request make its object? Looked for as a create
        looks (read-only); another request's object under the key is not this one.
        While the request's in-flight key is held (a try of it may still be made, here
        or at another worker: read, never taken, and before the lookup, which would miss
        it), it cannot tell now: a retryable ``idempotency_error`` (review h77g F3)."""
        tag = request_tag(idempotency_key)
        if operation in _IN_FLIGHT_CREATES:
            left = await self._in_flight.held(tag)
            if left is not None:
                raise GatewayError(
                    ErrorCode.IDEMPOTENCY_ERROR,
                    "a try of this request may still be made at Paddle (its in-flight key "
                    f"is held, {left:.1f}s left): cannot tell now whether it was",
                    provider=PROVIDER,
                    retryable=True,
                    retry_after=max(left, 0.05),
                    reached_provider=False,
                )
        try:
            if operation == "create_payment" and isinstance(req, CreatePayment):
                params = params_digest(operation, req)
                return await self._earlier_transaction(operation, tag, params, req) is not None
            if operation == "create_subscription" and isinstance(req, gw_base.CreateSubscription):
                params = params_digest(operation, req)
                return await self._earlier_transaction(operation, tag, params, req) is not None
            if operation == "create_customer" and isinstance(req, CreateCustomer):
                if not req.email:
                    return False
                held = await self._customer_by_email(operation, req.email)
                params = params_digest(operation, req)
                return held is not None and self._found(held, tag, params, "customer")
            if operation == "create_refund" and isinstance(req, CreateRefund):
                made = await self._adjustments(operation, req.provider_payment_id)
                params = params_digest(operation, req)
                return self._earlier_refund(made, tag, params) is not None
        except GatewayError as exc:
            if exc.code in (ErrorCode.IDEMPOTENCY_ERROR, ErrorCode.NOT_FOUND):
                return False
            raise
        return False  # (keyless, or no create: nothing to find)

    # ---- not offered by Paddle (docs/paddle.md): answered `unsupported` ------------------

    async def attach_payment_method(
        self, req: AttachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        raise UnsupportedOperation(PROVIDER, "attach_payment_method")

    async def detach_payment_method(
        self, req: DetachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult:
        raise UnsupportedOperation(PROVIDER, "detach_payment_method")

    async def submit_dispute_evidence(
        self, req: SubmitDisputeEvidence, *, idempotency_key: str
    ) -> DisputeResult:
        raise UnsupportedOperation(PROVIDER, "submit_dispute_evidence")

    async def accept_dispute(self, req: AcceptDispute, *, idempotency_key: str) -> DisputeResult:
        raise UnsupportedOperation(PROVIDER, "accept_dispute")

    # ---- subscriptions ---------------------------------------------------------------
    # Paddle makes a subscription when its customer pays, at checkout, a transaction of a
    # recurring price: the create is that transaction (answered requires_action), and the
    # subscription is named by it ever after (subscriptions.py).

    async def create_subscription(
        self, req: gw_base.CreateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        operation = "create_subscription"
        require_operation(operation, self.capabilities, PADDLE_CAPABILITIES, PROVIDER)
        if req.provider_payment_method_id != CHECKOUT_TOKEN:
            raise _refused(
                ErrorCode.INVALID_REQUEST,
                f"a Paddle subscription starts when its customer pays the first period at "
                f'Paddle Checkout: send payment_method_token "{CHECKOUT_TOKEN}" (Paddle '
                "charges no saved payment method from the API for a first period)",
                reached=False,
            )
        if req.tax_rates:
            raise UnsupportedOperation(PROVIDER, "create_subscription(tax_rates=...)")
        if req.amount.currency not in CURRENCIES or req.interval not in subscriptions.INTERVALS:
            raise _refused(
                ErrorCode.INVALID_REQUEST,
                f"Paddle takes no subscriptions in {req.amount.currency} every "
                f"{req.interval_count} {req.interval}",
                reached=False,
            )
        tag = request_tag(idempotency_key)
        params = params_digest(operation, req)
        self._not_dated_ahead()
        joined = self._lookups.get(tag)
        token = joined.token if joined is not None else new_token()
        taken = await self._in_flight.take(tag, token, self._held_for)
        if taken and joined is not None and self._lookups.get(tag) is joined:
            del self._lookups[tag]
        attempt = _Try(tag, token)
        return await self._while_held(attempt, self._subscribe_once(req, params, attempt))

    async def _subscribe_once(
        self, req: gw_base.CreateSubscription, params: str, attempt: _Try
    ) -> gw_base.SubscriptionResult:
        """``create_subscription`` under its in-flight key, as ``_pay_once``: its lookup
        (the request's earlier checkout transaction), then its POST."""
        operation = "create_subscription"
        # (a free trial: its checkout charges nothing, Paddle's recurring items with a
        # trial_period being of zero charge until the trial ends)
        asked = (0 if req.trial_days else req.amount.amount, req.amount.currency)
        txn = await self._lookup(operation, attempt.tag, params, req, attempt.token)
        if txn is None:
            payment = CreatePayment(
                amount=req.amount,
                provider_customer_id=req.provider_customer_id,
                provider_payment_method_id=CHECKOUT_TOKEN,
                description=req.description or "Subscription",
                metadata=req.metadata,
            )
            body = self._transaction_body(payment, attempt.tag, params)
            price = body["items"][0]["price"]
            price["billing_cycle"] = subscriptions.billing_cycle(req.interval, req.interval_count)
            if req.trial_days:
                # (only with one: a request without a trial keeps the body it had)
                price["trial_period"] = subscriptions.trial_period(req.trial_days)
            settled = await self._sending(attempt)
            made = await self._call(operation, "POST", "transactions", body=body, settled=settled)
            txn = self._one(made)
        self._as_asked("transaction", txn, mapping.transaction_money(txn), asked)
        if req.trial_days:
            # (its total is 0 at any price: the price, what each period bills after the
            # trial, held to the command's amount instead)
            priced = (req.amount.amount, req.amount.currency)
            self._as_asked("transaction", txn, mapping.transaction_asked(txn), priced)
        return await self._subscription_of(operation, txn)

    async def _subscription_of(
        self, operation: str, txn: Mapping[str, Any]
    ) -> gw_base.SubscriptionResult:
        """The subscription the checkout transaction ``txn`` stands for: not yet paid, the
        transaction itself; paid, the subscription Paddle made, with its transactions."""
        sub_id = txn.get("subscription_id")
        if not isinstance(sub_id, str) or not sub_id:
            return subscriptions.checkout_subscription(txn)
        sub = self._one(await self._call(operation, "GET", f"subscriptions/{sub_id}"))
        return await self._with_invoices(operation, str(txn["id"]), sub)

    async def _with_invoices(
        self, operation: str, checkout_id: str, sub: Mapping[str, Any]
    ) -> gw_base.SubscriptionResult:
        query = {
            "subscription_id": str(sub["id"]),
            "order_by": "id[DESC]",
            "per_page": str(_TRANSACTIONS_PER_PAGE),
        }
        listed = self._many(await self._call(operation, "GET", "transactions", query=query))
        return subscriptions.subscription(checkout_id, sub, subscriptions.invoices(listed))

    async def _live(self, operation: str, checkout_id: str) -> tuple[dict[str, Any], str | None]:
        """The checkout transaction and the id of the subscription it made (None: not paid
        yet)."""
        txn = await self._transaction(operation, checkout_id)
        sub_id = txn.get("subscription_id")
        return txn, sub_id if isinstance(sub_id, str) and sub_id else None

    async def retrieve_subscription(
        self, req: gw_base.RetrieveSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        op = "retrieve_subscription"
        return await self._subscription_of(
            op, await self._transaction(op, req.provider_subscription_id)
        )

    async def cancel_subscription(
        self, req: gw_base.CancelSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """POST /subscriptions/{id}/cancel, ``effective_from`` next_billing_period (at its
        period's end: a scheduled change) or immediately. Not yet paid, the checkout
        transaction is canceled instead (cancel_payment's rules: a draft cannot be)."""
        op = "cancel_subscription"
        txn, sub_id = await self._live(op, req.provider_subscription_id)
        if sub_id is None:
            if req.at_period_end:
                raise _refused(
                    ErrorCode.INVALID_STATE,
                    "the subscription's first period is not paid yet: it has no period "
                    "to end (cancel it now)",
                )
            await self.cancel_payment(
                CancelPayment(provider_payment_id=req.provider_subscription_id),
                idempotency_key=idempotency_key,
            )
            return await self.retrieve_subscription(
                gw_base.RetrieveSubscription(provider_subscription_id=str(txn["id"])),
                idempotency_key=idempotency_key,
            )
        sub = self._one(await self._call(op, "GET", f"subscriptions/{sub_id}"))
        if sub.get("status") == "canceled":
            return await self._with_invoices(op, str(txn["id"]), sub)  # (a retry: done)
        change = sub.get("scheduled_change")
        if req.at_period_end and isinstance(change, Mapping) and change.get("action") == "cancel":
            return await self._with_invoices(op, str(txn["id"]), sub)  # (scheduled already)
        when = "next_billing_period" if req.at_period_end else "immediately"
        path = f"subscriptions/{sub_id}/cancel"
        made = self._one(await self._call(op, "POST", path, body={"effective_from": when}))
        return await self._with_invoices(op, str(txn["id"]), made)

    async def pause_subscription(
        self, req: gw_base.PauseSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """POST /subscriptions/{id}/pause, ``effective_from: immediately`` (``paused``
        now: nothing billed until resumed), with ``resume_at`` if given and ``on_resume:
        start_new_billing_period`` (resume_subscription's rule, for a resume at
        resume_at too). Paddle takes no key: one paused already is answered as it is (a
        retry's; a change since is the handler's to find: _changed_since_first_attempt)."""
        op = "pause_subscription"
        txn, sub_id = await self._live(op, req.provider_subscription_id)
        if sub_id is None:
            raise _refused(
                ErrorCode.INVALID_STATE,
                "the subscription's first period is not paid yet at Paddle Checkout: "
                "nothing to pause",
            )
        sub = self._one(await self._call(op, "GET", f"subscriptions/{sub_id}"))
        if sub.get("status") == "paused":
            return await self._with_invoices(op, str(txn["id"]), sub)  # (a retry: done)
        body: dict[str, Any] = {"effective_from": "immediately", "on_resume": _ON_RESUME}
        if req.resumes_at is not None:
            body["resume_at"] = _iso(req.resumes_at)
        path = f"subscriptions/{sub_id}/pause"
        made = self._one(await self._call(op, "POST", path, body=body))
        return await self._with_invoices(op, str(txn["id"]), made)

    async def resume_subscription(
        self, req: gw_base.ResumeSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """POST /subscriptions/{id}/resume, ``effective_from: immediately``, ``on_resume:
        start_new_billing_period`` (Paddle's default, and the one that always applies:
        continuing the period paused fails once it has ended): a new billing period from
        now, its full amount charged at once (the tenant limits hold it, as an
        always_invoice's charge). Paddle takes no key, and a resume carries nothing of
        its own (no custom_data): it is sent only while Paddle reads the subscription
        ``paused``, and, for a try that may have reached Paddle before (REQUEST_TRIED_BEFORE:
        parked, re-driven), only while no resume charge of the subscription was made
        since it can first have been sent (_resumed_since). Else answered as read: one
        not paused (a retry's: done), or paused again since (its pause ended: the one
        now is not this command's to end, and a POST would charge a second period)."""
        op = "resume_subscription"
        txn, sub_id = await self._live(op, req.provider_subscription_id)
        if sub_id is None:
            raise _refused(ErrorCode.INVALID_STATE, "the subscription is not paused")
        sub = self._one(await self._call(op, "GET", f"subscriptions/{sub_id}"))
        if sub.get("status") != "paused":
            return await self._with_invoices(op, str(txn["id"]), sub)  # (a retry: done)
        if REQUEST_TRIED_BEFORE.get() and await self._resumed_since(op, sub_id):
            return await self._with_invoices(op, str(txn["id"]), sub)  # (paused again)
        body = {"effective_from": "immediately", "on_resume": _ON_RESUME}
        path = f"subscriptions/{sub_id}/resume"
        made = self._one(await self._call(op, "POST", path, body=body))
        return await self._with_invoices(op, str(txn["id"]), made)

    async def _resumed_since(self, operation: str, sub_id: str) -> bool:
        """Was the subscription resumed since this resume can first have been sent
        (REQUEST_SENT_SINCE, less CLOCK_SKEW_SECONDS; the key window without it)? A
        resume's new period is charged by a transaction of origin ``subscription_update``
        (a paused subscription makes no other: nothing is billed or changed while
        paused). Found, the pause this command meant to end ended then (by its earlier
        try, most likely, whose answer was lost); paused again since, it is not resumed
        twice. (A resume, pause and resume sent within CLOCK_SKEW_SECONDS of each other,
        the last let through, is answered paused too: never charged twice.)"""
        since = REQUEST_SENT_SINCE.get()
        if since is None:
            since = time.time() - LOOKBACK_SECONDS
        query = {
            "subscription_id": sub_id,
            "origin": "subscription_update",
            "created_at[GTE]": _iso(since - CLOCK_SKEW_SECONDS),
            "per_page": "1",
        }
        return bool(self._many(await self._call(operation, "GET", "transactions", query=query)))

    async def update_subscription(
        self, req: gw_base.UpdateSubscription, *, idempotency_key: str
    ) -> gw_base.SubscriptionResult:
        """PATCH /subscriptions/{id}: a new amount as its one non-catalog item priced anew
        (the same product and billing cycle), ``proration_billing_mode: do_not_bill``
        (paystream prorates nothing: the new amount is billed from the next period);
        ``cancel_at_period_end`` false removes a scheduled cancel (``scheduled_change:
        null``), true schedules one (the cancel operation); ``trial_end`` a time moves a
        trialing subscription's ``next_billed_at`` (``do_not_bill``), ``now`` activates it
        (``POST /subscriptions/{id}/activate``: its first period billed now). A new
        payment method is `unsupported`: Paddle's customer changes the card at Paddle's
        own checkout."""
        op = "update_subscription"
        # (a new price needs the tenant's subscriptions; a cancel at period end alone, a
        # stop, its provider's only: base.UNNARROWED_OPERATIONS)
        require_operation(op, self.capabilities, PADDLE_CAPABILITIES, PROVIDER, req)
        read = "retrieve_subscription"
        if req.proration is not None:
            # (not built yet for Paddle's proration_billing_mode: refused before
            # anything is sent)
            raise UnsupportedOperation(PROVIDER, f"update_subscription(proration={req.proration})")
        if req.provider_payment_method_id is not None:
            raise UnsupportedOperation(PROVIDER, "update_subscription(payment_method_id=...)")
        txn, sub_id = await self._live(read, req.provider_subscription_id)
        if sub_id is None:
            raise _refused(
                ErrorCode.INVALID_STATE,
                "the subscription's first period is not paid yet at Paddle Checkout: "
                "nothing to change (cancel it and subscribe anew)",
            )
        checkout_id = str(txn["id"])
        sub = self._one(await self._call(read, "GET", f"subscriptions/{sub_id}"))
        body: dict[str, Any] = {}
        if req.amount is not None:
            price, money = subscriptions.price_of(sub.get("items"))
            if req.amount.currency != money.currency:
                raise _refused(
                    ErrorCode.INVALID_REQUEST,
                    f"the subscription bills {money.currency}: its amount stays in it",
                    reached=False,
                )
            if req.amount.amount != money.amount:
                body["items"] = [
                    {
                        "quantity": 1,
                        "price": {
                            "description": str(price.get("description") or "Subscription"),
                            "name": price.get("name"),
                            "product_id": price.get("product_id"),
                            "tax_mode": "internal",
                            "billing_cycle": price.get("billing_cycle"),
                            "unit_price": {
                                "amount": str(req.amount.amount),
                                "currency_code": req.amount.currency,
                            },
                        },
                    }
                ]
                if sub.get("status") == "trialing" and price.get("trial_period"):
                    # (Paddle's trial is its prices': the new one keeps the trial's)
                    body["items"][0]["price"]["trial_period"] = price["trial_period"]
                body["proration_billing_mode"] = "do_not_bill"
        change = sub.get("scheduled_change")
        canceling = isinstance(change, Mapping) and change.get("action") == "cancel"
        if req.cancel_at_period_end is False and canceling:
            body["scheduled_change"] = None
        trialing = sub.get("status") == "trialing"
        if req.trial_end == "now" and trialing and sub.get("collection_mode") == "manual":
            # ("Only automatically-collected subscriptions ... can be activated": refused
            # before anything is sent, so no PATCH beside it is applied alone)
            raise _refused(
                ErrorCode.INVALID_STATE,
                "Paddle cannot activate the subscription (end its trial now): it is "
                "collected manually (invoiced), and only an automatically-collected one is",
                reached=False,
            )
        if isinstance(req.trial_end, int):
            # A trial's end moved: its next_billed_at (Paddle's "extend or activate a
            # trial"), which needs a proration_billing_mode: nothing is billed now.
            if not trialing:
                raise _refused(
                    ErrorCode.INVALID_STATE,
                    f"the subscription is {sub.get('status')} at Paddle: only a trialing "
                    "subscription's trial_end is moved",
                    reached=False,
                )
            body["next_billed_at"] = _iso(req.trial_end)
            body["proration_billing_mode"] = "do_not_bill"
        if body:
            path = f"subscriptions/{sub_id}"
            sub = self._one(await self._call(op, "PATCH", path, body=body, req=req))
        if req.trial_end == "now" and trialing:
            # The trial ended now: Paddle's "activate a trialing subscription" bills its
            # first period at once (billing dates from now). Paddle takes no key: only a
            # trialing subscription can be activated, so asked again after a lost answer
            # it is not trialing any more, and is read back, never activated (charged)
            # twice. (One not trialing when read: its trial is over, nothing is sent.)
            path = f"subscriptions/{sub_id}/activate"
            try:
                sub = self._one(await self._call(op, "POST", path, body={}, req=req))
            except GatewayError as exc:
                if exc.retryable:
                    raise  # (may have run: asked again, it reads what it holds then)
                # Refused (cannot activate; its charge declined), maybe after the PATCH
                # above was applied (a new amount in effect at Paddle): read back, so the
                # record says what Paddle holds, not what it held before the update.
                await self._read_back(exc, read, checkout_id, str(sub_id))
                raise
        if req.cancel_at_period_end and not canceling:
            path = f"subscriptions/{sub_id}/cancel"
            ends = {"effective_from": "next_billing_period"}
            sub = self._one(await self._call(op, "POST", path, body=ends, req=req))
        return await self._with_invoices(read, checkout_id, sub)

    async def _read_back(
        self, exc: GatewayError, operation: str, checkout_id: str, sub_id: str
    ) -> None:
        """The subscription as Paddle holds it now, on ``exc`` (its ``read_back``); a
        read that fails leaves it None: the refusal is answered as it was."""
        try:
            now = self._one(await self._call(operation, "GET", f"subscriptions/{sub_id}"))
            exc.read_back = await self._with_invoices(operation, checkout_id, now)
        except GatewayError:
            exc.read_back = None

    async def aclose(self) -> None:
        await self._client.aclose()
