"""Translate Square's answers (``{"errors": [{category, code, detail, field}]}``) and
transport failures into GatewayErrors. Square's error codes:
https://developer.squareup.com/reference/square/objects/ErrorCode and
https://developer.squareup.com/docs/payments-api/error-codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paystream.gateways.errors import ErrorCode, GatewayError

__all__ = ["PROVIDER", "map_square_answer", "map_transport_error"]

PROVIDER = "square"
# How long to wait before retrying a rate-limited request.
BUSY_RETRY_AFTER_SECONDS = 1.0

# The card's (or its issuer's) refusal: category PAYMENT_METHOD_ERROR. Final for the
# request (the customer has to act), whatever the code.
CARD_CODES: dict[str, ErrorCode] = {
    "CARD_DECLINED": ErrorCode.CARD_DECLINED,
    "GENERIC_DECLINE": ErrorCode.CARD_DECLINED,
    "CARD_DECLINED_CALL_ISSUER": ErrorCode.CARD_DECLINED,
    "TRANSACTION_LIMIT": ErrorCode.CARD_DECLINED,
    "PAYMENT_LIMIT_EXCEEDED": ErrorCode.CARD_DECLINED,
    "INVALID_ACCOUNT": ErrorCode.CARD_DECLINED,
    "CARD_NOT_SUPPORTED": ErrorCode.CARD_DECLINED,
    "UNSUPPORTED_CARD_BRAND": ErrorCode.CARD_DECLINED,
    "CARDHOLDER_INSUFFICIENT_PERMISSIONS": ErrorCode.CARD_DECLINED,
    "ACCOUNT_UNUSABLE": ErrorCode.CARD_DECLINED,
    "BUYER_REFUSED_PAYMENT": ErrorCode.CARD_DECLINED,
    # The postal code (AVS) did not match: Stripe's incorrect_zip is a decline too.
    "ADDRESS_VERIFICATION_FAILURE": ErrorCode.CARD_DECLINED,
    "VERIFY_AVS_FAILURE": ErrorCode.CARD_DECLINED,
    "INVALID_POSTAL_CODE": ErrorCode.CARD_DECLINED,
    "INSUFFICIENT_FUNDS": ErrorCode.INSUFFICIENT_FUNDS,
    "CVV_FAILURE": ErrorCode.INCORRECT_CVC,
    "VERIFY_CVV_FAILURE": ErrorCode.INCORRECT_CVC,
    "CARD_EXPIRED": ErrorCode.EXPIRED_CARD,
    "INVALID_EXPIRATION": ErrorCode.EXPIRED_CARD,
    "INVALID_EXPIRATION_DATE": ErrorCode.EXPIRED_CARD,
    "INVALID_EXPIRATION_YEAR": ErrorCode.EXPIRED_CARD,
    "BAD_EXPIRATION": ErrorCode.EXPIRED_CARD,
    "EXPIRATION_FAILURE": ErrorCode.EXPIRED_CARD,
    "INVALID_CARD": ErrorCode.INCORRECT_NUMBER,
    "PAN_FAILURE": ErrorCode.INCORRECT_NUMBER,
    "INVALID_CARD_DATA": ErrorCode.INCORRECT_NUMBER,
    "CARD_DECLINED_VERIFICATION_REQUIRED": ErrorCode.AUTHENTICATION_REQUIRED,
}

# Not in the object's current state: a delayed (manual capture) payment already
# completed, canceled or expired; a payment that cannot be refunded (yet, or any more).
STATE_CODES = frozenset(
    {
        "DELAYED_TRANSACTION_CANCELED",
        "DELAYED_TRANSACTION_CAPTURED",
        "DELAYED_TRANSACTION_EXPIRED",
        "DELAYED_TRANSACTION_FAILED",
        "PAYMENT_NOT_REFUNDABLE",
        "PAYMENT_NOT_REFUNDABLE_DUE_TO_DISPUTE",
        "REFUND_ERROR_PAYMENT_NEEDS_COMPLETION",
        "REFUND_ALREADY_PENDING",
        "VERSION_MISMATCH",
        "CONFLICT",
    }
)

_AUTH_CODES = frozenset(
    {"UNAUTHORIZED", "ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_REVOKED", "CLIENT_DISABLED"}
)
# The tenant's setup, not the command: the token may not do this, at this location.
_PERMISSION_CODES = frozenset(
    {
        "FORBIDDEN",
        "INSUFFICIENT_SCOPES",
        "APPLICATION_DISABLED",
        "CARD_PROCESSING_NOT_ENABLED",
        "MERCHANT_SUBSCRIPTION_NOT_FOUND",
        "LOCATION_MISMATCH",
        "INVALID_LOCATION",
        "INSUFFICIENT_PERMISSIONS",
        "INSUFFICIENT_PERMISSIONS_FOR_REFUND",
        "SANDBOX_NOT_SUPPORTED",
        "INVALID_SQUARE_VERSION_FORMAT",
        "API_VERSION_INCOMPATIBLE",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "BAD_GATEWAY", "TEMPORARY_ERROR"}
)


def _errors(body: Any) -> list[Mapping[str, Any]]:
    found = body.get("errors") if isinstance(body, Mapping) else None
    return [e for e in found if isinstance(e, Mapping)] if isinstance(found, list) else []


def _primary(errors: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The error that says most: a card's refusal before anything else (Square may list a
    decline beside a generic one, as GIFT_CARD_AVAILABLE_AMOUNT beside INSUFFICIENT_FUNDS)."""
    for err in errors:
        if err.get("code") in CARD_CODES:
            return err
    return errors[0]


def _payment_id(body: Any) -> str | None:
    """A declined CreatePayment's answer may carry the FAILED payment beside its errors."""
    payment = body.get("payment") if isinstance(body, Mapping) else None
    pid = payment.get("id") if isinstance(payment, Mapping) else None
    return pid if isinstance(pid, str) else None


def map_square_answer(status: int | None, body: Any) -> GatewayError:
    """The GatewayError for a Square answer that is not a success (never quotes the
    access token: only Square's own ``detail``, which names no credential)."""
    errors = _errors(body)
    if not errors:
        # Not Square's error shape: a proxy's page, an unreadable answer. Square may have
        # run the request: retried under the same key, never answered "refused". A
        # proxy's other 4xx will not change on a retry (as the Stripe gateway reads them).
        transient = status is None or status < 400 or status >= 500 or status in (408, 429)
        return GatewayError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"unreadable answer from Square (HTTP {status})",
            provider=PROVIDER,
            retryable=transient,
            http_status=status,
            reached_provider=transient,
        )
    err = _primary(errors)
    code = str(err.get("code") or "")
    category = str(err.get("category") or "")
    detail = str(err.get("detail") or code or "Square refused the request")[:500]
    retryable: bool | None = False
    decline: str | None = None
    if code in CARD_CODES or category == "PAYMENT_METHOD_ERROR":
        ours = CARD_CODES.get(code, ErrorCode.CARD_DECLINED)
        decline = code.lower() or None
    elif code == "IDEMPOTENCY_KEY_REUSED":
        ours = ErrorCode.IDEMPOTENCY_ERROR
    elif code == "RATE_LIMITED" or status == 429 or category == "RATE_LIMIT_ERROR":
        ours, retryable = ErrorCode.RATE_LIMITED, True
    elif code == "GATEWAY_TIMEOUT" or code == "REQUEST_TIMEOUT":
        ours, retryable = ErrorCode.TIMEOUT, True
    elif code in _UNAVAILABLE_CODES or (status or 0) >= 500 or category == "API_ERROR":
        ours, retryable = ErrorCode.PROVIDER_UNAVAILABLE, True
    elif code in _PERMISSION_CODES or status == 403:
        ours = ErrorCode.PERMISSION_DENIED
    elif code in _AUTH_CODES or status == 401 or category == "AUTHENTICATION_ERROR":
        ours = ErrorCode.AUTHENTICATION_FAILED
        detail = f"Square refused the tenant's access token (HTTP {status}): {code.lower()}"
    elif code in ("NOT_FOUND", "CUSTOMER_NOT_FOUND") or status == 404:
        ours = ErrorCode.NOT_FOUND
    elif code in STATE_CODES or status == 409:
        ours = ErrorCode.INVALID_STATE
    else:
        ours = ErrorCode.INVALID_REQUEST
    error = GatewayError(
        ours,
        detail,
        provider=PROVIDER,
        retryable=retryable,
        decline_code=decline,
        http_status=status,
        provider_payment_id=_payment_id(body),
    )
    if ours is ErrorCode.RATE_LIMITED:
        error.retry_after = BUSY_RETRY_AFTER_SECONDS
    return error


def map_transport_error(exc: BaseException) -> GatewayError:
    """No answer: Square may have acted. Retried under the same key, it answers with the
    original result (reads and keyless calls run afresh)."""
    import httpx

    timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
    return GatewayError(
        ErrorCode.TIMEOUT if timed_out else ErrorCode.PROVIDER_UNAVAILABLE,
        f"could not reach Square ({type(exc).__name__})",
        provider=PROVIDER,
        retryable=True,
    )
