"""The Paddle SDK logs every request's URL (INFO), every answer's body (DEBUG) and each
failure with its URL (ERROR) through its logger: by default one named ``null_logger``
that propagates to the root logger, so a worker logged ``GET .../customers?email=<the
customer's email>`` for every customer create sent again (review h75r1 F3). The client
gives it a logger of its own that goes nowhere."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from paystream.gateways.base import CreateCustomer
from paystream.worker import quiet_libraries
from tests.gateways.paddle_gateway.wire import gateway, key

_QUIETED = ("aiokafka", "stripe", "httpx", "httpcore", "paddle_billing", "urllib3")


@pytest.fixture(autouse=True)
def _levels_kept() -> Iterator[None]:
    """quiet_libraries sets process-wide levels: put back after each test."""
    levels = {n: logging.getLogger(n).level for n in _QUIETED}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_no_customer_email_or_body_reaches_the_logs(
    paddle_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_libraries("INFO")  # (as the worker does at its default level)
    gw = gateway(paddle_url)
    email = f"leak-{uuid.uuid4().hex[:8]}@example.com"
    req = CreateCustomer(email=email, name="Ada Lovelace")
    k = key()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().setLevel(logging.INFO)  # the worker's root level
        await gw.create_customer(req, idempotency_key=k)
        # Sent again (its answer lost): customer_already_exists, then GET ?email=
        await gw.create_customer(req, idempotency_key=k)
    await gw.aclose()
    leaked = [
        (r.name, r.levelname, r.getMessage()[:160])
        for r in caplog.records
        if r.levelno >= logging.INFO
        and (email.replace("@", "%40") in r.getMessage() or email in r.getMessage())
    ]
    assert not leaked, f"the customer's email in the worker's logs: {leaked}"


async def test_no_answer_body_at_debug(paddle_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """At PAYSTREAM_LOG_LEVEL=debug the SDK logs each answer's body (names, emails,
    custom_data): quiet_libraries keeps httpx/httpcore/stripe at WARNING even then."""
    quiet_libraries("DEBUG")
    gw = gateway(paddle_url)
    email = f"body-{uuid.uuid4().hex[:8]}@example.com"
    with caplog.at_level(logging.DEBUG):
        await gw.create_customer(CreateCustomer(email=email, name="Grace"), idempotency_key=key())
    await gw.aclose()
    leaked = [r.name for r in caplog.records if email in r.getMessage()]
    assert not leaked, f"an answer's body (the customer's email) logged by {leaked}"
