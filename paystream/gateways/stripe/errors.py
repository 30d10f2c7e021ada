"""Translate every Stripe SDK error into a GatewayError, keeping Stripe's request id."""

from __future__ import annotations

from typing import Any

import stripe

from paystream.gateways.errors import ErrorCode, GatewayError, card_failure

__all__ = ["PROVIDER", "map_stripe_error"]

PROVIDER = "stripe"
# How long to wait before retrying a request whose key is held or that was rate limited.
BUSY_RETRY_AFTER_SECONDS = 1.0

# Invalid-request codes that mean "not in this object's current state".
_STATE_CODES = frozenset(
    {
        "payment_intent_unexpected_state",
        "payment_method_unexpected_state",
        "charge_already_captured",
        "charge_already_refunded",
        "charge_disputed",
        "charge_expired_for_capture",
        "charge_not_refundable",
        "capture_charge_authorization_expired",
        "capture_unauthorized_payment",
        "refund_disputed_payment",
    }
)


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    err = body.get("error")
    return err if isinstance(err, dict) else {}


def _payment_id(err: dict[str, Any]) -> str | None:
    pi = err.get("payment_intent")
    if isinstance(pi, dict):
        pi = pi.get("id")
    return pi if isinstance(pi, str) else None


def _classify(exc: stripe.StripeError, err: dict[str, Any]) -> tuple[ErrorCode, bool | None]:
    code = exc.code or err.get("code")
    status = exc.http_status
    if code == "idempotency_key_in_use" or status == 409:
        # A concurrent request holds the key: try later. Any 409 (Stripe: "conflicts with
        # another request, perhaps due to using the same idempotent key"; stripe-python
        # retries them all), whatever its code: final, a timed-out charge still running
        # was answered validation_error while it completed (review finding).
        return ErrorCode.IDEMPOTENCY_ERROR, True
    if isinstance(exc, stripe.CardError):
        decline = err.get("decline_code")
        return card_failure(decline, code), None
    if isinstance(exc, stripe.RateLimitError):
        return ErrorCode.RATE_LIMITED, None
    if isinstance(exc, stripe.IdempotencyError):
        return ErrorCode.IDEMPOTENCY_ERROR, None
    if isinstance(exc, stripe.AuthenticationError):
        return ErrorCode.AUTHENTICATION_FAILED, None
    if isinstance(exc, stripe.PermissionError) or _refuses_the_setup(code, err):
        return ErrorCode.PERMISSION_DENIED, None
    if isinstance(exc, stripe.APIConnectionError):
        timed_out = isinstance(exc.__cause__, TimeoutError)
        return (ErrorCode.TIMEOUT if timed_out else ErrorCode.PROVIDER_UNAVAILABLE), True
    if err and (status == 404 or code == "resource_missing"):
        # Stripe's own answer. A bodiless 404 (an egress proxy, a wrong API base path)
        # never reached Stripe: read as "not found", a delete or an erasure would count
        # the customer as gone there while Stripe still holds them.
        return ErrorCode.NOT_FOUND, None
    if not err:
        # Not Stripe's error object: an unreadable 200 (Stripe ran the request) or a
        # proxy's page. Nothing says the request was refused, and it may have been
        # applied: retry under the same key, never answer "rejected". A proxy's other
        # 4xx (401, 413, ...) will not change on a retry: not retried, and answered as
        # the deployment's fault, not remembered (see handlers._gateway).
        transient = status is None or status < 400 or status >= 500 or status in (408, 429)
        return ErrorCode.PROVIDER_UNAVAILABLE, transient
    if code in _STATE_CODES:
        return ErrorCode.INVALID_STATE, None
    if code == "balance_insufficient":
        # A payout (or transfer) above the available balance: no payout exists; the
        # handler answers it `balance_insufficient` (the command's, kept under its key).
        return ErrorCode.BALANCE_INSUFFICIENT, False
    if status is not None and status >= 500:
        return ErrorCode.PROVIDER_UNAVAILABLE, True
    if isinstance(exc, stripe.InvalidRequestError) or (status is not None and status < 500):
        return ErrorCode.INVALID_REQUEST, None
    return ErrorCode.PROVIDER_UNAVAILABLE, True  # no response status: transport-level


def _refuses_the_setup(code: str | None, err: dict[str, Any]) -> bool:
    """Stripe refusing the tenant's setup, not the command: a ``Stripe-Account`` the key
    cannot act for (``account_invalid``), or a pinned API version it does not know
    (a 400 "Invalid Stripe API version", no code). Answered as a refused key, never kept
    under the command's key: fixed, the same command goes through (review h67o)."""
    if code in ("account_invalid", "payouts_not_allowed"):
        # (payouts_not_allowed: payouts are disabled on the account, its verification
        # or its payout settings; fixed at Stripe, the same payout can go through.)
        return True
    message = err.get("message")
    return (
        code is None
        and isinstance(message, str)
        and message.startswith("Invalid Stripe API version")
    )


_SETUP_REFUSED = {
    "account_invalid": "its connected account is not one the key may use",
    "payouts_not_allowed": (
        "payouts are not allowed on its account (its verification or payout settings at "
        "Stripe; once fixed, send the payout again, under a new payout id if Stripe kept "
        "this answer under the first one's key)"
    ),
}


def map_stripe_error(exc: stripe.StripeError) -> GatewayError:
    """The GatewayError for a Stripe SDK error (never includes the API key)."""
    err = _error_body(exc)
    code, retryable = _classify(exc, err)
    # Only Stripe's own error message: the SDK's for an unreadable answer quotes the body,
    # which may hold a client secret or a customer's personal data.
    message = err.get("message") or f"unreadable answer from Stripe (HTTP {exc.http_status})"
    if isinstance(exc, stripe.APIConnectionError):
        message = f"could not reach Stripe ({type(exc.__cause__).__name__})"
    elif code is ErrorCode.PERMISSION_DENIED and not isinstance(exc, stripe.PermissionError):
        # (Stripe's account_invalid message quotes the key too.)
        message = (
            f"Stripe refused the tenant's setup (HTTP {exc.http_status}): "
            + _SETUP_REFUSED.get(str(err.get("code")), "its API version is not one the key may use")
        )
    elif isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        # Stripe's message quotes the key (its mode and last characters: "Invalid API
        # Key provided: sk_live_****1234"), which outcomes and the ledger would keep.
        message = f"Stripe refused the tenant's API key (HTTP {exc.http_status}): " + (
            "not a valid key" if isinstance(exc, stripe.AuthenticationError) else "not permitted"
        )
    error = GatewayError(
        code,
        str(message),
        provider=PROVIDER,
        retryable=retryable,
        decline_code=err.get("decline_code") if isinstance(exc, stripe.CardError) else None,
        http_status=exc.http_status,
        provider_request_id=exc.request_id,
        provider_payment_id=_payment_id(err),
        # A final answer without Stripe's error object came from something in between
        # (a proxy's 401/404/413 page): no word on Stripe's health for the breaker.
        reached_provider=bool(err) or bool(retryable),
    )
    headers = {str(k).lower(): v for k, v in (getattr(exc, "headers", None) or {}).items()}
    status = exc.http_status or 0
    if error.retryable and status >= 500 and headers.get("stripe-should-retry") == "false":
        # Stripe keeps a key's answer, a 500 included, and says so: every retry under the
        # key would get it again (and count against the breaker). Parked at once; the
        # payment's state at Stripe is for an operator to reconcile. (Not a 429: a rate
        # limit passes, whatever the header says.)
        error.retry_now = False
    if error.retryable and code in (ErrorCode.IDEMPOTENCY_ERROR, ErrorCode.RATE_LIMITED):
        # A held key or a rate limit frees up in about a second, not in the backoff's
        # 50 ms: without the hint every attempt was spent in a third of a second, and
        # the command parked while its first request was still running at Stripe.
        error.retry_after = BUSY_RETRY_AFTER_SECONDS
    return error
