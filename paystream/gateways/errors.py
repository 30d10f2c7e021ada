"""One decline/error vocabulary for every provider, each code marked retryable or not."""

from __future__ import annotations

from enum import StrEnum

from paystream.errors import PaystreamError

__all__ = [
    "CARD_ERROR_CODES",
    "DECLINE_CODES",
    "ISSUER_DECLINES",
    "RETRYABLE",
    "DraftLinesDiffer",
    "ErrorCode",
    "GatewayError",
    "UnsupportedOperation",
    "card_failure",
]


class ErrorCode(StrEnum):
    """Provider-neutral failure reasons carried on outcomes (`payment.failed.reason`)."""

    CARD_DECLINED = "card_declined"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    EXPIRED_CARD = "expired_card"
    INCORRECT_CVC = "incorrect_cvc"
    INCORRECT_NUMBER = "incorrect_number"
    LOST_OR_STOLEN = "lost_or_stolen_card"
    FRAUDULENT = "fraudulent"
    AUTHENTICATION_REQUIRED = "authentication_required"
    PROCESSING_ERROR = "processing_error"
    RATE_LIMITED = "rate_limited"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    TIMEOUT = "timeout"
    IDEMPOTENCY_ERROR = "idempotency_error"
    INVALID_REQUEST = "invalid_request"
    INVALID_STATE = "invalid_state"
    NOT_FOUND = "not_found"
    AUTHENTICATION_FAILED = "authentication_failed"
    PERMISSION_DENIED = "permission_denied"
    UNSUPPORTED = "unsupported"
    # A payout above the available balance (Stripe's `balance_insufficient`).
    BALANCE_INSUFFICIENT = "balance_insufficient"


# A card's failure as Stripe names it (the simulator, which follows Stripe's test cards,
# names them alike): its `decline_code` (most specific) → our code.
DECLINE_CODES: dict[str, ErrorCode] = {
    "insufficient_funds": ErrorCode.INSUFFICIENT_FUNDS,
    "lost_card": ErrorCode.LOST_OR_STOLEN,
    "stolen_card": ErrorCode.LOST_OR_STOLEN,
    "fraudulent": ErrorCode.FRAUDULENT,
    "merchant_blacklist": ErrorCode.FRAUDULENT,
    "expired_card": ErrorCode.EXPIRED_CARD,
    "incorrect_cvc": ErrorCode.INCORRECT_CVC,
    "invalid_cvc": ErrorCode.INCORRECT_CVC,
    "incorrect_number": ErrorCode.INCORRECT_NUMBER,
    "invalid_number": ErrorCode.INCORRECT_NUMBER,
    "processing_error": ErrorCode.PROCESSING_ERROR,
    "try_again_later": ErrorCode.PROCESSING_ERROR,
    "authentication_required": ErrorCode.AUTHENTICATION_REQUIRED,
}

# Stripe error `code` → our code, for card errors without a decline code we know.
CARD_ERROR_CODES: dict[str, ErrorCode] = {
    "card_declined": ErrorCode.CARD_DECLINED,
    "expired_card": ErrorCode.EXPIRED_CARD,
    "incorrect_cvc": ErrorCode.INCORRECT_CVC,
    "invalid_cvc": ErrorCode.INCORRECT_CVC,
    "incorrect_number": ErrorCode.INCORRECT_NUMBER,
    "invalid_number": ErrorCode.INCORRECT_NUMBER,
    "processing_error": ErrorCode.PROCESSING_ERROR,
    "authentication_required": ErrorCode.AUTHENTICATION_REQUIRED,
    "payment_intent_authentication_failure": ErrorCode.AUTHENTICATION_REQUIRED,
}


def card_failure(decline_code: str | None, code: str | None) -> ErrorCode:
    """Our code for a card's failure as the provider named it (a decline we do not know
    by name is a plain decline)."""
    return (
        DECLINE_CODES.get(decline_code or "")
        or CARD_ERROR_CODES.get(code or "")
        or ErrorCode.CARD_DECLINED
    )


# The card's issuer refused the payment (what card testing produces), as opposed to the
# provider failing or asking for authentication.
ISSUER_DECLINES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.CARD_DECLINED,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.EXPIRED_CARD,
        ErrorCode.INCORRECT_CVC,
        ErrorCode.INCORRECT_NUMBER,
        ErrorCode.LOST_OR_STOLEN,
        ErrorCode.FRAUDULENT,
    }
)

# Retryable = the same request may succeed later without the customer doing anything.
RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.PROCESSING_ERROR,
        ErrorCode.RATE_LIMITED,
        ErrorCode.PROVIDER_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    }
)


class GatewayError(PaystreamError):
    """A provider call failed; normalised at the gateway boundary."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        provider: str,
        retryable: bool | None = None,
        decline_code: str | None = None,
        http_status: int | None = None,
        provider_request_id: str | None = None,
        retry_after: float | None = None,
        provider_payment_id: str | None = None,
        reached_provider: bool = True,
    ) -> None:
        super().__init__(f"{provider}: {code}: {message}")
        self.code = code
        self.message = message
        self.provider = provider
        # A card error (402) is the provider's answer, stored under the idempotency key and
        # replayed on every retry with it (as Stripe does): final for this request, even
        # for a code that is otherwise transient (processing_error). A new request, with
        # a new key, may still succeed.
        if retryable is None:
            retryable = code in RETRYABLE and http_status != 402
        self.retryable = retryable
        self.decline_code = decline_code
        self.http_status = http_status
        self.provider_request_id = provider_request_id
        # Seconds the provider asked us to wait (Retry-After, an in-use idempotency key).
        self.retry_after = retry_after
        # A declined payment still exists at the provider (Stripe keeps the PaymentIntent).
        self.provider_payment_id = provider_payment_id
        # False: refused here, before any request (an unsupported operation, an amount the
        # provider's rules refuse): says nothing of the provider's health.
        self.reached_provider = reached_provider
        # False: retryable, but not under the same key now (Stripe-Should-Retry: false on
        # an answer Stripe keeps for the key, a 500 included): parked at once.
        self.retry_now = True
        # True: the provider answered, in words this version cannot read (a status added
        # since): it is healthy, the answer stands for the key; parked until an upgrade.
        self.unreadable_answer = False
        # True: a store of the gateway's own refused (Paddle's in-flight keys in Redis),
        # not the provider: retried and parked alike, but no verdict on the provider's
        # circuit (its reads and cancels, which need no such store, go on).
        self.local_dependency = False
        # The provider's object read back after a refusal that came once part of the
        # request was applied (Paddle: a PATCH, then /activate refused): what it holds
        # now, for the record (a gw.base result; None: nothing read).
        self.read_back: object | None = None

    def as_outcome(self) -> dict[str, object]:
        """The error as it appears in a failure outcome's data (no secrets, no card data)."""
        out: dict[str, object] = {
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
            "provider": self.provider,
        }
        if self.decline_code:
            out["decline_code"] = self.decline_code
        if self.provider_request_id:
            out["provider_request_id"] = self.provider_request_id
        if self.provider_payment_id:
            out["provider_payment_id"] = self.provider_payment_id
        return out


def unsupported_message(
    provider: str, what: str, *, left_out: str | None = None, tenant_id: str | None = None
) -> str:
    """The one wording of an `unsupported` answer, for every provider: the provider
    lacks ``what``, or (``left_out``: the capability's name) the tenant's own
    ``capabilities`` gateway option left out a capability its provider has (review h74r:
    "simulator does not support payouts" sent a tenant that had narrowed them out to
    look for the fault in the simulator)."""
    if left_out is None:
        return f"{provider} does not support {what}"
    whose = f"tenant {tenant_id}'s" if tenant_id else "the tenant's"
    which = "" if what == left_out else f"{what}; "
    return (
        f"{whose} gateway option `capabilities` leaves out {left_out} "
        f"({which}{provider} supports it)"
    )


class UnsupportedOperation(GatewayError):
    """The provider has no such capability, or the tenant's ``capabilities`` option left
    it out (``left_out``: that capability's name); answered as a clear `unsupported`
    outcome. ``message``: a reason of the tenant's setup other than a capability's (a
    Stripe tenant acting for a connected account cannot make connected accounts)."""

    def __init__(
        self,
        provider: str,
        operation: str,
        *,
        left_out: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(
            ErrorCode.UNSUPPORTED,
            message or unsupported_message(provider, operation, left_out=left_out),
            provider=provider,
            retryable=False,
            reached_provider=False,
        )
        self.operation = operation
        self.left_out = left_out


class DraftLinesDiffer(GatewayError):
    """A draft's lines at its provider are not those recorded (an update of them
    unfinished): its finalize refused ``invalid_state``, and not remembered, so the same
    command may be sent again once the update is finished."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(ErrorCode.INVALID_STATE, message, provider=provider, retryable=False)
