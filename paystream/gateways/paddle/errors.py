"""Translate Paddle's answers (``{"error": {type, code, detail, documentation_url,
errors?}, "meta": {request_id}}``) and transport failures into GatewayErrors. Paddle's
error codes: https://developer.paddle.com/errors (shared, customers, transactions,
adjustments), and a payment attempt's ``error_code`` (the transaction's ``payments[]``:
https://developer.paddle.com/api-reference/transactions, paddle-python-sdk's ErrorCode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paystream.gateways.errors import ErrorCode, GatewayError

__all__ = [
    "ATTEMPT_ERRORS",
    "PROVIDER",
    "attempt_failure",
    "map_paddle_answer",
    "map_transport_error",
    "paddle_code",
    "unreadable",
]

PROVIDER = "paddle"
# How long to wait before retrying a rate-limited request Paddle named no wait for.
BUSY_RETRY_AFTER_SECONDS = 1.0

# A payment attempt's error_code (a customer's card at Paddle Checkout) → our code.
ATTEMPT_ERRORS: dict[str, ErrorCode] = {
    "declined": ErrorCode.CARD_DECLINED,
    "declined_not_retryable": ErrorCode.CARD_DECLINED,
    "blocked_card": ErrorCode.CARD_DECLINED,
    "blocked_by_policy": ErrorCode.CARD_DECLINED,
    "transaction_not_permitted": ErrorCode.CARD_DECLINED,
    "preferred_network_not_supported": ErrorCode.CARD_DECLINED,
    "prepaid_card_not_supported": ErrorCode.CARD_DECLINED,
    "redacted_payment_method": ErrorCode.CARD_DECLINED,
    "canceled": ErrorCode.CARD_DECLINED,
    "already_canceled": ErrorCode.CARD_DECLINED,
    "already_refunded": ErrorCode.CARD_DECLINED,
    "invalid_amount": ErrorCode.CARD_DECLINED,
    "unknown": ErrorCode.CARD_DECLINED,
    "not_enough_balance": ErrorCode.INSUFFICIENT_FUNDS,
    "expired_card": ErrorCode.EXPIRED_CARD,
    "invalid_payment_details": ErrorCode.INCORRECT_NUMBER,
    "fraud": ErrorCode.FRAUDULENT,
    "authentication_failed": ErrorCode.AUTHENTICATION_REQUIRED,
    "issuer_unavailable": ErrorCode.PROCESSING_ERROR,
    "psp_error": ErrorCode.PROCESSING_ERROR,
    "system_error": ErrorCode.PROCESSING_ERROR,
}

# Paddle's refusals of ``POST /subscriptions/{id}/activate`` (its error reference): not
# trialing, no payment method saved, a consent the customer has not given, manually
# collected. The subscription's state, not the command: `invalid_state`, worded so.
_ACTIVATION_CODES = frozenset(
    {
        "subscription_cannot_activate",
        "subscription_missing_payment_method_cannot_activate",
        "subscription_consent_requirement_cannot_activate",
        "subscription_manual_collection_mode_activation_not_allowed",
    }
)
# Not in the object's current state (a transaction paid, canceled or a draft; a refund
# pending Paddle's approval; nothing left to refund).
_STATE_CODES = frozenset(
    {
        "transaction_immutable",
        "transaction_invalid_status_change",
        "transaction_status_must_be_ready",
        "transaction_immutable_while_processing_payment",
        "transaction_not_ready_cannot_process_payment",
        "adjustment_pending_refund_request",
        "adjustment_transaction_invalid_status_for_refund",
        "adjustment_transaction_item_has_already_been_fully_adjusted",
        "entity_archived",
        "concurrent_modification",
        "conflict",
        # A subscription's state refuses the change (Paddle's error reference, 400s; its
        # 409 locks are state by their status already): not the command's fault.
        "subscription_update_when_canceled",
        "subscription_is_canceled_action_invalid",
        "subscription_is_inactive_action_invalid",
        "subscription_not_active",
        "subscription_locked_pending_changes",
        "subscription_must_be_paused",
        # Activation (a trial ended now) refused.
        *_ACTIVATION_CODES,
    }
)
# A charge Paddle was asked to make now (an activation) declined: "When requesting to
# charge the payment was declined" (400): a card decline, as a payment attempt's are.
_DECLINE_CODES = frozenset({"subscription_payment_declined"})
# The seller's setup, not the command: the key may not do this, the account is not set up
# for it (no default payment link: automatically-collected transactions need one).
_PERMISSION_CODES = frozenset(
    {
        "forbidden",
        "transaction_default_checkout_url_not_set",
        "transaction_checkout_not_enabled",
        "not_allowed",
    }
)
_AUTH_CODES = frozenset(
    {
        "invalid_token",
        "authentication_missing",
        "authentication_malformed",
        "invalid_access_token",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {"internal_error", "bad_gateway", "service_unavailable", "request_timeout"}
)


def _error(body: Any) -> Mapping[str, Any] | None:
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) and isinstance(error.get("code"), str) else None


def _request_id(body: Any) -> str | None:
    meta = body.get("meta") if isinstance(body, Mapping) else None
    rid = meta.get("request_id") if isinstance(meta, Mapping) else None
    return rid if isinstance(rid, str) else None


def map_paddle_answer(
    status: int | None, body: Any, retry_after: float | None = None
) -> GatewayError:
    """The GatewayError for a Paddle answer that is not a success (never quotes the API
    key: only Paddle's own ``detail``, which names no credential)."""
    error = _error(body)
    if error is None:
        # Not Paddle's error shape: a proxy's page, an unreadable answer. Paddle may have
        # run the request: retried (its create looks for what an earlier try made first),
        # never answered "refused". A proxy's other 4xx will not change on a retry.
        transient = status is None or status < 400 or status >= 500 or status in (408, 429)
        return GatewayError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"unreadable answer from Paddle (HTTP {status})",
            provider=PROVIDER,
            retryable=transient,
            http_status=status,
            reached_provider=transient,
        )
    code = str(error["code"])
    detail = str(error.get("detail") or code)[:500]
    fields = error.get("errors")
    if isinstance(fields, list) and fields:
        named = [
            f"{f.get('field')}: {f.get('message')}" for f in fields[:5] if isinstance(f, Mapping)
        ]
        detail = f"{detail} ({'; '.join(named)})"[:500]
    retryable: bool | None = False
    if code == "too_many_requests" or status == 429:
        ours, retryable = ErrorCode.RATE_LIMITED, True
    elif code in _UNAVAILABLE_CODES or (status or 0) >= 500:
        ours, retryable = ErrorCode.PROVIDER_UNAVAILABLE, True
    elif code in _AUTH_CODES or status == 401:
        ours = ErrorCode.AUTHENTICATION_FAILED
        detail = f"Paddle refused the tenant's API key (HTTP {status}): {code}"
    elif code in _PERMISSION_CODES or (status == 403 and code not in _STATE_CODES):
        ours = ErrorCode.PERMISSION_DENIED
    elif code == "not_found" or status == 404:
        ours = ErrorCode.NOT_FOUND
    elif code in _DECLINE_CODES:
        ours = ErrorCode.CARD_DECLINED
    elif code in _STATE_CODES or status == 409:
        ours = ErrorCode.INVALID_STATE
        if code in _ACTIVATION_CODES:
            detail = f"Paddle cannot activate the subscription (end its trial now): {detail}"[:500]
    else:
        ours = ErrorCode.INVALID_REQUEST
    mapped = GatewayError(
        ours,
        detail,
        provider=PROVIDER,
        retryable=retryable,
        http_status=status,
        provider_request_id=_request_id(body),
    )
    mapped.paddle_code = code  # type: ignore[attr-defined]
    if ours is ErrorCode.RATE_LIMITED:
        mapped.retry_after = retry_after if retry_after else BUSY_RETRY_AFTER_SECONDS
    return mapped


def paddle_code(error: GatewayError) -> str | None:
    """Paddle's own error code of a mapped answer (None for a transport failure)."""
    code = getattr(error, "paddle_code", None)
    return code if isinstance(code, str) else None


def attempt_failure(error_code: Any) -> ErrorCode:
    """Our code for a payment attempt's failure (a code this version does not know is a
    plain decline: the customer may try another card at checkout)."""
    return (
        ATTEMPT_ERRORS.get(error_code, ErrorCode.CARD_DECLINED)
        if isinstance(error_code, str)
        else ErrorCode.CARD_DECLINED
    )


def unreadable(why: str) -> GatewayError:
    """A success answer this version cannot read (a status added since, a field missing):
    Paddle ran the request; parked until a version that reads it."""
    error = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"an answer from Paddle this version cannot read ({why[:120]})",
        provider=PROVIDER,
        retryable=True,
    )
    error.unreadable_answer = True
    return error


def map_transport_error(exc: BaseException) -> GatewayError:
    """No answer: Paddle may have acted. Retried: a create looks first for what an
    earlier try made (Paddle keeps no idempotency keys), reads run afresh."""
    import requests

    timed_out = isinstance(exc, TimeoutError | requests.Timeout)
    return GatewayError(
        ErrorCode.TIMEOUT if timed_out else ErrorCode.PROVIDER_UNAVAILABLE,
        f"could not reach Paddle ({type(exc).__name__})",
        provider=PROVIDER,
        retryable=True,
    )
