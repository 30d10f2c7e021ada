"""Provider webhooks: ``POST /webhooks/{provider}/{tenant}`` (Stripe, Square, Paddle).

A verified event about a payment paystream made becomes a ``payment.refresh`` command on
the tenant's partition (one about a refund, a ``refund.refresh``; one about a Stripe
subscription or its invoice, a ``subscription.refresh``; one about a Stripe one-off
invoice paystream made, an ``invoice.refresh``; one about a Stripe payout, a
``payout.refresh``; a Stripe ``account.updated`` about a connected account paystream
made, heard on the platform's Connect endpoint, a ``connected_account.refresh``; a
Stripe ``transfer.reversed`` or ``transfer.updated`` about a transfer paystream made, a
``transfer.refresh``), so the payment (or refund, subscription, payout, account,
transfer) is read back from the provider
and its outcome
goes out as any command's does: in order with the tenant's other commands, once (its
command id derives from the event's id, so a webhook sent again is answered from the
idempotency record), and through every rule of the pipeline. An event that brings
nothing paystream has not read (the success of a payment it charged itself, a refund's
success it was answered, a dispute's status it holds, a subscription's status and period
or an invoice's status it holds, a one-off invoice's status it holds or one paid or
void here, a payout's status it holds or a payout failed or
canceled here, an account's flags and requirements it holds or an account rejected
here, a transfer's reversed amount it holds or a transfer reversed entirely here) is
acknowledged and dropped.

A dispute's event (``charge.dispute.*``) names no payment of paystream's: its Dispute
carries none of paystream's metadata. Its PaymentIntent does, and is read from Stripe
with the tenant's key (a GET); the event then goes on as one about that payment, and
its refresh reads the dispute back (the gateway's retrieve_payment lists a disputed
charge's disputes). That read is made in the web server, so it is bounded (review
h72c): never for a suspended tenant (its refresh would be refused), at the tenant's own
pace, a few at once per worker, for a few seconds; past any of them, or when Stripe
cannot answer it, the event is answered 503 and Stripe sends it again.

A Square event is read the same way (paystream/gateways/square/webhooks.py): its
signature is over the subscription's notification URL and the body, the URL taken from
configuration (the tenant's ``webhook_url`` option, else PAYSTREAM_WEBHOOK_BASE_URL +
``/webhooks/square/<tenant>``: behind a proxy the worker never sees the URL Square
posted to); its payment is named by the Square payment's reference_id, its refund by
the end of the refund's reason, its subscription by the Square subscription's
source name, and a dispute's payment by the disputed Square payment, read with the
tenant's key as a Stripe dispute's PaymentIntent is. A subscription's invoice names only
Square's subscription: paystream's is the one a subscription event of the tenant's named,
else the one the Square subscription's source name names (read with the tenant's key
alike), and the tenant's record must hold that Square id. Events of another
location than the tenant's are ignored (Square's location ids are unique across sellers,
so another seller's are too), as a Stripe endpoint ignores another account's.

A Paddle event (paystream/gateways/paddle/webhooks.py) is signed over a timestamp and
the body, as Stripe's: its transaction names paystream's payment in its custom_data, its
adjustment (a refund) paystream's refund at the end of its reason.

Any worker takes a webhook: the tenant registry is everywhere, and the payment's status
is read where the tenant's tables are (forwarded to their owner, as the entity views
are). A webhook needs no operators' token: its signature, under the tenant's own
endpoint secret, is its authentication.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import aiohttp.web
from faust.web import Request, Response, View
from pydantic import SecretStr, ValidationError
from yarl import URL

from paystream import metrics
from paystream.agents.tenants import registry
from paystream.app import ForwardLoop, app, settings
from paystream.client import InvalidCommand, build_command, encoded_for_sending
from paystream.errors import ConfigurationError
from paystream.gateways.base import PaymentStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle import webhooks as paddle_webhooks
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.square import webhooks as square_webhooks
from paystream.gateways.stripe.webhooks import (
    BODY_READ_SECONDS,
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TOLERANCE_SECONDS,
    connected_account_notice,
    dispute_notice,
    disputed_payment_notice,
    invoice_notice,
    payment_notice,
    payout_notice,
    refund_notice,
    subscription_notice,
    transfer_notice,
    verified_event,
)
from paystream.gateways.webhook_notices import (
    BadWebhook,
    ConnectedAccountNotice,
    DisputeNotice,
    InvoiceNotice,
    PaymentNotice,
    PayoutNotice,
    RefundNotice,
    SubscriptionInvoiceNotice,
    SubscriptionNotice,
    TransferNotice,
)
from paystream.ids import derived_id
from paystream.ids import invoice_id as derived_invoice_id
from paystream.log_limits import ThrottledLog
from paystream.origin_seal import ORIGIN_HEADER, OriginSeals
from paystream.streams.codec import KafkaRecord
from paystream.streams.commands import (
    RefreshConnectedAccount,
    RefreshInvoice,
    RefreshPayment,
    RefreshPayout,
    RefreshRefund,
    RefreshSubscription,
    RefreshTransfer,
)
from paystream.streams.pan import contains_card_number
from paystream.streams.topics import commands_topic
from paystream.tables import definitions as t
from paystream.tables.state_machines import (
    INVOICE_TRANSITIONS,
    PAYOUT_MOVES,
    SUBSCRIPTION_TRANSITIONS,
    InvalidState,
    check_payment_transition,
)
from paystream.tables.views import entity_view
from paystream.tenancy.crypto import CryptoError
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import UNREGISTERED, Tenant, TenantStatus
from paystream.tenancy.secrets import secret_opener
from paystream.web.bodies import BodyTooLarge, BodyTooSlow, BodyUnreadable, ClientGone, read_body
from paystream.web.produce import NotProduced
from paystream.web.worker_produce import produce_command

__all__ = ["WebhookView"]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

PROVIDERS = frozenset({"stripe", "square", "paddle"})
SECRET_NAME = "webhook_secret"  # noqa: S105 - the secret's name (Stripe's)
# The tenant secret that signs each provider's events: a Stripe endpoint's signing
# secret, a Square subscription's signature key, a Paddle notification destination's
# secret key.
SECRET_NAMES = {
    "stripe": SECRET_NAME,
    "square": square_webhooks.SECRET_NAME,
    "paddle": paddle_webhooks.SECRET_NAME,
}
# The gateway method reading a disputed payment's provider object (whose metadata, or
# reference_id, names paystream's payment).
_DISPUTED_PAYMENT_READ = {"stripe": "read_payment_intent", "square": "read_payment"}


# What a verified event may be about, once a dispute's is read as its payment's.
_Notice = (
    PaymentNotice
    | RefundNotice
    | SubscriptionNotice
    | PayoutNotice
    | ConnectedAccountNotice
    | TransferNotice
    | InvoiceNotice
)


class _Unavailable(Exception):
    """The answer cannot be given now (tables moving, owner unreachable, broker down)."""


class _DisputeUnread(_Unavailable):
    """A dispute event's PaymentIntent not read, or its read failed: ``why`` is the
    paystream_webhook_dispute_reads_failed_total label."""

    def __init__(self, message: str, why: metrics.DisputeUnreadWhy) -> None:
        super().__init__(message)
        self.why = why


@app.page("/webhooks/{provider}/{tenant}")
class WebhookView(View):
    """A provider's signed event about one tenant's payment or refund."""

    async def post(self, request: Request, provider: str, tenant: str) -> Response:
        if provider not in PROVIDERS:
            return self._answer("(other)", UNREGISTERED, "no_endpoint", 404, _NO_ENDPOINT)
        if (cast(aiohttp.web.Request, request).content_length or 0) > MAX_BODY_BYTES:
            return self._answer(provider, UNREGISTERED, "too_large", 413, _TOO_LARGE)
        if not registry.ready.is_set():
            return self._unavailable(provider, UNREGISTERED, "the tenant registry is loading")
        found = registry.tenants.get(tenant)
        secret = _endpoint_secret(found, provider)
        if found is None or secret is None:
            # One answer for an unknown tenant, another provider's and one without a
            # secret. (A configured endpoint answers an unsigned request 400, as any
            # webhook endpoint does: that a tenant takes webhooks is no secret.)
            return self._answer(provider, UNREGISTERED, "no_endpoint", 404, _NO_ENDPOINT)
        try:
            opened = secret()
        except CryptoError as exc:
            _throttled.warning(
                ("secret", tenant), "webhook for %s: its %s cannot be opened: %s",
                tenant, SECRET_NAMES[provider], exc,
            )  # fmt: skip
            return self._unavailable(provider, tenant, "the endpoint secret cannot be opened")
        notification_url = _notification_url(found) if provider == "square" else None
        if provider == "square" and notification_url is None:
            # Nothing to check its signature over: never taken unsigned. Square sends it
            # again (for 72 hours) once the URL is configured.
            _throttled.warning(
                ("notification url", tenant),
                "webhook for %s: no notification URL is configured to check Square's "
                "signature over: set the tenant's webhook_url option (the subscription's "
                "URL, exactly) or PAYSTREAM_WEBHOOK_BASE_URL; answered 503",
                tenant,
            )  # fmt: skip
            return self._unavailable(provider, tenant, "no notification URL is configured")
        try:
            body = await read_body(
                cast(aiohttp.web.Request, request), MAX_BODY_BYTES, BODY_READ_SECONDS
            )
        except BodyTooLarge:
            return self._answer(provider, tenant, "too_large", 413, _TOO_LARGE)
        except BodyTooSlow:
            return self._answer(provider, tenant, "bad_request", 408, _TOO_SLOW)
        except (BodyUnreadable, ClientGone):
            return self._answer(provider, tenant, "bad_request", 400, _UNREADABLE)
        try:
            if notification_url is not None:
                event = square_webhooks.verified_event(
                    body,
                    request.headers.get(square_webhooks.SIGNATURE_HEADER),
                    opened,
                    notification_url,
                )
            elif provider == "paddle":
                event = paddle_webhooks.verified_event(
                    body, request.headers.get(paddle_webhooks.SIGNATURE_HEADER), opened
                )
            else:
                event = verified_event(body, request.headers.get(SIGNATURE_HEADER), opened)
        except BadWebhook as exc:
            if notification_url is not None:
                # A notification URL other than the subscription's fails every event: the
                # operator is told which one was used (the count alone looks like forgery).
                _throttled.warning(
                    ("bad signature", tenant),
                    "webhook for %s: %s (checked over notification URL %s)",
                    tenant, exc, notification_url,
                )  # fmt: skip
            message = {"error": "bad_signature", "message": str(exc)}
            return self._answer(provider, tenant, "bad_signature", 400, message)
        if provider == "square" and _answered.seen(tenant, event.get("event_id")):
            # Square sends again only what was not answered 2xx: one answered already is a
            # replay (its signature holds no time: a captured one verifies for 73 hours)
            # or a rare duplicate. Nothing read, looked up or sent for it again.
            return self._ignored(provider, tenant, "the event was received already")
        found_notice = _notice(provider, tenant, event)
        expected = _expected_account(provider, found)
        where = "location" if provider == "square" else "account"
        notice: _Notice | None
        if isinstance(found_notice, DisputeNotice):
            if found_notice.account is not None and found_notice.account != expected:
                # (as for a payment's event, below: known before its PaymentIntent is read)
                return self._ignored(provider, tenant, f"another {where}'s dispute")
            if found.status is TenantStatus.SUSPENDED:
                # As its refresh would be (below), before the read: a suspended tenant's
                # key is not used for it, however often Stripe sends the event again.
                suspended: metrics.DisputeUnreadWhy = "suspended"
                metrics.WEBHOOK_DISPUTE_READS_FAILED.labels(provider, tenant, suspended).inc()
                return self._unavailable(provider, tenant, "the tenant is suspended")
            try:
                notice = await _disputed_payment(provider, found, found_notice)
            except _DisputeUnread as exc:
                metrics.WEBHOOK_DISPUTE_READS_FAILED.labels(provider, tenant, exc.why).inc()
                return self._unavailable(provider, tenant, str(exc))
        elif isinstance(found_notice, SubscriptionInvoiceNotice):
            if found_notice.account != expected:
                # (known before its subscription is looked up, or read from Square)
                return self._ignored(provider, tenant, f"another {where}'s invoice")
            if found.status is TenantStatus.SUSPENDED:
                return self._unavailable(provider, tenant, "the tenant is suspended")
            try:
                notice = await _invoiced_subscription(found, found_notice)
            except _Unavailable as exc:
                return self._unavailable(provider, tenant, str(exc))
        else:
            notice = found_notice
        if notice is None:
            why = (
                "not an event about a payment, refund, subscription, one-off invoice, "
                "payout, connected account or transfer paystream made"
            )
            return self._ignored(provider, tenant, why)
        what = _kind(notice)
        if notice.tenant_id != tenant:
            # One Stripe account behind several tenants sends each endpoint every event.
            return self._ignored(provider, tenant, f"another tenant's {what}")
        if notice.account is not None and notice.account != expected:
            # A Connect endpoint hears every connected account's events (each names its
            # account): the tenant's payments are on its own (the platform's, with none).
            # An account's own endpoint names none: its events are that account's. (A
            # Square subscription hears every location's, of every seller that authorised
            # the application: the tenant's are its location's.)
            return self._ignored(provider, tenant, f"another {where}'s {what}")
        command = _refresh(provider, tenant, notice)
        if command is None:
            # (metadata can be edited in the provider's dashboard)
            return self._ignored(provider, tenant, f"the event names no valid {what} id")
        try:
            # Each lookup may be a request to the worker owning the tenant's tables, which
            # serves other tenants too: bounded per tenant, also for events that turn out
            # to bring nothing (review finding: a flood of signed events cost a lookup
            # each, unbounded).
            if not _lookups.take(
                tenant, LOOKUPS_PER_REFRESH * settings.webhook_refreshes_per_second
            ):
                raise _Unavailable("the tenant's webhooks come too fast")
            # A row is written only once the provider has answered its create: one parked
            # with its answer lost would be refreshed before its re-drive, answered
            # not_found, and the event lost (review findings, refunds then payments).
            # The provider is asked to send a recent event again later instead (one sent
            # before the create's answer arrived comes back to find it); an older one is
            # about an entity that may never be recorded here (removed by retention,
            # settled by a person, another deployment's): acknowledged and dropped.
            row = await _entity_row(tenant, notice)
            if row is None:
                what = _kind(notice)
                if _recent(notice.created):
                    raise _Unavailable(f"the {what} is not recorded here yet")
                return self._dropped(provider, tenant, notice, what)
            if row is not None:
                _remember_square_subscription(provider, tenant, row, notice)
                stale = await _known_already(tenant, row, notice)
                if stale is not None:
                    return self._ignored(provider, tenant, stale)
            if found.status is TenantStatus.SUSPENDED:
                # Its refresh would be refused tenant_suspended, and the provider,
                # answered, would not send the event again: it does, until activation.
                raise _Unavailable("the tenant is suspended")
            if not _budget.take(tenant, *_refresh_pace(found)):
                raise _Unavailable("the tenant's webhooks bring refreshes too fast")
            try:
                command_id = await _send(tenant, command)
            except _Unavailable:
                _budget.give_back(tenant)  # nothing sent: the provider's retry may use it
                raise
        except _Unavailable as exc:
            return self._unavailable(provider, tenant, str(exc))
        _answered.remember(provider, tenant)
        metrics.WEBHOOKS.labels(provider, tenant, "refresh").inc()
        return self.json({"received": True, "action": "refresh", "command_id": command_id})

    def _answer(
        self, provider: str, tenant: str, result: str, status: int, body: dict[str, Any]
    ) -> Response:
        metrics.WEBHOOKS.labels(provider, tenant, result).inc()
        return self.json(body, status=status)

    def _dropped(self, provider: str, tenant: str, notice: _Notice, what: str) -> Response:
        """An event about a payment or refund not recorded here, too old to be asked for
        again: its news is lost (a 3-D Secure success while the create waited parked,
        re-driven later: the provider answers it as it first did). Told apart from the
        routine no-news, and logged, so that an operator refreshes it (review h68r)."""
        entity = _entity_id(notice)
        if _dropped_named.take(tenant):
            _throttled.warning(
                # Per payment or refund: each one dropped is to be refreshed by hand, so
                # each is named (review h68w), up to DROPPED_NAMED_PER_MINUTE a tenant.
                ("dropped", tenant, entity),
                "webhook %s for %s dropped: its %s %s is not recorded here and the event "
                "is too old to be sent again; once it is (its create re-driven: "
                "`paystream dlq replay`), send `%s.refresh` for it",
                notice.event_id, tenant, what,
                entity if _loggable(entity) else "(an id not shown)", what,
            )  # fmt: skip
        else:
            # Past them (a provider's backlog, or a tenant's secret signing made-up ids:
            # a line each was a flood; review h68aa), one line a minute says how many.
            _throttled.warning(
                ("dropped", tenant),
                "webhooks for %s: more than %d a minute dropped about payments or refunds "
                "not recorded here, the rest not named (paystream_webhooks_total"
                '{result="dropped"} counts them; the provider\'s event log names them)',
                tenant, DROPPED_NAMED_PER_MINUTE,
            )  # fmt: skip
        _answered.remember(provider, tenant)
        metrics.WEBHOOKS.labels(provider, tenant, "dropped").inc()
        why = f"the {what} is not recorded here"
        return self.json({"received": True, "action": "ignored", "why": why})

    def _ignored(self, provider: str, tenant: str, why: str) -> Response:
        _answered.remember(provider, tenant)
        metrics.WEBHOOKS.labels(provider, tenant, "ignored").inc()
        return self.json({"received": True, "action": "ignored", "why": why})

    def _unavailable(self, provider: str, tenant: str, why: str) -> Response:
        metrics.WEBHOOKS.labels(provider, tenant, "unavailable").inc()
        body = {"error": "unavailable", "message": f"{why}; send it again"}
        return self.json(body, status=503, headers={"Retry-After": "1"})


_NO_ENDPOINT = {"error": "not_found", "message": "no webhook endpoint here"}
_TOO_LARGE = {"error": "payload_too_large", "message": f"at most {MAX_BODY_BYTES} bytes"}
_TOO_SLOW = {"error": "request_timeout", "message": f"the body took over {BODY_READ_SECONDS:g} s"}
_UNREADABLE = {"error": "bad_request", "message": "the body could not be read as sent"}


class _Budget:
    """A token bucket per tenant (this worker's): the refreshes webhooks may bring, which
    pass the tenant's own rate limit (paystream/origin_seal.py)."""

    BURST_SECONDS = 10

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant → (tokens, at)

    def take(self, tenant: str, per_second: int, burst_of: int | None = None) -> bool:
        """``burst_of``: the rate whose ten seconds the bucket holds (``per_second``'s
        unless given)."""
        now = self._clock()
        burst = float((per_second if burst_of is None else burst_of) * self.BURST_SECONDS)
        tokens, at = self._buckets.get(tenant, (burst, now))
        tokens = min(burst, tokens + (now - at) * per_second)
        if tokens < 1:
            self._buckets[tenant] = (tokens, now)
            return False
        self._buckets[tenant] = (tokens - 1, now)
        return True

    def give_back(self, tenant: str) -> None:
        tokens, at = self._buckets.get(tenant, (0.0, self._clock()))
        self._buckets[tenant] = (tokens + 1, at)  # (capped at the burst by the next take)


def _refresh_pace(tenant: Tenant) -> tuple[int, int]:
    """(refreshes a second, the rate whose ten seconds the burst holds) a tenant's
    webhooks may bring: the worker's budget, its rate no more than the tenant's own
    limit where it has one. Its refreshes pass that limit, and the tenant signs its own
    events (its endpoint's secret is its own): each was a provider read and an outcome,
    at 50 a second (review h59h). The burst stays the budget's: a provider's real burst
    (a batch of debits settling) comes back as a burst when answered 503, and a burst
    of the tenant's own size lost most of it for good (review h59i)."""
    rate = settings.webhook_refreshes_per_second
    own = tenant.limits.commands_per_second
    return (rate if own is None else min(rate, own)), rate


class _Answered:
    """Square event ids this worker answered 2xx, per tenant, for as long as a signed one
    verifies (its created_at within MAX_AGE_SECONDS), bounded (the oldest forgotten). A
    fleet would keep them in Redis (SET NX EX) so a replay to another worker is caught
    too. The id being checked is held between seen() and remember() (same task)."""

    MOST = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids: dict[tuple[str, str], float] = {}
        self._current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
            "square_event", default=None
        )

    def seen(self, tenant: str, event_id: Any) -> bool:
        if not isinstance(event_id, str):
            self._current.set(None)
            return False
        key = (tenant, event_id)
        self._current.set(key)
        at = self._ids.get(key)
        return at is not None and self._clock() - at < square_webhooks.MAX_AGE_SECONDS

    def remember(self, provider: str, tenant: str) -> None:
        key = self._current.get()
        if provider != "square" or key is None or key[0] != tenant:
            return
        if len(self._ids) >= self.MOST:
            del self._ids[next(iter(self._ids))]
        self._ids[key] = self._clock()


_answered = _Answered()

# (Registered tenants only reach them: as many buckets as tenants.)
_budget = _Budget()
_lookups = _Budget()
# Lookups of the tenant's tables a webhook budget's refresh may take: most events about
# a payment bring nothing new (the state paystream holds), and they are looked up too.
LOOKUPS_PER_REFRESH = 4


def _endpoint_secret(tenant: Tenant | None, provider: str) -> Callable[[], str] | None:
    """How to open the tenant's endpoint secret, if it has one for ``provider``."""
    name = SECRET_NAMES.get(provider, SECRET_NAME)
    if tenant is None or tenant.gateway != provider or name not in tenant.secrets:
        return None
    opener = _opener()
    if opener is None:  # no master key: no sealed secret can be opened (doctor says so)
        return None

    def opened() -> str:
        value: SecretStr = opener(tenant, name)
        return value.get_secret_value()

    return opened


def _notification_url(tenant: Tenant) -> str | None:
    """The URL a Square tenant's subscription posts to, as configured at Square (and
    signed over): its ``webhook_url`` option, else PAYSTREAM_WEBHOOK_BASE_URL with the
    route's path; None when neither is set."""
    own = tenant.gateway_options.get("webhook_url")
    if isinstance(own, str) and own:
        return own
    base = getattr(settings, "webhook_base_url", None)
    if not base:
        return None
    return f"{base.rstrip('/')}/webhooks/square/{quote(tenant.tenant_id, safe='')}"


def _notice(
    provider: str, tenant: str, event: dict[str, Any]
) -> _Notice | DisputeNotice | SubscriptionInvoiceNotice | None:
    """What a verified event says of the tenant's payment, refund, subscription or
    dispute."""
    if provider == "square":
        return (
            square_webhooks.payment_notice(event, tenant)
            or square_webhooks.refund_notice(event, tenant)
            or square_webhooks.subscription_notice(event, tenant)
            or square_webhooks.dispute_notice(event)
            or square_webhooks.invoice_notice(event)
        )
    if provider == "paddle":
        return (
            paddle_webhooks.payment_notice(event)
            or paddle_webhooks.refund_notice(event, tenant)
            or paddle_webhooks.subscription_notice(event)
        )
    return (
        payment_notice(event)
        or refund_notice(event)
        or subscription_notice(event)
        or invoice_notice(event)
        or payout_notice(event)
        or connected_account_notice(event)
        or transfer_notice(event)
        or dispute_notice(event)
    )


def _expected_account(provider: str, tenant: Tenant) -> str | None:
    """What a notice's ``account`` must be for the event to be the tenant's: a Stripe
    tenant's connected account (None: the platform's own), a Square tenant's location."""
    if provider == "square":
        location = tenant.gateway_options.get("location_id")
        return location if isinstance(location, str) else ""
    if provider == "paddle":
        return None  # (a Paddle event names no account: the key is one seller's)
    return tenant.connected_account


@functools.cache
def _opener() -> Callable[[Tenant, str], SecretStr] | None:
    return secret_opener(settings)


# How long an event about a payment or refund not recorded here is sent back for again
# (503): a create's answer in flight, or one parked and re-driven soon after.
UNRECORDED_RETRY_SECONDS = 3600


def _recent(created: int | None) -> bool:
    """Was the event made within the retry window (and not dated ahead beyond the
    signature's tolerance: one dated years ahead was "recent" for ever, and one past a
    float's range a 500; review finding)?"""
    if created is None or not 0 <= created < 2**53:
        return False
    age = time.time() - created
    return -TOLERANCE_SECONDS <= age < UNRECORDED_RETRY_SECONDS


def _kind(notice: _Notice) -> str:
    if isinstance(notice, SubscriptionNotice):
        return "subscription"
    if isinstance(notice, PayoutNotice):
        return "payout"
    if isinstance(notice, InvoiceNotice):
        return "invoice"
    if isinstance(notice, ConnectedAccountNotice):
        return "connected account"
    if isinstance(notice, TransferNotice):
        return "transfer"
    return "refund" if isinstance(notice, RefundNotice) else "payment"


def _entity_id(notice: _Notice) -> str:
    if isinstance(notice, SubscriptionNotice):
        return notice.subscription_id
    if isinstance(notice, PayoutNotice):
        return notice.payout_id
    if isinstance(notice, InvoiceNotice):
        return notice.invoice_id
    if isinstance(notice, ConnectedAccountNotice):
        return notice.connected_account_id
    if isinstance(notice, TransferNotice):
        return notice.transfer_id
    return notice.refund_id if isinstance(notice, RefundNotice) else notice.payment_id


async def _known_already(tenant: str, row: dict[str, Any], notice: _Notice) -> str | None:
    """Why a refresh would bring nothing, or None if the entity may have moved on."""
    if isinstance(notice, RefundNotice):
        return _refund_known_already(row, notice)
    if isinstance(notice, SubscriptionNotice):
        return await _subscription_known_already(tenant, row, notice)
    if isinstance(notice, PayoutNotice):
        return _payout_known_already(row, notice)
    if isinstance(notice, InvoiceNotice):
        return _one_off_invoice_known_already(row, notice)
    if isinstance(notice, ConnectedAccountNotice):
        return _account_known_already(row, notice)
    if isinstance(notice, TransferNotice):
        return _transfer_known_already(row, notice)
    if row.get("provider_payment_id") != notice.provider_payment_id:
        return "the payment is another provider payment's"
    status = str(row.get("status"))
    try:
        check_payment_transition(status, "refresh", bool(row.get("customer_action_delivered")))
    except InvalidState:
        return f"the payment is {status} already"
    if notice.provider_dispute_id is not None:
        return await _dispute_known_already(tenant, row, notice)
    if status == _SUCCEEDED:
        # A PaymentIntent's own news ends at its success: what may follow (a dispute, its
        # decision) comes in dispute events. (A refresh of it is allowed: a read.)
        return f"the payment is {status} already"
    if notice.status == status and status in _UNCHANGED_IS_NO_NEWS:
        # The state paystream has (Stripe sends `requires_action` and
        # `amount_capturable_updated` right after the create paystream read them from).
        # A failed one is read again: another card's decline is news.
        return f"the payment is {status} already"
    return None


_UNCHANGED_IS_NO_NEWS = frozenset({"requires_action", "processing", "authorized"})
_SUCCEEDED = PaymentStatus.SUCCEEDED  # (a StrEnum: equal to the row's string)


async def _dispute_known_already(
    tenant: str, row: dict[str, Any], notice: PaymentNotice
) -> str | None:
    """Why a dispute event's refresh would bring nothing: the payment's dispute is
    recorded here, the same one, at the event's status and with its evidence deadline
    (Stripe sends ``charge.dispute.funds_withdrawn`` right after ``created``, both
    needs_response; ``updated`` after paystream's own evidence, ``closed`` after its own
    accept). Anything else is read (review h72c): a dispute reopened at Stripe (an
    answered inquiry escalated to a chargeback, a decision appealed) goes "back" to
    needs_response with a new deadline, and a stage held past the event's dropped it.
    A late event whose status is behind costs a refresh, which records nothing."""
    dispute_id = row.get("dispute_id")
    if not isinstance(dispute_id, str) or notice.dispute_status is None:
        return None  # (none recorded yet; or a status this version does not know: read)
    if not _lookups.take(tenant, LOOKUPS_PER_REFRESH * settings.webhook_refreshes_per_second):
        raise _Unavailable("the tenant's webhooks come too fast")
    held = await _row(tenant, t.disputes, "disputes", dispute_id)
    if held is None or held.get("provider_dispute_id") != notice.provider_dispute_id:
        return None
    status = held.get("status")
    if status != notice.dispute_status or _epoch(held.get("evidence_due_by")) != (
        notice.dispute_due_by
    ):
        return None
    return f"the dispute is {status} already"


def _epoch(value: Any) -> int | None:
    """A deadline as a table row holds it (ISO 8601, from a datetime) in epoch seconds;
    None for none (or one not read: then no event's deadline is the same, and it is read)."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except (ValueError, OverflowError, OSError):
        return None


# Reads of a disputed PaymentIntent in flight at once on this worker. Each holds one of
# the web server's connections (PAYSTREAM_WEB_MAX_CONNECTIONS, shared with the ingress,
# the views and other workers' owner lookups) for as long as Stripe takes: a burst of
# dispute events while Stripe is slow must not take them all. Disputes are rare (a
# few a day for a large merchant): past these the event is answered 503 at once, never
# queued, and Stripe sends it again.
DISPUTE_READS_IN_FLIGHT = 8
# How long one may take (the gateway's own timeout, PAYSTREAM_GATEWAY_TIMEOUT_SECONDS,
# is per try, and a slow Stripe holds the connection for it): the owner lookups' bound.
DISPUTE_READ_SECONDS = 5.0


class _InFlight:
    """How many of a kind of request are in flight; refused, never queued, when full."""

    def __init__(self, most: int) -> None:
        self.most, self.now = most, 0

    def take(self) -> bool:
        if self.now >= self.most:
            return False
        self.now += 1
        return True

    def give_back(self) -> None:
        self.now -= 1


_dispute_reads = _InFlight(DISPUTE_READS_IN_FLIGHT)
# The tenant's own pace for them (_refresh_pace: each is a read with the tenant's key, out
# of its provider's rate limit too), a bucket apart from its refreshes'.
_dispute_read_pace = _Budget()


async def _disputed_payment(
    provider: str, tenant: Tenant, notice: DisputeNotice
) -> PaymentNotice | None:
    """The dispute event as one about the payment its PaymentIntent names (read from
    Stripe with the tenant's key); None for a PaymentIntent paystream did not make, or
    one the tenant's key does not find (another account's). _Unavailable when it
    cannot be read now (too many in flight, over the tenant's pace, Stripe slow or
    failing): Stripe sends the event again. Counted either way (a read answered, or
    why not: _DisputeUnread)."""
    if not _dispute_reads.take():
        _throttled.warning(
            ("dispute read", "busy"),
            "webhook %s for %s: the disputed PaymentIntent was not read: %d reads in "
            "flight on this worker (Stripe slow?); answered 503",
            notice.event_id, tenant.tenant_id, DISPUTE_READS_IN_FLIGHT,
        )  # fmt: skip
        raise _DisputeUnread("the provider reads of disputes are all in flight", "in_flight")
    try:
        if not _dispute_read_pace.take(tenant.tenant_id, *_refresh_pace(tenant)):
            raise _DisputeUnread("the tenant's dispute events come too fast", "paced")
        return await _read_disputed_payment(provider, tenant, notice)
    finally:
        _dispute_reads.give_back()


async def _read_disputed_payment(
    provider: str, tenant: Tenant, notice: DisputeNotice
) -> PaymentNotice | None:
    # A client for this read alone: disputes are rare, and one kept would hold the
    # tenant's key and a connection pool in the web server for the worker's life.
    pool = GatewayPool(GatewayDeps(settings=settings), open_secret=_opener())
    try:
        async with asyncio.timeout(DISPUTE_READ_SECONDS):
            gateway = pool.get(tenant)
            read = getattr(gateway, _DISPUTED_PAYMENT_READ.get(provider, ""), None)
            if read is None:
                return None  # (not the provider's gateway: nothing to read)
            payment_intent = await read(notice.provider_payment_id)
    except (GatewayError, TimeoutError) as exc:
        if isinstance(exc, GatewayError) and exc.code is ErrorCode.NOT_FOUND:
            metrics.WEBHOOK_DISPUTE_READS_SUCCEEDED.labels(provider, tenant.tenant_id).inc()
            return None
        over = f"over {DISPUTE_READ_SECONDS:g} s"
        why = exc.code.value if isinstance(exc, GatewayError) else over
        _throttled.warning(
            ("dispute read", tenant.tenant_id),
            "webhook %s for %s: the disputed PaymentIntent cannot be read: %s; answered 503",
            notice.event_id, tenant.tenant_id, why,
        )  # fmt: skip
        raise _DisputeUnread(
            "the disputed payment cannot be read from the provider",
            "provider_error" if isinstance(exc, GatewayError) else "timeout",
        ) from None
    except (CryptoError, ConfigurationError) as exc:
        # (Its key does not open under this master key, or its gateway options are
        # refused: every dispute event of the tenant is answered 503 until fixed, so the
        # operator is told why, as for the other 503s of this read; review h72e.)
        _throttled.warning(
            ("dispute read", tenant.tenant_id),
            "webhook %s for %s: the disputed PaymentIntent cannot be read: the tenant's "
            "provider key cannot be used (%s: paystream doctor); answered 503",
            notice.event_id, tenant.tenant_id, type(exc).__name__,
        )  # fmt: skip
        raise _DisputeUnread("the tenant's provider key cannot be used", "key_unusable") from None
    finally:
        await pool.aclose()
    metrics.WEBHOOK_DISPUTE_READS_SUCCEEDED.labels(provider, tenant.tenant_id).inc()
    if provider == "square":
        found = square_webhooks.disputed_payment_notice(notice, payment_intent, tenant.tenant_id)
        if found is None:
            # At the tenant's own location (checked before the read), but unnamed: made
            # before its webhooks, or with an id too long for reference_id. Its deadline
            # passes unless someone refreshes it: named here (throttled per dispute).
            _throttled.warning(
                ("unnamed dispute", tenant.tenant_id, notice.provider_dispute_id),
                "webhook %s for %s: Square dispute %s (%s) of Square payment %s at the "
                "tenant's location names no paystream payment: send payment.refresh for "
                "the payment it disputes, or answer it in Square's dashboard",
                notice.event_id, tenant.tenant_id, notice.provider_dispute_id,
                notice.status, notice.provider_payment_id,
            )  # fmt: skip
        return found
    return disputed_payment_notice(notice, payment_intent)


async def _subscription_known_already(
    tenant: str, row: dict[str, Any], notice: SubscriptionNotice
) -> str | None:
    """Why a subscription event's refresh would bring nothing: it is another provider
    subscription's, or canceled here (final: its refresh answers from its record), or it says
    what paystream holds (review h73q): Stripe sends the echo of paystream's own calls
    (a create's first invoice's ``invoice.paid``, a cancel at period end's
    ``customer.subscription.updated``, an update's), and each was a refresh of 2-3
    Stripe calls out of the tenant's webhook budget, answered with nothing changed. So
    a subscription's own event at the status, cancel at period end, current period end,
    price and card recorded here is dropped, and an invoice's at the status its invoice
    is recorded at (paid; or open, a declined first invoice's echo). Anything else is
    read: an invoice not recorded (a renewal's) or recorded at another status, a status,
    period, cancel, price or card moved (the last two in the provider's dashboard: a
    refresh records them, review h77n), and whatever the event does not say readably.
    (A subscription's move that an invoice's payment or decline brings comes in its own
    ``customer.subscription.updated``.)"""
    # ("": the event does not tell it, a Paddle subscription's own or its renewal's:
    # paddle/webhooks.py. Read: the refresh reads the recorded one.)
    told = notice.provider_subscription_id
    if told and row.get("provider_subscription_id") != told:
        return "the subscription is another provider subscription's"
    status = str(row.get("status"))
    if "refresh" not in SUBSCRIPTION_TRANSITIONS.get(status, frozenset()):
        return f"the subscription is {status} already"
    if notice.provider_invoice_id is not None:
        return await _invoice_known_already(tenant, notice)
    if notice.status is None or notice.cancel_at_period_end is None:
        return None
    end = notice.current_period_end
    if (
        notice.status != status
        or notice.cancel_at_period_end != bool(row.get("cancel_at_period_end"))
        or end is None
        or _epoch(row.get("current_period_end")) != end
        or notice.amount is None
        or notice.amount != row.get("amount")
    ):
        return None
    if not await _bills_the_recorded_card(tenant, row, notice):
        return None
    return f"the subscription is {status} already, as the event says"


async def _bills_the_recorded_card(
    tenant: str, row: dict[str, Any], notice: SubscriptionNotice
) -> bool:
    """Whether the card the event says the subscription bills is the one recorded,
    compared by the provider's id that card's record holds (the subscription's names
    paystream's id only): another, recorded or not (set in the provider's dashboard),
    is read, the refresh recording it or counting it unknown (handlers._billed_method).
    An event naming none (the customer's default billed) moves nothing a refresh
    records; it looks nothing up."""
    billed = notice.provider_payment_method_id
    if billed is None:
        return True
    method_id = row.get("payment_method_id")
    if not isinstance(method_id, str):
        return False
    if not _lookups.take(tenant, LOOKUPS_PER_REFRESH * settings.webhook_refreshes_per_second):
        raise _Unavailable("the tenant's webhooks come too fast")
    held = await _row(tenant, t.payment_methods, "payment_methods", method_id)
    return held is not None and held.get("provider_payment_method_id") == billed


async def _invoice_known_already(tenant: str, notice: SubscriptionNotice) -> str | None:
    """Why an invoice event's refresh would bring nothing: the invoice is recorded here,
    the same one, at the event's status."""
    provider_invoice_id = notice.provider_invoice_id
    if provider_invoice_id is None or notice.invoice_status is None:
        return None  # (a draft, or a status this version does not know: read)
    if not _lookups.take(tenant, LOOKUPS_PER_REFRESH * settings.webhook_refreshes_per_second):
        raise _Unavailable("the tenant's webhooks come too fast")
    invoice_id = derived_invoice_id(tenant, notice.subscription_id, provider_invoice_id)
    held = await _row(tenant, t.invoices, "invoices", invoice_id)
    if held is None or held.get("provider_invoice_id") != provider_invoice_id:
        return None  # (a renewal's, not read yet)
    if held.get("subscription_id") != notice.subscription_id:
        return None
    if held.get("status") != notice.invoice_status:
        return None
    if notice.invoice_declined is not None and notice.invoice_declined != bool(
        held.get("failure_code")
    ):
        return None  # (open, and now declined, or no longer: read)
    return f"the invoice is {notice.invoice_status} already"


def _refund_known_already(row: dict[str, Any], notice: RefundNotice) -> str | None:
    if row.get("provider_refund_id") != notice.provider_refund_id:
        return "the refund is another provider refund's"
    status = str(row.get("status"))
    if status == "failed":
        return "the refund is failed already"  # (final: a refresh answers from its record)
    if notice.status == status:
        # (Stripe sends `refund.updated` for what paystream read when it made it.)
        return f"the refund is {status} already"
    return None


def _payout_known_already(row: dict[str, Any], notice: PayoutNotice) -> str | None:
    """Why a payout event's refresh would bring nothing: it is another provider payout's,
    or the payout is failed or canceled here (final: nothing moves it on), or the event
    says the status paystream holds (the echo of its own cancel's ``payout.canceled``,
    a ``payout.updated`` of what it read). A status this version does not know is read."""
    if row.get("provider_payout_id") != notice.provider_payout_id:
        return "the payout is another provider payout's"
    status = str(row.get("status"))
    if PAYOUT_MOVES.get(status, frozenset()) <= {status}:
        return f"the payout is {status} already"
    if notice.status == status:
        return f"the payout is {status} already"
    return None


def _one_off_invoice_known_already(row: dict[str, Any], notice: InvoiceNotice) -> str | None:
    """Why a one-off invoice event's refresh would bring nothing: it is another provider
    invoice's (or a subscription's), or the invoice is paid or void here (final: a
    refresh of it answers from its record), or the event says the status paystream
    holds (the echo of its own finalize, pay, void or write-off; a decline of a pay it was
    answered, the invoice still open). A status this version does not know is read."""
    if row.get("provider_invoice_id") != notice.provider_invoice_id:
        return "the invoice is another provider invoice's"
    if row.get("subscription_id") is not None:
        return "the invoice is a subscription's"
    status = str(row.get("status"))
    if status not in INVOICE_TRANSITIONS["refresh"]:
        return f"the invoice is {status} already"
    if notice.status == status:
        return f"the invoice is {status} already"
    return None


def _account_known_already(row: dict[str, Any], notice: ConnectedAccountNotice) -> str | None:
    """Why an account event's refresh would bring nothing: it is another provider
    account's, the account is rejected here (final), or the event says what paystream
    holds (its flags, requirements due and disabled reason: the echo of what a refresh
    read). One this version cannot read whole is read."""
    if row.get("provider_account_id") != notice.provider_account_id:
        return "the connected account is another provider account's"
    if row.get("status") == "rejected":
        return "the connected account is rejected already"
    held = (
        (row.get("charges_enabled"), row.get("payouts_enabled"), row.get("details_submitted")),
        tuple(row.get("currently_due") or ()),
        row.get("disabled_reason"),
    )
    if (
        notice.flags is not None
        and notice.currently_due is not None
        and held
        == (
            notice.flags,
            notice.currently_due,
            notice.disabled_reason,
        )
    ):
        return "the connected account is as recorded already"
    return None


def _transfer_known_already(row: dict[str, Any], notice: TransferNotice) -> str | None:
    """Why a transfer event's refresh would bring nothing: it is another provider
    transfer's, the transfer is reversed entirely here (final), or the event says what
    paystream holds reversed of it (the echo of its own transfer.reverse, or a
    ``transfer.updated`` of its metadata). One that does not say is read."""
    if row.get("provider_transfer_id") != notice.provider_transfer_id:
        return "the transfer is another provider transfer's"
    if row.get("status") == "reversed":
        return "the transfer is reversed already"
    if notice.amount_reversed is not None and notice.amount_reversed == row.get("amount_reversed"):
        return "the transfer is as recorded already"
    return None


# Dropped events named in the log, at most, per tenant and minute (the rest counted).
DROPPED_NAMED_PER_MINUTE = 20


class _PerMinute:
    """At most ``most`` takes per key a minute (keys bounded: the oldest dropped)."""

    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.most, self._clock = most, clock
        self._taken: dict[str, tuple[float, int]] = {}

    def take(self, key: str) -> bool:
        now = self._clock()
        since, taken = self._taken.pop(key, (now, 0))
        if now - since >= 60:
            since, taken = now, 0
        if len(self._taken) >= 10_000:
            del self._taken[next(iter(self._taken))]
        self._taken[key] = (since, min(taken + 1, self.most + 1))
        return taken < self.most


_dropped_named = _PerMinute(DROPPED_NAMED_PER_MINUTE)


def _loggable(entity_id: str) -> bool:
    """An id from the event's metadata that may be logged: one a command may carry (ours
    are; a forged one may hold anything, a card number too)."""
    return len(entity_id) <= 255 and entity_id.isprintable() and not contains_card_number(entity_id)


async def _entity_row(tenant: str, notice: _Notice) -> dict[str, Any] | None:
    """The notice's payment, refund or subscription as the tenant's tables hold it, read
    where they are."""
    if isinstance(notice, RefundNotice):
        return await _row(tenant, t.refunds, "refunds", notice.refund_id)
    if isinstance(notice, SubscriptionNotice):
        return await _row(tenant, t.subscriptions, "subscriptions", notice.subscription_id)
    if isinstance(notice, PayoutNotice):
        return await _row(tenant, t.payouts, "payouts", notice.payout_id)
    if isinstance(notice, InvoiceNotice):
        return await _row(tenant, t.invoices, "invoices", notice.invoice_id)
    if isinstance(notice, ConnectedAccountNotice):
        return await _row(
            tenant, t.connected_accounts, "connected_accounts", notice.connected_account_id
        )
    if isinstance(notice, TransferNotice):
        return await _row(tenant, t.transfers, "transfers", notice.transfer_id)
    return await _row(tenant, t.payments, "payments", notice.payment_id)


async def _row(tenant: str, table: Any, kind: str, entity_id: str) -> dict[str, Any] | None:
    """An entity as the tenant's tables hold it, read where they are."""
    if app.rebalancing or getattr(app, "in_recovery", False):
        raise _Unavailable("tables are being recovered")
    try:
        owner = app.router.external_topic_key_store(commands_topic, tenant)
    except KeyError:
        raise _Unavailable("the tenant's partition has no owner yet") from None
    if _ident(owner) == _ident(URL(str(app.conf.canonical_url))):
        return entity_view(table, tenant, entity_id)
    url = owner.with_path(f"/v1/tenants/{quote(tenant, safe='')}/{kind}/")
    url = URL(str(url) + quote(entity_id, safe=""), encoded=True)
    headers = {}
    if settings.web_token is not None:
        headers["Authorization"] = f"Bearer {settings.web_token.get_secret_value()}"
    try:
        async with app.http_client.request("GET", url, headers=headers) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise _Unavailable(f"the tenant's worker answered {resp.status}")
            row = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        if isinstance(exc, ForwardLoop):
            raise _Unavailable("the workers disagree on the tenant's owner") from None
        raise _Unavailable(f"the tenant's worker is unreachable ({type(exc).__name__})") from None
    return row if isinstance(row, dict) else None


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))


def _refresh(provider: str, tenant: str, notice: _Notice) -> tuple[str, KafkaRecord] | None:
    """The payment's (or refund's) refresh command (its id derived from the event's),
    sealed as paystream's own (paystream/origin_seal.py); None for an id no command may
    carry (not an id, or one the card-data scans would refuse)."""
    if isinstance(notice, RefundNotice):
        command_type, body = "refund.refresh", {"refund_id": notice.refund_id}
        model: Any = RefreshRefund
    elif isinstance(notice, SubscriptionNotice):
        command_type = "subscription.refresh"
        body = {"subscription_id": notice.subscription_id}
        model = RefreshSubscription
    elif isinstance(notice, PayoutNotice):
        command_type, body = "payout.refresh", {"payout_id": notice.payout_id}
        model = RefreshPayout
    elif isinstance(notice, InvoiceNotice):
        command_type, body = "invoice.refresh", {"invoice_id": notice.invoice_id}
        model = RefreshInvoice
    elif isinstance(notice, ConnectedAccountNotice):
        command_type = "connected_account.refresh"
        body = {"connected_account_id": notice.connected_account_id}
        model = RefreshConnectedAccount
    elif isinstance(notice, TransferNotice):
        command_type, body = "transfer.refresh", {"transfer_id": notice.transfer_id}
        model = RefreshTransfer
    else:
        command_type, body = "payment.refresh", {"payment_id": notice.payment_id}
        model = RefreshPayment
    try:
        model.model_validate(body)
        command_id = derived_id("whk", provider, tenant, notice.event_id)
        command = build_command(
            command_type,
            tenant,
            body,
            command_id=command_id,
            source=f"/paystream/webhooks/{provider}",
        )
        rec = encoded_for_sending(command, settings.cloudevents_mode, settings)
    except (ValidationError, InvalidCommand):
        return None
    headers = dict(rec.headers)
    headers[ORIGIN_HEADER] = _origins().seal(rec.key, rec.value, headers)
    return command_id, KafkaRecord(rec.key, rec.value, tuple(headers.items()))


@functools.cache
def _origins() -> OriginSeals:
    return OriginSeals.from_settings(settings)


async def _send(tenant: str, command: tuple[str, KafkaRecord]) -> str:
    """Produce the refresh (acknowledged by the broker); its command id."""
    command_id, rec = command
    try:
        await produce_command(rec, tenant, "webhook")
    except NotProduced:
        raise _Unavailable("the command could not be produced") from None
    return command_id


class _SquareSubscriptions:
    """paystream's subscription each Square subscription id names, per tenant (a
    subscription event's source name, once the tenant's record was found to hold that
    Square id; or the source name read from Square for an invoice event): an invoice
    event names Square's id only, and this spares its read from Square. Bounded (the
    oldest forgotten: read again). Never the check itself: the record is looked up for
    every event, and must hold that Square id.

    A Square subscription the tenant's key does not find is remembered too, for
    MISSING_SECONDS only (review h79r_d L2): an event's retries and a renewal's several
    events then read it once, while a 404 from a token being fixed (another seller's,
    another location's) hides the tenant's subscriptions for a minute, not until the
    worker restarts. Bounded as the ids are."""

    MOST = 100_000
    MISSING_SECONDS = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._missing: dict[tuple[str, str], float] = {}  # (read not found until then)
        self._clock = clock

    def get(self, tenant: str, provider_subscription_id: str) -> str | None:
        return self._ids.get((tenant, provider_subscription_id))

    def remember(self, tenant: str, provider_subscription_id: str, subscription_id: str) -> None:
        key = (tenant, provider_subscription_id)
        self._missing.pop(key, None)
        if key not in self._ids and len(self._ids) >= self.MOST:
            del self._ids[next(iter(self._ids))]
        self._ids[key] = subscription_id

    def missing(self, tenant: str, provider_subscription_id: str) -> bool:
        """Whether it was read and not found less than MISSING_SECONDS ago."""
        key = (tenant, provider_subscription_id)
        until = self._missing.get(key)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._missing[key]
        return False

    def remember_missing(self, tenant: str, provider_subscription_id: str) -> None:
        key = (tenant, provider_subscription_id)
        self._missing.pop(key, None)  # (re-inserted last: the oldest goes first)
        if len(self._missing) >= self.MOST:
            del self._missing[next(iter(self._missing))]
        self._missing[key] = self._clock() + self.MISSING_SECONDS


_square_subscriptions = _SquareSubscriptions()
# What it holds for a Square subscription read and found no subscription of the tenant's.
_NOT_PAYSTREAMS = ""


def _remember_square_subscription(
    provider: str, tenant: str, row: dict[str, Any], notice: _Notice
) -> None:
    """A Square subscription's id, once the tenant's record is found to hold it."""
    if (
        provider == "square"
        and isinstance(notice, SubscriptionNotice)
        and row.get("provider_subscription_id") == notice.provider_subscription_id
    ):
        _square_subscriptions.remember(
            tenant, notice.provider_subscription_id, notice.subscription_id
        )


async def _invoiced_subscription(
    tenant: Tenant, notice: SubscriptionInvoiceNotice
) -> SubscriptionNotice | None:
    """A Square invoice event as one about the paystream subscription its Square
    subscription is: one the tenant's record was found to hold before, else the Square
    subscription read with the tenant's key for its source name (bounded as a dispute's
    payment read is: _Unavailable past the reads in flight or the tenant's pace, or when
    Square cannot answer now). None for a subscription paystream did not make. The
    caller then checks the tenant's record holds that Square id."""
    known = _square_subscriptions.get(tenant.tenant_id, notice.provider_subscription_id)
    if known == _NOT_PAYSTREAMS:
        return None  # (read before: made by another application, or another tenant's)
    if known is not None:
        return notice.as_subscription(tenant.tenant_id, known)
    if _square_subscriptions.missing(tenant.tenant_id, notice.provider_subscription_id):
        return None  # (read a moment ago and not found: Square sends it again meanwhile)
    counted = metrics.WEBHOOK_SUBSCRIPTION_READS
    if not _dispute_reads.take():
        counted.labels("square", tenant.tenant_id, "in_flight").inc()
        raise _Unavailable("the provider reads of webhooks are all in flight")
    try:
        if not _dispute_read_pace.take(tenant.tenant_id, *_refresh_pace(tenant)):
            counted.labels("square", tenant.tenant_id, "paced").inc()
            raise _Unavailable("the tenant's invoice events come too fast")
        subscription = await _read_invoiced_subscription(tenant, notice)
    finally:
        _dispute_reads.give_back()
    counted.labels(
        "square", tenant.tenant_id, "not_found" if subscription is None else "found"
    ).inc()
    if subscription is None:
        _square_subscriptions.remember_missing(tenant.tenant_id, notice.provider_subscription_id)
        return None
    found = square_webhooks.invoiced_subscription_notice(notice, subscription, tenant.tenant_id)
    # Read once: an event sent again while the create's answer is recorded, and the
    # renewal's later ones, need no read (the record is still checked for each); nor
    # do another application's subscriptions' (a source name is set at the create).
    ours = found is not None and found.tenant_id == tenant.tenant_id
    _square_subscriptions.remember(
        tenant.tenant_id,
        notice.provider_subscription_id,
        found.subscription_id if found is not None and ours else _NOT_PAYSTREAMS,
    )
    return found


async def _read_invoiced_subscription(
    tenant: Tenant, notice: SubscriptionInvoiceNotice
) -> dict[str, Any] | None:
    """The Square subscription an invoice event names, as Square answers it; None for
    one Square does not find at the tenant's location."""
    pool = GatewayPool(GatewayDeps(settings=settings), open_secret=_opener())
    try:
        async with asyncio.timeout(DISPUTE_READ_SECONDS):
            read = getattr(pool.get(tenant), "read_subscription", None)
            if read is None:
                return None  # (not Square's gateway: nothing to read)
            return dict(await read(notice.provider_subscription_id))
    except (GatewayError, TimeoutError) as exc:
        if isinstance(exc, GatewayError) and exc.code is ErrorCode.NOT_FOUND:
            return None
        why = exc.code.value if isinstance(exc, GatewayError) else "timed out"
        result: metrics.SubscriptionReadResult = (
            "provider_error" if isinstance(exc, GatewayError) else "timeout"
        )
        metrics.WEBHOOK_SUBSCRIPTION_READS.labels("square", tenant.tenant_id, result).inc()
        _throttled.warning(
            ("invoice read", tenant.tenant_id),
            "webhook %s for %s: the Square subscription its invoice names cannot be "
            "read: %s; answered 503",
            notice.event_id, tenant.tenant_id, why,
        )  # fmt: skip
        raise _Unavailable("the invoice's subscription cannot be read from Square") from None
    except (CryptoError, ConfigurationError) as exc:
        unusable: metrics.SubscriptionReadResult = "key_unusable"
        metrics.WEBHOOK_SUBSCRIPTION_READS.labels("square", tenant.tenant_id, unusable).inc()
        _throttled.warning(
            ("invoice read", tenant.tenant_id),
            "webhook %s for %s: the Square subscription its invoice names cannot be "
            "read: the tenant's provider key cannot be used (%s: paystream doctor); "
            "answered 503",
            notice.event_id, tenant.tenant_id, type(exc).__name__,
        )  # fmt: skip
        raise _Unavailable("the tenant's provider key cannot be used") from None
    finally:
        await pool.aclose()
