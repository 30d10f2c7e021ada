"""What the contract suite needs from each gateway beyond the protocol itself."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aredis
import stripe
from pydantic import SecretStr

from paystream.gateways.base import (
    AttachPaymentMethod,
    CaptureMethod,
    CreatePayment,
    GatewayContext,
    PaymentGateway,
    PaymentResult,
    PayoutResult,
    RetrievePayment,
)
from paystream.gateways.registry import GATEWAYS, GatewayDeps, build_gateway
from paystream.gateways.simulator.gateway import SimulatorGateway
from paystream.gateways.simulator.operations import PAYOUT_TEST_ACCOUNTS
from paystream.gateways.square import SquareGateway
from paystream.money import Money
from paystream.settings import load_settings
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN

__all__ = [
    "Harness",
    "advance_square_clock",
    "decide_fake_dispute",
    "localstripe_token",
    "open_fake_dispute",
    "open_square_dispute",
    "over_gateways",
    "paddle_checkout",
    "pause_square_subscription",
    "pay_square_invoice",
    "square_today",
]

# localstripe only knows a few canonical test PaymentMethods; others are created the way
# Stripe.js would, from Stripe's *public* test numbers (never real card data).
_LOCALSTRIPE_CANONICAL = {
    "pm_card_visa",
    "pm_card_visa_chargeDeclined",
    "pm_card_chargeCustomerFail",
}
_LOCALSTRIPE_TEST_NUMBERS = {
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "4000008260003178",
    # Stripe disputes its charges by itself; localstripe does not (dispute_for opens the
    # dispute through the tests' fake of Stripe's disputes: localstripe_server.py).
    "pm_card_createDispute": "4000000000000259",
    # Stripe's test card whose charge is available at once (its pending balance
    # bypassed): what a payout is made from in test mode.
    "pm_card_bypassPending": "4000000000000077",
}
# A payout failure code → the simulator's (Stripe's) test bank account that fails so.
_FAILING_ACCOUNTS = {code: number for number, (code, _) in PAYOUT_TEST_ACCOUNTS.items()}
# Long enough for a standard payout to arrive, and a capture to settle, on the simulator.
_PAYOUT_DAYS = 3 * 24 * 3600


# Stripe's test-card token names → Square's Sandbox test payment tokens (nonces); any
# other name is a card on file Square does not have (NOT_FOUND).
_SQUARE_NONCES = {
    "pm_card_visa": "cnon:card-nonce-ok",
    "pm_card_mastercard": "cnon:card-nonce-ok",
    "pm_card_createDispute": "cnon:card-nonce-ok",
    "pm_card_visa_chargeDeclined": "cnon:card-nonce-declined",
    "pm_card_chargeDeclined": "cnon:card-nonce-declined",
    "pm_card_chargeCustomerFail": "cnon:card-nonce-declined",
    "pm_card_chargeDeclinedIncorrectCvc": "cnon:card-nonce-rejected-cvv",
    "pm_card_chargeDeclinedExpiredCard": "cnon:card-nonce-rejected-expiration",
}


def over_gateways(
    localstripe_gap: str | None = None,
    *,
    square_lacks: str | None = None,
    square_gap: str | None = None,
    localstripe_lacks: str | None = None,
    paddle_lacks: str | None = None,
    paddle_gap: str | None = None,
) -> pytest.MarkDecorator:
    """Run a contract test on every gateway; a known localstripe gap, or a gap of the
    tests' FAKE Square (or FAKE Paddle), is a strict xfail. ``square_lacks``: Square has
    no such behaviour at all: skipped there, with the reason (tests/gateways/square checks
    what Square's gateway answers instead); ``paddle_lacks`` likewise for Paddle
    (tests/gateways/paddle_gateway). ``localstripe_lacks``: a provider-side control Stripe
    has and localstripe has not (test clocks): skipped there, with the reason."""
    params = []
    for name in sorted(GATEWAYS):
        marks = []
        if name == "paddle" and paddle_lacks:
            marks.append(pytest.mark.skip(reason=f"Paddle: {paddle_lacks}"))
        if name == "paddle" and paddle_gap:
            marks.append(pytest.mark.xfail(strict=True, reason=f"paddle fake: {paddle_gap}"))
        if name == "stripe" and localstripe_lacks:
            marks.append(pytest.mark.skip(reason=f"localstripe: {localstripe_lacks}"))
        if name == "stripe" and localstripe_gap:
            marks.append(pytest.mark.xfail(strict=True, reason=f"localstripe: {localstripe_gap}"))
        if name == "square" and square_lacks:
            marks.append(pytest.mark.skip(reason=f"Square: {square_lacks}"))
        if name == "square" and square_gap:
            marks.append(pytest.mark.xfail(strict=True, reason=f"square fake: {square_gap}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return pytest.mark.parametrize("harness", params, indirect=True)


class Harness:
    """A gateway for one fresh tenant, plus provider-side helpers per gateway."""

    def __init__(
        self,
        name: str,
        tenant_id: str,
        *,
        redis: aredis.Redis,
        stripe_url: str,
        square_url: str = "",
        paddle_url: str = "",
    ) -> None:
        if name not in ("simulator", "stripe", "square", "paddle"):
            raise AssertionError(f"the contract harness does not know gateway {name!r} yet")
        self.name = name
        self.tenant_id = tenant_id
        self._redis = redis
        self._stripe_url = stripe_url
        self._square_url = square_url
        self._paddle_url = paddle_url
        self._settings = load_settings(
            stripe_api_base=stripe_url or "http://127.0.0.1:1",
            square_api_base=square_url or "http://127.0.0.1:1",
            paddle_api_base=paddle_url or "http://127.0.0.1:1",
        )
        # What the provider's test card shows (Square's Sandbox card is 4111 1111 1111
        # 1111), and the reason its test dispute has (Square names its own).
        self.visa_last4 = "1111" if name == "square" else "4242"
        self.dispute_reason = "no_knowledge" if name == "square" else "fraudulent"
        # The dispute fee a USD chargeback shows (Stripe US's 15.00, the FAKE's balance
        # transaction and the simulator's table alike); Square's dispute tells none.
        self.dispute_fee = None if name == "square" else Money(amount=1500, currency="USD")
        self._built: list[PaymentGateway] = []
        self.gateway = self.build()

    def build(self, **options: Any) -> PaymentGateway:
        """Another gateway for the same tenant, with extra options."""
        credentials = {"api_key": SecretStr(LOCALSTRIPE_API_KEY)} if self.name == "stripe" else {}
        if self.name == "square":
            credentials = {"access_token": SecretStr(FAKE_SQUARE_TOKEN)}
            options = {"location_id": FAKE_SQUARE_LOCATION, **options}
        if self.name == "paddle":
            credentials = {"api_key": SecretStr(FAKE_PADDLE_API_KEY)}
        ctx = GatewayContext(
            tenant_id=self.tenant_id, provider=self.name, credentials=credentials, options=options
        )
        gw = build_gateway(ctx, GatewayDeps(settings=self._settings, redis=self._redis))
        if isinstance(gw, SquareGateway):
            # (a trial's start_date counts from the fake's today, moved on by its clock)
            url = self._square_url
            gw.today = lambda: square_today(url)
        self._built.append(gw)
        return gw

    async def token(self, name: str) -> str:
        """The provider token to use for a Stripe test-card token name (at Paddle, every
        payment's is "checkout": its customer pays there, see settled())."""
        if self.name == "paddle":
            return "checkout"
        if self.name == "square":
            return _SQUARE_NONCES.get(name, f"ccof:{name}")
        if self.name != "stripe":
            return name
        return await localstripe_token(self._stripe_url, name)

    async def card_on_file(self, provider_customer_id: str, name: str) -> str:
        """A card on file of the customer from a Stripe test-card token name. At Square,
        whose Sandbox refuses to save a declining card, a declining name is a card saved
        and then declined by its issuer (the fake's control route)."""
        declines = self.name == "square" and _SQUARE_NONCES.get(name) == "cnon:card-nonce-declined"
        token = await self.token("pm_card_visa" if declines else name)
        pm = await self.gateway.attach_payment_method(
            AttachPaymentMethod(provider_customer_id=provider_customer_id, token=token),
            idempotency_key=uuid.uuid4().hex,
        )
        if declines:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{self._square_url}/_fake/cards/{pm.provider_payment_method_id}/decline",
                    json={},
                ) as resp,
            ):
                resp.raise_for_status()
        return pm.provider_payment_method_id

    async def dispute_for(self, payment: PaymentResult) -> str:
        """The dispute the cardholder opened on a payment (Stripe: found by listing). On
        localstripe the fake's control route opens it first, as Stripe does by itself
        for its dispute card (pm_card_createDispute)."""
        if self.name == "simulator":
            assert payment.dispute is not None
            return payment.dispute.provider_dispute_id
        if self.name == "square":
            return await open_square_dispute(self._square_url, payment.provider_payment_id)
        await open_fake_dispute(self._stripe_url, payment.provider_payment_id)
        http = stripe.AIOHTTPClient()
        client = stripe.StripeClient(
            LOCALSTRIPE_API_KEY, base_addresses={"api": self._stripe_url}, http_client=http
        )
        try:
            found = await client.v1.disputes.list_async(
                {"payment_intent": payment.provider_payment_id}
            )
        finally:
            await http.close_async()
        return str(found.data[0].id)

    async def settled(self, payment: PaymentResult, token: str = "pm_card_visa") -> PaymentResult:
        """The payment as its customer leaves it: at Paddle, paid (or declined, for a
        declining test card's name) at Paddle Checkout, and read back; elsewhere as the
        create answered it (a card charged from the API)."""
        if self.name != "paddle":
            return payment
        outcome = _PADDLE_CHECKOUT_OUTCOMES.get(token, "captured")
        await paddle_checkout(self._paddle_url, payment.provider_payment_id, outcome)
        return await self.gateway.retrieve_payment(
            RetrievePayment(provider_payment_id=payment.provider_payment_id),
            idempotency_key=f"read-{uuid.uuid4().hex}",
        )

    async def authenticate(self, payment: PaymentResult, *, succeed: bool = True) -> None:
        """The customer finishes (or fails) the payment's 3-D Secure step at the provider
        (at Paddle: pays at Paddle Checkout, or fails its authentication there)."""
        if self.name == "paddle":
            outcome = "captured" if succeed else "authentication_failed"
            await paddle_checkout(self._paddle_url, payment.provider_payment_id, outcome)
            return
        if self.name == "simulator":
            sim = self.gateway
            assert isinstance(sim, SimulatorGateway)
            await sim.complete_authentication(payment.provider_payment_id, succeed=succeed)
            return
        # localstripe's own endpoint for what Stripe.js does, given the client secret.
        url = f"{self._stripe_url}/v1/payment_intents/{payment.provider_payment_id}"
        auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=auth) as resp:
                resp.raise_for_status()
                secret = str((await resp.json())["client_secret"])
            form = {"client_secret": secret, "success": "true" if succeed else "false"}
            async with session.post(f"{url}/_authenticate", data=form, headers=auth) as resp:
                # The issuer's decline after a passed step (a 3178 card) is the card's
                # answer to the customer, not a failure of the step; anything else is.
                if resp.status == 402 and succeed:
                    error = (await resp.json()).get("error", {})
                    assert error.get("code") == "card_declined", error
                    return
                resp.raise_for_status()

    async def fund(self, amount: int, currency: str = "EUR") -> None:
        """Money available to pay out: a charge, settled (the simulator's clock moved past
        its settlement delay; at Stripe the test card whose funds are available at once)."""
        name = "pm_card_bypassPending" if self.name == "stripe" else "pm_card_visa"
        req = CreatePayment(
            amount=Money(amount=amount, currency=currency),
            provider_payment_method_id=await self.token(name),
            capture_method=CaptureMethod.AUTOMATIC,
        )
        await self.gateway.create_payment(req, idempotency_key=f"fund-{uuid.uuid4().hex}")
        if self.name == "simulator":
            await self.pass_time(_PAYOUT_DAYS)

    def payout_gateway(self, *, failing: str | None = None) -> PaymentGateway:
        """The tenant's gateway; ``failing``: one whose payouts the bank returns with that
        failure code (the simulator's option naming Stripe's test bank account that fails
        so; on localstripe, settle_payout fails it)."""
        if failing is None or self.name != "simulator":
            return self.gateway
        return self.build(payout_destination=_FAILING_ACCOUNTS[failing])

    async def settle_payout(self, payout: PayoutResult, *, failing: str | None = None) -> None:
        """The payout arrives at the bank (paid; or failed, ``failing`` its code): the
        simulator's clock moves past its arrival; localstripe's payout is moved there
        (its update takes a status: a TEST-ONLY control, as its create's status is)."""
        if self.name == "simulator":
            await self.pass_time(_PAYOUT_DAYS)
            return
        if self.name != "stripe":
            raise AssertionError(f"no payouts to settle at {self.name}")
        form = {"status": "paid"}
        if failing is not None:
            form = {
                "status": "failed",
                "failure_code": failing,
                "failure_message": f"the bank returned the payout ({failing})",
            }
        auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self._stripe_url}/v1/payouts/{payout.provider_payout_id}",
                data=form,
                headers=auth,
            ) as resp,
        ):
            resp.raise_for_status()

    async def onboard(self, provider_account_id: str, outcome: str = "enabled") -> None:
        """The connected account's holder finishes onboarding (``outcome``: enabled,
        restricted or rejected): the simulator's provider action; at localstripe the
        FAKE accounts' control route (tests/fixtures/localstripe_server.py)."""
        if self.name == "simulator":
            sim = self.gateway
            assert isinstance(sim, SimulatorGateway)
            await sim.complete_onboarding(provider_account_id, outcome)
            return
        if self.name != "stripe":
            raise AssertionError(f"no connected accounts at {self.name}")
        auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self._stripe_url}/_fake/accounts/{provider_account_id}/onboard",
                data={"outcome": outcome},
                headers=auth,
            ) as resp,
        ):
            resp.raise_for_status()

    async def credit(self, provider_customer_id: str, amount: Money) -> None:
        """The seller credits the customer's balance (its dashboard): the simulator's
        credit_customer; at localstripe Stripe's customer update with a ``balance`` that
        much lower (a negative balance is a credit)."""
        if self.name == "simulator":
            sim = self.gateway
            assert isinstance(sim, SimulatorGateway)
            await sim.credit_customer(provider_customer_id, amount)
            return
        if self.name != "stripe":
            raise AssertionError(f"no customer balance at {self.name}")
        held = await self.customer_credit(provider_customer_id, amount.currency)
        auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self._stripe_url}/v1/customers/{provider_customer_id}",
                data={"balance": str(-(held + amount.amount))},
                headers=auth,
            ) as resp,
        ):
            resp.raise_for_status()

    async def customer_credit(self, provider_customer_id: str, currency: str) -> int:
        """The customer's balance: a credit positive, a debit negative (Stripe's
        ``balance`` negated; localstripe keeps that as ``account_balance``)."""
        if self.name == "simulator":
            sim = self.gateway
            assert isinstance(sim, SimulatorGateway)
            return await sim.customer_credit(provider_customer_id, currency)
        held = await self.stripe_object(f"customers/{provider_customer_id}")
        return int(held.get("account_balance") or 0)

    async def stripe_object(self, path: str) -> dict[str, Any]:
        """``GET /v1/{path}`` at localstripe, as Stripe holds it (what no result names)."""
        auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self._stripe_url}/v1/{path}", headers=auth) as resp,
        ):
            resp.raise_for_status()
            return dict(await resp.json())

    async def pass_time(self, seconds: int) -> None:
        """The provider's clock moves on (the simulator's per-tenant test clock; the FAKE
        Square's clock, which bills its subscriptions' periods begun; Stripe's would be a
        test clock, which localstripe has not: over_gateways skips it)."""
        if self.name == "square":
            await advance_square_clock(self._square_url, seconds)
            return
        sim = self.gateway
        if not isinstance(sim, SimulatorGateway):
            raise AssertionError(f"no clock to move at {self.name}")
        await sim.advance_clock(seconds)

    async def aclose(self) -> None:
        for gw in self._built:
            await gw.aclose()


# Stripe's test-card names → how the customer's payment at Paddle Checkout ends (a
# payment attempt's error_code); any other name pays.
_PADDLE_CHECKOUT_OUTCOMES = {
    "pm_card_visa_chargeDeclined": "declined",
    "pm_card_chargeDeclined": "declined",
    "pm_card_chargeCustomerFail": "declined",
    "pm_card_chargeDeclinedInsufficientFunds": "not_enough_balance",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}


async def paddle_checkout(paddle_url: str, transaction_id: str, outcome: str = "captured") -> None:
    """The customer pays a Paddle transaction at Paddle Checkout (or the attempt fails
    with ``outcome``), through the TEST-ONLY control route of the FAKE Paddle
    (tests/fixtures/paddle_fake.py)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{paddle_url}/_fake/transactions/{transaction_id}/checkout",
            json={"outcome": outcome},
        ) as resp,
    ):
        resp.raise_for_status()


async def advance_square_clock(square_url: str, seconds: int) -> None:
    """The FAKE Square's clock moves on ``seconds`` (TEST-ONLY control route of
    tests/fixtures/square_fake.py): its subscriptions bill the periods begun."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}/_fake/clock", json={"seconds": seconds}) as resp,
    ):
        resp.raise_for_status()


async def square_today(square_url: str) -> date:
    """The FAKE Square's today (its clock, moved on by advance_square_clock)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}/_fake/clock", json={"seconds": 0}) as resp,
    ):
        resp.raise_for_status()
        return date.fromisoformat((await resp.json())["today"])


async def pay_square_invoice(square_url: str, invoice_id: str) -> None:
    """The customer pays an unpaid Square invoice from its email (TEST-ONLY control route
    of tests/fixtures/square_fake.py)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}/_fake/invoices/{invoice_id}/pay", json={}) as resp,
    ):
        resp.raise_for_status()


async def pause_square_subscription(square_url: str, subscription_id: str) -> None:
    """The seller pauses a Square subscription in Square's dashboard, PAUSED now
    (TEST-ONLY control route of tests/fixtures/square_fake.py)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}/_fake/subscriptions/{subscription_id}/pause", json={}) as resp,
    ):
        resp.raise_for_status()


async def open_square_dispute(square_url: str, provider_payment_id: str, **fields: str) -> str:
    """The cardholder disputes a Square payment, through the TEST-ONLY control route of
    the FAKE Square (tests/fixtures/square_fake.py); the dispute's id."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{square_url}/_fake/disputes", json={"payment_id": provider_payment_id, **fields}
        ) as resp,
    ):
        resp.raise_for_status()
        return str((await resp.json())["dispute"]["id"])


async def localstripe_token(stripe_url: str, name: str) -> str:
    """localstripe's PaymentMethod for a Stripe test-card token name (made from its public
    test number, as Stripe.js would, where localstripe does not know the token)."""
    if name in _LOCALSTRIPE_CANONICAL:
        return name
    number = _LOCALSTRIPE_TEST_NUMBERS.get(name)
    if number is None:
        return name  # localstripe will answer 404: the test's xfail says so
    form = {
        "type": "card",
        "card[number]": number,
        "card[exp_month]": "12",
        "card[exp_year]": "2034",
        "card[cvc]": "123",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stripe_url}/v1/payment_methods",
            data=form,
            headers={"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"},
        ) as resp,
    ):
        resp.raise_for_status()
        return str((await resp.json())["id"])


async def open_fake_dispute(
    stripe_url: str,
    provider_payment_id: str,
    *,
    status: str = "needs_response",
    reason: str = "fraudulent",
    events: bool = False,
) -> dict[str, Any]:
    """The cardholder disputes the PaymentIntent's charge, through the FAKE disputes of
    tests/fixtures/localstripe_server.py (localstripe has none): ``{"dispute": ...,
    "event": the id of the charge.dispute.created localstripe sends, with events}``."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with aiohttp.ClientSession(base_url=stripe_url, headers=auth) as session:
        async with session.get(f"/v1/payment_intents/{provider_payment_id}") as resp:
            resp.raise_for_status()
            charge = (await resp.json())["latest_charge"]
        charge_id = charge["id"] if isinstance(charge, dict) else charge
        form = {"charge": charge_id, "status": status, "reason": reason}
        if events:
            form["events"] = "true"
        async with session.post("/_fake/disputes", data=form) as resp:
            resp.raise_for_status()
            return dict(await resp.json())


async def decide_fake_dispute(
    stripe_url: str, provider_dispute_id: str, status: str, *, events: bool = False
) -> dict[str, Any]:
    """The card network decides the dispute (won or lost), through the FAKE disputes."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    form = {"status": status, **({"events": "true"} if events else {})}
    async with (
        aiohttp.ClientSession(base_url=stripe_url, headers=auth) as session,
        session.post(f"/_fake/disputes/{provider_dispute_id}/decide", data=form) as resp,
    ):
        resp.raise_for_status()
        return dict(await resp.json())
