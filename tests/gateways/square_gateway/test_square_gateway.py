"""The Square gateway beyond the contract suite: Square's test nonces onto paystream's
vocabulary, what Square lacks answered `unsupported`, its idempotency keys, its error
mapping and its tenant options. Against the FAKE Square (tests/fixtures/square_fake.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    CapturePayment,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    GatewayContext,
    PaymentStatus,
    RefundStatus,
    RetrievePayment,
    UpdateCustomer,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.registry import (
    GatewayDeps,
    build_gateway,
    validate_connected_account,
    validate_options,
)
from paystream.gateways.square.errors import map_square_answer
from paystream.gateways.square.gateway import SquareGateway, square_key
from paystream.money import Money
from paystream.settings import load_settings
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def usd(amount: int) -> Money:
    return Money(amount=amount, currency="USD")


def _gateway(url: str, token: str = FAKE_SQUARE_TOKEN, **options: object) -> SquareGateway:
    ctx = GatewayContext(
        tenant_id="t-square",
        provider="square",
        credentials={"access_token": SecretStr(token)},
        options={"location_id": FAKE_SQUARE_LOCATION, **options},
    )
    gw = build_gateway(ctx, GatewayDeps(settings=load_settings(square_api_base=url)))
    assert isinstance(gw, SquareGateway)
    return gw


@pytest.fixture
async def square(square_url: str) -> AsyncIterator[SquareGateway]:
    gw = _gateway(square_url)
    yield gw
    await gw.aclose()


async def _expect(code: ErrorCode, coro: object) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code is code, info.value
    return info.value


@pytest.mark.parametrize(
    ("nonce", "code", "decline"),
    [
        ("cnon:card-nonce-declined", ErrorCode.CARD_DECLINED, "generic_decline"),
        ("cnon:card-nonce-rejected-cvv", ErrorCode.INCORRECT_CVC, "cvv_failure"),
        ("cnon:card-nonce-rejected-expiration", ErrorCode.EXPIRED_CARD, "invalid_expiration"),
        (
            "cnon:card-nonce-rejected-postalcode",
            ErrorCode.CARD_DECLINED,
            "address_verification_failure",
        ),
    ],
)
async def test_square_s_declining_nonces_map_onto_the_vocabulary(
    square: SquareGateway, nonce: str, code: ErrorCode, decline: str
) -> None:
    req = CreatePayment(amount=usd(500), provider_payment_method_id=nonce)
    k = key()
    err = await _expect(code, square.create_payment(req, idempotency_key=k))
    assert (err.retryable, err.decline_code, err.http_status) == (False, decline, 400)
    # The FAILED payment Square answers beside the decline: named, and read back so.
    assert err.provider_payment_id
    failed = await square.retrieve_payment(
        RetrievePayment(provider_payment_id=err.provider_payment_id), idempotency_key=key()
    )
    assert (failed.status, failed.failure_code, failed.amount_captured) == (
        PaymentStatus.FAILED,
        decline,
        0,
    )
    # The same request again, under the same key: a decline is no successful answer,
    # so Square runs it again (no replay): declined again, another FAILED payment,
    # never a charge.
    again = await _expect(code, square.create_payment(req, idempotency_key=k))
    assert again.decline_code == decline
    assert again.provider_payment_id and again.provider_payment_id != err.provider_payment_id


async def test_a_partial_capture_is_unsupported_and_the_whole_capture_goes_through(
    square: SquareGateway,
) -> None:
    auth = await square.create_payment(
        CreatePayment(
            amount=usd(3000),
            provider_payment_method_id="cnon:card-nonce-ok",
            capture_method="manual",
        ),
        idempotency_key=key(),
    )
    assert auth.status is PaymentStatus.AUTHORIZED and auth.amount_captured == 0
    partial = CapturePayment(provider_payment_id=auth.provider_payment_id, amount=1000)
    with pytest.raises(UnsupportedOperation) as info:
        await square.capture_payment(partial, idempotency_key=key())
    assert not info.value.retryable and not info.value.reached_provider
    whole = CapturePayment(provider_payment_id=auth.provider_payment_id)
    done = await square.capture_payment(whole, idempotency_key=key())
    assert (done.status, done.amount_captured) == (PaymentStatus.SUCCEEDED, 3000)
    # Keyless at Square: asked again (a lost answer's retry), it reads back as it is.
    again = await square.capture_payment(whole, idempotency_key=key())
    assert (again.status, again.amount_captured) == (PaymentStatus.SUCCEEDED, 3000)


async def test_customer_metadata_is_unsupported(square: SquareGateway) -> None:
    with pytest.raises(UnsupportedOperation):
        await square.create_customer(
            CreateCustomer(email="a@example.com", metadata={"tier": "gold"}), idempotency_key=key()
        )
    made = await square.create_customer(CreateCustomer(name="Ada"), idempotency_key=key())
    with pytest.raises(UnsupportedOperation):
        await square.update_customer(
            UpdateCustomer(provider_customer_id=made.provider_customer_id, metadata={"x": "1"}),
            idempotency_key=key(),
        )


def test_square_keys_are_deterministic_and_fit_45_characters() -> None:
    long_key = "tenant-with-a-long-name:" + "c" * 200
    derived = square_key(long_key)
    assert derived == square_key(long_key) and len(derived) <= 45
    # Two keys sharing their first 45 characters are two keys at Square too.
    assert square_key(long_key) != square_key(long_key[:-1] + "d")
    assert square_key("k", "evidence", "a") != square_key("k", "evidence", "b")


async def test_a_redelivered_payment_is_the_same_payment_at_square(square: SquareGateway) -> None:
    k = "x" * 120  # (longer than Square takes: the derived key is sent)
    req = CreatePayment(amount=usd(700), provider_payment_method_id="cnon:card-nonce-ok")
    first = await square.create_payment(req, idempotency_key=k)
    second = await square.create_payment(req, idempotency_key=k)
    assert second == first


async def test_a_redelivered_whole_refund_is_the_first_refund(square: SquareGateway) -> None:
    """RefundPayment needs an amount: "what is left" is read first. Redelivered after the
    first went through, what is left is 0: the key's own request is found and answered."""
    paid = await square.create_payment(
        CreatePayment(amount=usd(900), provider_payment_method_id="cnon:card-nonce-ok"),
        idempotency_key=key(),
    )
    pid = paid.provider_payment_id
    await square.create_refund(
        CreateRefund(provider_payment_id=pid, amount=100), idempotency_key=key()
    )
    k = key()
    whole = CreateRefund(provider_payment_id=pid)
    first = await square.create_refund(whole, idempotency_key=k)
    assert (first.amount, first.status) == (usd(800), RefundStatus.SUCCEEDED)
    again = await square.create_refund(whole, idempotency_key=k)
    assert again == first
    now = await square.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key=k)
    assert (now.amount_captured, now.amount_refunded) == (900, 900)
    await _expect(ErrorCode.INVALID_STATE, square.create_refund(whole, idempotency_key=key()))


async def test_a_wrong_token_is_authentication_failed_and_never_quoted(square_url: str) -> None:
    gw = _gateway(square_url, token="EAAAwrong-token-0123456789")
    try:
        err = await _expect(
            ErrorCode.AUTHENTICATION_FAILED,
            gw.create_customer(CreateCustomer(name="Ada"), idempotency_key=key()),
        )
    finally:
        await gw.aclose()
    assert (
        not err.retryable
        and "EAAAwrong" not in str(err)
        and "EAAAwrong" not in repr(err.as_outcome())
    )


async def test_square_unreachable_is_provider_unavailable_and_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens)
    gw = _gateway(f"http://127.0.0.1:{port}")
    try:
        err = await _expect(
            ErrorCode.PROVIDER_UNAVAILABLE,
            gw.retrieve_payment(RetrievePayment(provider_payment_id="p"), idempotency_key=key()),
        )
    finally:
        await gw.aclose()
    assert err.retryable


def _errors(code: str, category: str = "INVALID_REQUEST_ERROR") -> dict[str, object]:
    return {"errors": [{"category": category, "code": code, "detail": f"{code} detail"}]}


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (429, _errors("RATE_LIMITED", "RATE_LIMIT_ERROR"), ErrorCode.RATE_LIMITED, True),
        (500, _errors("INTERNAL_SERVER_ERROR", "API_ERROR"), ErrorCode.PROVIDER_UNAVAILABLE, True),
        (503, _errors("SERVICE_UNAVAILABLE", "API_ERROR"), ErrorCode.PROVIDER_UNAVAILABLE, True),
        (504, _errors("GATEWAY_TIMEOUT", "API_ERROR"), ErrorCode.TIMEOUT, True),
        (
            401,
            _errors("UNAUTHORIZED", "AUTHENTICATION_ERROR"),
            ErrorCode.AUTHENTICATION_FAILED,
            False,
        ),
        (
            401,
            _errors("ACCESS_TOKEN_EXPIRED", "AUTHENTICATION_ERROR"),
            ErrorCode.AUTHENTICATION_FAILED,
            False,
        ),
        (
            403,
            _errors("INSUFFICIENT_SCOPES", "AUTHENTICATION_ERROR"),
            ErrorCode.PERMISSION_DENIED,
            False,
        ),
        (400, _errors("IDEMPOTENCY_KEY_REUSED"), ErrorCode.IDEMPOTENCY_ERROR, False),
        (404, _errors("NOT_FOUND"), ErrorCode.NOT_FOUND, False),
        (400, _errors("DELAYED_TRANSACTION_CAPTURED"), ErrorCode.INVALID_STATE, False),
        (400, _errors("REFUND_AMOUNT_INVALID"), ErrorCode.INVALID_REQUEST, False),
        (
            400,
            _errors("INSUFFICIENT_FUNDS", "PAYMENT_METHOD_ERROR"),
            ErrorCode.INSUFFICIENT_FUNDS,
            False,
        ),
        (400, _errors("CARD_EXPIRED", "PAYMENT_METHOD_ERROR"), ErrorCode.EXPIRED_CARD, False),
        (502, "<html>bad gateway</html>", ErrorCode.PROVIDER_UNAVAILABLE, True),
        (413, "<html>too large</html>", ErrorCode.PROVIDER_UNAVAILABLE, False),
    ],
)
def test_square_s_errors_map_onto_the_vocabulary(
    status: int, body: object, code: ErrorCode, retryable: bool
) -> None:
    err = map_square_answer(status, body)
    assert (err.code, err.retryable) == (code, retryable)
    if code is ErrorCode.RATE_LIMITED:
        assert err.retry_after


def test_square_options_are_checked_when_registering() -> None:
    validate_options("square", {"location_id": "L1A2B3C4D5E6F"})
    for bad in (
        {},
        {"location_id": "EAAAl0ngsecret"},
        {"location_id": "no spaces here"},
        {"location_id": "L1A2B3C4D5E6F", "api_key": "x"},
        {"location_id": "L1A2B3C4D5E6F", "capabilities": ["partial_capture"]},
    ):
        with pytest.raises(ConfigurationError) as info:
            validate_options("square", bad)
        assert "EAAAl0ngsecret" not in str(info.value)
    for account in ("EAAAl0ngsecret", "acct_123"):
        with pytest.raises(ConfigurationError):
            validate_connected_account("square", account)
    with pytest.raises(ConfigurationError, match="secret key"):
        validate_connected_account("stripe", "EAAAl0ngsecret")


def test_the_square_api_base_is_https_or_this_machine() -> None:
    assert load_settings(square_api_base="http://127.0.0.1:9").square_api_base
    assert load_settings().square_api_base == "https://connect.squareup.com"
    with pytest.raises(ConfigurationError, match="PAYSTREAM_SQUARE_API_BASE"):
        load_settings(square_api_base="http://squareup.example")


async def test_the_worker_keeps_httpx_from_logging_each_square_call(
    square: SquareGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx, the SDK's transport, logs every request at INFO ("HTTP Request: POST
    .../v2/customers/<id>"), a line per provider call at the worker's default level (as
    Stripe's SDK did): held at WARNING, as the Stripe SDK's logger is."""
    import logging

    from paystream.worker import quiet_libraries

    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    before = [logger.level for logger in loggers]
    quiet_libraries("info")
    try:
        with caplog.at_level(logging.INFO):
            made = await square.create_customer(CreateCustomer(name="Ada"), idempotency_key=key())
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
    assert made.provider_customer_id
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))], caplog.text
