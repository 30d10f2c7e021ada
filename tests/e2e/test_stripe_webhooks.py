"""Stripe webhooks into a real worker: `POST /webhooks/stripe/{tenant}`.

localstripe is the real peer: it keeps the PaymentIntent, runs the customer's 3-D Secure
step and sends its own signed `payment_intent.*` events to the worker's endpoint. The
rest posts events signed here (with the tenant's endpoint secret, as Stripe signs
them) to hold each rule: a bad or old signature, an unknown tenant, another tenant's
payment, a payment paystream already knows finished, the same event twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import stripe

from paystream.client import PaystreamClient, build_command
from paystream.ids import derived_id
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.secrets import seal_secret
from tests.e2e.gateway_e2e import outcome
from tests.e2e.together import start_together, stop_together
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment, RawSend, wait_for_owners
from tests.gateways.harness import decide_fake_dispute, localstripe_token, open_fake_dispute

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
SECRET = f"whsec_{uuid.uuid4().hex}"  # the "hooked" tenant's endpoint secret
OTHER_SECRET = f"whsec_{uuid.uuid4().hex}"  # "neighbour"'s
TENANT = "hooked"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, localstripe_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    keyring = MasterKeyring(MASTER)

    def stripe_tenant(tenant_id: str, webhook_secret: str | None) -> Tenant:
        secrets = {"api_key": seal_secret(keyring, tenant_id, "api_key", LOCALSTRIPE_API_KEY)}
        if webhook_secret is not None:
            secrets["webhook_secret"] = seal_secret(
                keyring, tenant_id, "webhook_secret", webhook_secret
            )
        return Tenant(tenant_id=tenant_id, gateway="stripe", secrets=secrets)

    with dep.worker() as worker:
        await dep.add_tenants(
            stripe_tenant(TENANT, SECRET),
            stripe_tenant("neighbour", OTHER_SECRET),
            stripe_tenant("unhooked", None),
            Tenant(tenant_id="simulated"),
        )
        worker.wait_ready([TENANT, "neighbour", "unhooked"], partitions=dep.settings.partitions)
        hook = f"paystream-{uuid.uuid4().hex}"
        endpoint = f"{worker.base_url}/webhooks/stripe/{TENANT}"
        async with aiohttp.ClientSession() as session:
            # localstripe sends every event of its (shared) account to this endpoint,
            # signed with the tenant's secret, as a Stripe endpoint does.
            config = {"url": endpoint, "secret": SECRET}
            async with session.post(f"{localstripe_url}/_config/webhooks/{hook}", data=config):
                pass
        try:
            yield dep, worker.base_url
        finally:
            async with aiohttp.ClientSession() as session:
                # Its worker is gone: localstripe is told to send it nothing more.
                mute = {"url": endpoint, "secret": SECRET, "events[]": "paystream.none"}
                async with session.post(f"{localstripe_url}/_config/webhooks/{hook}", data=mute):
                    pass
        assert SECRET not in worker.log_path.read_text(errors="replace")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


def signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    signature = stripe.WebhookSignature._compute_signature(f"{at}.{payload.decode()}", secret)
    return f"t={at},v1={signature}"


_STATUS_AFTER = {  # the PaymentIntent's status in each event
    "payment_intent.succeeded": "succeeded",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.amount_capturable_updated": "requires_capture",
    "payment_intent.payment_failed": "requires_payment_method",
}


def pi_event(
    event_type: str,
    pi: str,
    ref: str | None,
    *,
    event_id: str | None = None,
    status: str | None = None,
    account: str | None = None,
    age: int = 0,
) -> bytes:
    metadata = {"paystream_payment": ref} if ref is not None else {}
    obj = {
        "id": pi,
        "object": "payment_intent",
        "metadata": metadata,
        "status": status or _STATUS_AFTER.get(event_type, "succeeded"),
    }
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()) - age,
        "data": {"object": obj},
    }
    if account is not None:
        event["account"] = account  # (a Connect endpoint's event)
    return json.dumps(event).encode()


async def post(
    base_url: str,
    payload: bytes | AsyncIterator[bytes],
    signature: str | None,
    tenant: str = TENANT,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with aiohttp.ClientSession() as session:
        url = f"{base_url}/webhooks/stripe/{tenant}"
        async with session.post(url, data=payload, headers=headers) as resp:
            return resp.status, dict(await resp.json())


async def payment(base_url: str, payment_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        url = f"{base_url}/v1/tenants/{TENANT}/payments/{payment_id}"
        async with session.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


async def authenticate(localstripe_url: str, pi: str) -> None:
    """What the customer's browser does with the client secret (Stripe.js)."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with aiohttp.ClientSession(base_url=localstripe_url, headers=auth) as session:
        async with session.get(f"/v1/payment_intents/{pi}") as resp:
            intent = await resp.json()
        form = {"client_secret": intent["client_secret"], "success": "true"}
        async with session.post(f"/v1/payment_intents/{pi}/_authenticate", data=form) as resp:
            resp.raise_for_status()


async def pending_3ds_payment(client: PaystreamClient, stripe_url: str) -> dict[str, Any]:
    token = await localstripe_token(stripe_url, "pm_card_authenticationRequired")
    created = await client.command(
        "payment.create",
        TENANT,
        {"amount": 4200, "currency": "EUR", "payment_method_token": token},
    )
    assert outcome(created) == "payment.requires_action", created.get_data()
    return dict(created.get_data()["object"])


async def test_a_customers_3ds_step_moves_the_payment_on_by_webhook_alone(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    dep, base_url = deployed
    pay = await pending_3ds_payment(client, localstripe_url)
    pi = pay["provider_payment_id"]
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{localstripe_url}/v1/payment_intents/{pi}", headers=auth) as r,
    ):
        intent = await r.json()
    assert intent["metadata"] == {"paystream_payment": f"{TENANT}:{pay['id']}"}

    await authenticate(localstripe_url, pi)  # localstripe then sends payment_intent.succeeded

    deadline = time.monotonic() + 60
    while (await payment(base_url, pay["id"]))["status"] != "succeeded":
        assert time.monotonic() < deadline, "the webhook never moved the payment on"
        await asyncio.sleep(0.2)

    pay_id = pay["id"].encode()

    def of_the_payment(r: Any) -> bool:
        return dict(r.headers).get("ce_subject", b"") == pay_id or pay_id in (r.value or b"")

    def has_succeeded(rs: list[Any]) -> bool:
        ok = b"com.paystream.payment.succeeded"
        return any(of_the_payment(r) and dict(r.headers).get("ce_type") == ok for r in rs)

    # (The API may show the new status before its outcome is on the topic.)
    # (then a second of quiet: a duplicate outcome just behind it must show too)
    records = await dep.read_topic(dep.settings.events_topic, idle_polls=2, until=has_succeeded)
    outcomes = [r for r in records if of_the_payment(r)]
    types = [dict(r.headers)["ce_type"].decode() for r in outcomes]
    assert types == ["com.paystream.payment.requires_action", "com.paystream.payment.succeeded"]
    succeeded = outcomes[1]
    causation = dict(succeeded.headers)["ce_causationid"].decode()
    assert causation.startswith("whk_"), causation
    data = json.loads(succeeded.value)
    assert data["previous_status"] == "requires_action"
    assert data["object"]["amount_captured"] == 4200


async def test_the_webhook_of_a_payment_paystream_charged_itself_is_dropped(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    _, base_url = deployed
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(paid) == "payment.succeeded", paid.get_data()
    obj = paid.get_data()["object"]
    body = pi_event("payment_intent.succeeded", obj["provider_payment_id"], f"{TENANT}:{obj['id']}")
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer["action"]) == (200, "ignored"), answer
    assert answer["why"] == "the payment is succeeded already"


async def test_one_event_sent_twice_is_one_refresh_with_one_answer(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    pay = await pending_3ds_payment(client, localstripe_url)
    event_id = f"evt_{uuid.uuid4().hex}"
    command_id = derived_id("whk", "stripe", TENANT, event_id)
    # (An event Stripe sent before the customer failed the step, read after: the
    # PaymentIntent still waits on its customer.)
    body = pi_event(
        "payment_intent.payment_failed",
        pay["provider_payment_id"],
        f"{TENANT}:{pay['id']}",
        event_id=event_id,
    )
    first = client.expect(TENANT, command_id)
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (
        200,
        {"received": True, "action": "refresh", "command_id": command_id},
    )
    read_back = await asyncio.wait_for(first, 60)
    assert outcome(read_back) == "payment.requires_action"  # (still waiting on its customer)
    again = client.expect(TENANT, command_id)
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer["command_id"]) == (200, command_id)
    resent = await asyncio.wait_for(again, 60)
    assert resent.get_id() == read_back.get_id()  # answered from the idempotency record


@pytest.mark.parametrize("signed_ahead", [0, 10**400, 10**9 * 10])
async def test_an_event_about_a_payment_not_recorded_yet_is_sent_again_later(
    deployed: tuple[Deployment, str], signed_ahead: int
) -> None:
    """Stripe may send the event before paystream has its create's answer, or while the
    create waits parked with its answer lost: refreshed now, the refresh met nothing and
    the event was spent (review finding). 503: Stripe sends it again, and finds the
    payment then. An event an hour old is dropped; one dated past the signature's
    tolerance is no recent one (a `created` past a float's range was a 500)."""
    _, base_url = deployed
    body = pi_event("payment_intent.succeeded", "pi_unknown", f"{TENANT}:pay_notyet")
    if signed_ahead:
        event = json.loads(body)
        event["created"] = signed_ahead
        body = json.dumps(event).encode()
        status, answer = await post(base_url, body, signed(body))
        assert (status, answer) == (
            200,
            {"received": True, "action": "ignored", "why": "the payment is not recorded here"},
        )
        return
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (
        503,
        {"error": "unavailable", "message": "the payment is not recorded here yet; send it again"},
    )
    old = pi_event("payment_intent.succeeded", "pi_unknown", f"{TENANT}:pay_gone", age=3601)
    status, answer = await post(base_url, old, signed(old))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the payment is not recorded here"},
    )


@pytest.mark.parametrize(
    ("why", "signature"),
    [
        ("no signature", None),
        ("another secret", "other"),
        ("an old timestamp", "old"),
        ("a garbled header", "t=abc,v1=zz"),
    ],
)
async def test_an_unverified_webhook_is_refused_400(
    deployed: tuple[Deployment, str], why: str, signature: str | None
) -> None:
    _, base_url = deployed
    body = pi_event("payment_intent.succeeded", "pi_x", f"{TENANT}:pay_x")
    header = {
        "other": signed(body, OTHER_SECRET),
        "old": signed(body, at=int(time.time()) - 3600),
    }.get(signature or "", signature)
    status, answer = await post(base_url, body, header)
    assert (status, answer["error"]) == (400, "bad_signature"), why
    assert SECRET not in json.dumps(answer)


@pytest.mark.parametrize(
    ("body", "why"),
    [(b"[1, 2", "the body is not JSON"), (b"[]", "the body is not a JSON object")],
)
async def test_a_signed_body_that_is_no_event_is_refused_400(
    deployed: tuple[Deployment, str], body: bytes, why: str
) -> None:
    _, base_url = deployed
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (400, {"error": "bad_signature", "message": why})


@pytest.mark.parametrize("tenant", ["nobody", "unhooked", "simulated"])
async def test_no_endpoint_for_a_tenant_without_a_stripe_webhook_secret(
    deployed: tuple[Deployment, str], tenant: str
) -> None:
    """Unknown, no secret, not a Stripe tenant: one answer, that says nothing more."""
    _, base_url = deployed
    body = pi_event("payment_intent.succeeded", "pi_x", f"{tenant}:pay_x")
    status, answer = await post(base_url, body, signed(body), tenant=tenant)
    assert (status, answer) == (
        404,
        {"error": "not_found", "message": "no webhook endpoint here"},
    )


async def test_events_paystream_does_not_follow_are_acknowledged(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    pay = await pending_3ds_payment(client, localstripe_url)
    pi, ref = pay["provider_payment_id"], f"{TENANT}:{pay['id']}"
    cases = {
        "customer.created": pi_event("customer.created", pi, ref),
        "no paystream metadata": pi_event("payment_intent.succeeded", pi, None),
        "another tenant's payment": pi_event(
            "payment_intent.succeeded", pi, f"neighbour:{pay['id']}"
        ),
        "another provider payment": pi_event("payment_intent.succeeded", "pi_other", ref),
        "a hostile payment id": pi_event("payment_intent.succeeded", pi, f"{TENANT}:../x y"),
        # An id the card-data scans refuse (a Luhn-valid run of digits): no command.
        "a card-like payment id": pi_event(
            "payment_intent.succeeded", pi, f"{TENANT}:pay_{'4242' * 4}"
        ),
        # A Connect endpoint's event from a connected account the tenant is not on.
        "another account's payment": pi_event(
            "payment_intent.succeeded", pi, ref, account="acct_1Other"
        ),
        # Stripe's own news of the state paystream read from the create's answer.
        "the state paystream has": pi_event("payment_intent.requires_action", pi, ref),
    }
    for case, body in cases.items():
        status, answer = await post(base_url, body, signed(body))
        assert (status, answer["action"]) == (200, "ignored"), (case, answer)
    # None of them touched the payment.
    assert (await payment(base_url, pay["id"]))["status"] == "requires_action"


async def test_an_oversized_body_is_refused_413(deployed: tuple[Deployment, str]) -> None:
    _, base_url = deployed
    body = b'{"pad": "' + b"x" * (300 * 1024) + b'"}'
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer["error"]) == (413, "payload_too_large")

    # Chunked, it says no length: it is read only up to the limit (aiohttp's own read
    # would have buffered 1 MiB of it, and waited for it without end).
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 8192

    status, answer = await post(base_url, chunks(), signed(body))
    assert (status, answer["error"]) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("why", "header", "extra"),
    [
        # stripe's hmac.compare_digest raised TypeError on it: a 500 and a traceback.
        ("a non-ASCII signature", "t=1,v1=\u00e9", {}),
        # aiohttp failed decoding it inside request.read(): a 500 and two tracebacks.
        ("a body its encoding does not decode", None, {"Content-Encoding": "gzip"}),
    ],
)
async def test_hostile_requests_are_answered_400_not_500(
    deployed: tuple[Deployment, str], why: str, header: str | None, extra: dict[str, str]
) -> None:
    _, base_url = deployed
    body = pi_event("payment_intent.succeeded", "pi_x", f"{TENANT}:pay_x")
    status, answer = await post(base_url, body, header or signed(body), headers=extra)
    assert status == 400, (why, answer)
    assert answer["error"] in {"bad_signature", "bad_request"}, why


async def test_any_worker_of_a_fleet_takes_any_tenants_webhook(
    deployment_factory: Any, localstripe_url: str
) -> None:
    """The payment's status is read where the tenant's tables are: a webhook taken by
    the worker that does not own the tenant asks the owner (with the operators' token)."""
    token = "fleet-webhook-token"
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
        PAYSTREAM_WEB_TOKEN=token,
    )
    keyring = MasterKeyring(MASTER)
    tenants = [f"fleethook-{i}" for i in range(8)]  # on every partition
    await dep.add_tenants(
        *(
            Tenant(
                tenant_id=t,
                gateway="stripe",
                secrets={
                    "api_key": seal_secret(keyring, t, "api_key", LOCALSTRIPE_API_KEY),
                    "webhook_secret": seal_secret(keyring, t, "webhook_secret", SECRET),
                },
            )
            for t in tenants
        )
    )
    first, second = dep.worker("w1"), dep.worker("w2")
    try:
        await start_together(first, second)
        await wait_for_owners((first, second), dep.settings.partitions, tenants)
        body = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
        async with dep.client() as client:
            for t in tenants:
                paid = await client.command("payment.create", t, body)
                assert outcome(paid) == "payment.succeeded", paid.get_data()
                obj = paid.get_data()["object"]
                ref = f"{t}:{obj['id']}"
                event = pi_event("payment_intent.succeeded", obj["provider_payment_id"], ref)
                for w in (first, second):
                    status, answer = await post(w.base_url, event, signed(event), tenant=t)
                    # Found at its owner, whichever worker was asked: known finished.
                    assert (status, answer.get("why")) == (
                        200,
                        "the payment is succeeded already",
                    ), (t, w.base_url, answer)
    finally:
        await stop_together(first, second)


async def test_an_authorised_payments_capturable_event_is_no_news(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    _, base_url = deployed
    body = {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_visa"}
    held = await client.command("payment.create", TENANT, {**body, "capture": "manual"})
    assert outcome(held) == "payment.authorized", held.get_data()
    obj = held.get_data()["object"]
    ref = f"{TENANT}:{obj['id']}"
    event = pi_event("payment_intent.amount_capturable_updated", obj["provider_payment_id"], ref)
    status, answer = await post(base_url, event, signed(event))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the payment is authorized already"},
    )
    # A lapsed authorisation (Stripe cancels it after 7 days) is news: refreshed.
    event = pi_event("payment_intent.canceled", obj["provider_payment_id"], ref, status="canceled")
    status, answer = await post(base_url, event, signed(event))
    assert (status, answer["action"]) == (200, "refresh")


async def _stripe_tenant_with_a_3ds_payment(
    dep: Deployment, client: PaystreamClient, stripe_url: str, tenant: Tenant
) -> dict[str, Any]:
    await dep.add_tenants(tenant)
    token = await localstripe_token(stripe_url, "pm_card_authenticationRequired")
    body = {"amount": 300, "currency": "EUR", "payment_method_token": token}
    deadline = time.monotonic() + 30
    while True:  # (the worker learns of the tenant from the registry topic)
        created = await client.command("payment.create", tenant.tenant_id, body)
        if outcome(created) == "payment.requires_action":
            return dict(created.get_data()["object"])
        assert time.monotonic() < deadline, created.get_data()
        await asyncio.sleep(0.5)


def _hooked_tenant(tenant_id: str, **fields: Any) -> Tenant:
    keyring = MasterKeyring(MASTER)
    secrets = {
        "api_key": seal_secret(keyring, tenant_id, "api_key", LOCALSTRIPE_API_KEY),
        "webhook_secret": seal_secret(keyring, tenant_id, "webhook_secret", SECRET),
    }
    return Tenant(tenant_id=tenant_id, gateway="stripe", secrets=secrets, **fields)


async def test_a_suspended_tenants_webhook_is_sent_again_later(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """Answered 503 (the provider sends it again), not a refresh refused tenant_suspended
    that the provider, answered 200, would never send again."""
    dep, base_url = deployed
    active = _hooked_tenant("pausing")
    obj = await _stripe_tenant_with_a_3ds_payment(dep, client, localstripe_url, active)
    event = pi_event("payment_intent.succeeded", obj["provider_payment_id"], f"pausing:{obj['id']}")
    await dep.add_tenants(active.model_copy(update={"status": TenantStatus.SUSPENDED}))
    deadline = time.monotonic() + 30
    while (answered := await post(base_url, event, signed(event), tenant="pausing"))[0] != 503:
        assert time.monotonic() < deadline, answered
        await asyncio.sleep(0.2)
    assert answered[1]["message"] == "the tenant is suspended; send it again"
    # Only an event that would bring a refresh waits: the rest are acknowledged (failing
    # for days, an endpoint is disabled by Stripe).
    other = pi_event("customer.created", obj["provider_payment_id"], None)
    assert (await post(base_url, other, signed(other), tenant="pausing"))[1]["action"] == (
        "ignored"
    )
    await dep.add_tenants(active)
    deadline = time.monotonic() + 30
    while (answered := await post(base_url, event, signed(event), tenant="pausing"))[0] != 200:
        assert time.monotonic() < deadline, answered
        await asyncio.sleep(0.2)
    assert answered[1]["action"] == "refresh"


async def test_webhook_refreshes_pass_the_tenants_rate_limit(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """paystream's own refreshes (sealed) are not refused rate_limited: answered 200, the
    event would never come again. A refresh claiming to be one, unsealed, is limited."""
    dep, base_url = deployed
    limited = _hooked_tenant("limited", limits=TenantLimits(commands_per_second=1, burst=3))
    obj = await _stripe_tenant_with_a_3ds_payment(dep, client, localstripe_url, limited)
    ref = f"limited:{obj['id']}"
    answers = []
    for _ in range(5):  # at once: more than the bucket (3, one back a second) holds
        event = pi_event("payment_intent.succeeded", obj["provider_payment_id"], ref)
        command_id = derived_id("whk", "stripe", "limited", json.loads(event)["id"])
        answers.append(client.expect("limited", command_id))
        status, answer = await post(base_url, event, signed(event), tenant="limited")
        assert (status, answer["action"]) == (200, "refresh")
    for answered in await asyncio.wait_for(asyncio.gather(*answers), 60):
        assert outcome(answered) == "payment.requires_action", answered.get_data()
    # Nor did they spend the tenant's tokens: its own two commands after them pass (the
    # create spent one of three; spent by the webhooks, at most one would have).
    own = [
        client.command("payment.refresh", "limited", {"payment_id": obj["id"]}) for _ in range(2)
    ]
    for answered in await asyncio.gather(*own):
        assert outcome(answered) == "payment.requires_action", answered.get_data()
    # The header alone, without paystream's seal, is a tenant's refresh like any other.
    # Ten: three would exhaust what is left only if stamped within ~2 s of the own
    # commands, which a loaded host's round trips to the provider now and then were not.
    commands = [
        build_command("payment.refresh", "limited", {"payment_id": obj["id"]}) for _ in range(10)
    ]
    waiting = [client.expect("limited", c.get_id()) for c in commands]
    records = [encode_event(c, b"limited", CloudEventsMode.BINARY) for c in commands]
    forged = (("paystream-origin-seal", b"mk-0000000000000000.00"),)
    await dep.produce(
        dep.settings.commands_topic,
        *(RawSend(r.key, r.value, headers=(*r.headers, *forged)) for r in records),
    )
    answered = await asyncio.wait_for(asyncio.gather(*waiting), 60)
    reasons = [a.get_data().get("reason") for a in answered]
    assert "rate_limited" in reasons, reasons


async def test_a_connect_endpoints_event_on_the_tenants_own_account_is_refreshed(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """(localstripe ignores Stripe-Account: the payment is made as on a connected account.)"""
    dep, base_url = deployed
    tenant = _hooked_tenant("connected", connected_account="acct_1Mine")
    obj = await _stripe_tenant_with_a_3ds_payment(dep, client, localstripe_url, tenant)
    pi, ref = obj["provider_payment_id"], f"connected:{obj['id']}"
    other = pi_event("payment_intent.succeeded", pi, ref, account="acct_1Other")
    status, answer = await post(base_url, other, signed(other), tenant="connected")
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "another account's payment"},
    )
    own = pi_event("payment_intent.succeeded", pi, ref, account="acct_1Mine")
    status, answer = await post(base_url, own, signed(own), tenant="connected")
    assert (status, answer["action"]) == (200, "refresh"), answer


def refund_event(
    event_type: str, re_id: str, ref: str | None, status: str, *, age: int = 0
) -> bytes:
    metadata = {"paystream_refund": ref} if ref is not None else {}
    obj = {"id": re_id, "object": "refund", "metadata": metadata, "status": status}
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()) - age,
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


async def refunded_payment(client: PaystreamClient) -> dict[str, Any]:
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": 1800, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(paid) == "payment.succeeded", paid.get_data()
    made = await client.command(
        "refund.create", TENANT, {"payment_id": paid.get_data()["object"]["id"], "amount": 800}
    )
    assert outcome(made) == "refund.succeeded", made.get_data()
    return dict(made.get_data()["object"])


async def test_a_refund_failed_event_reads_the_refund_back(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """Stripe's `refund.failed` (a card closed since) becomes the refund's refresh. The
    refund carries paystream's reference at Stripe; localstripe cannot fail a refund, so
    the refresh reads it back succeeded, as it stands there."""
    _, base_url = deployed
    refund = await refunded_payment(client)
    re_id = refund["provider_refund_id"]
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{localstripe_url}/v1/refunds/{re_id}", headers=auth) as r,
    ):
        assert (await r.json())["metadata"] == {"paystream_refund": f"{TENANT}:{refund['id']}"}
    body = refund_event("refund.failed", re_id, f"{TENANT}:{refund['id']}", "failed")
    command_id = derived_id("whk", "stripe", TENANT, json.loads(body)["id"])
    answered = client.expect(TENANT, command_id)
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (
        200,
        {"received": True, "action": "refresh", "command_id": command_id},
    )
    read_back = await asyncio.wait_for(answered, 60)
    assert outcome(read_back) == "refund.succeeded", read_back.get_data()
    assert read_back.get_data()["previous_status"] == "succeeded"


_NOT_OURS = (
    "not an event about a payment, refund, subscription, one-off invoice, payout, "
    "connected account or transfer paystream made"
)


@pytest.mark.parametrize(
    ("event_type", "ref", "status", "why"),
    [
        ("refund.updated", "mine", "succeeded", "the refund is succeeded already"),
        ("charge.refund.updated", "other", "failed", "another tenant's refund"),
        ("refund.created", "mine", "succeeded", _NOT_OURS),
        ("refund.failed", None, "failed", _NOT_OURS),
    ],
)  # fmt: skip
async def test_refund_events_that_bring_nothing_are_dropped(
    deployed: tuple[Deployment, str],
    client: PaystreamClient,
    event_type: str,
    ref: str | None,
    status: str,
    why: str,
) -> None:
    _, base_url = deployed
    refund = await refunded_payment(client)
    named = {"mine": f"{TENANT}:{refund['id']}", "other": f"neighbour:{refund['id']}"}
    body = refund_event(event_type, refund["provider_refund_id"], named.get(ref or ""), status)
    status_code, answer = await post(base_url, body, signed(body))
    assert (status_code, answer) == (200, {"received": True, "action": "ignored", "why": why})


async def test_an_event_about_a_refund_not_recorded_yet_is_sent_again_later(
    deployed: tuple[Deployment, str],
) -> None:
    """A refund's row exists only once Stripe answered its create: refreshed now (its
    create parked with the answer lost), the refresh would meet nothing and the event be
    spent. 503: Stripe sends it again."""
    _, base_url = deployed
    body = refund_event("refund.failed", "re_unknown", f"{TENANT}:re_notyet", "failed")
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (
        503,
        {"error": "unavailable", "message": "the refund is not recorded here yet; send it again"},
    )
    # An hour on, it is about a refund that may never be recorded here (removed by
    # retention, settled by a person, another deployment's): dropped, not refused for ever.
    old = refund_event("refund.failed", "re_unknown", f"{TENANT}:re_gone", "failed", age=3601)
    status, answer = await post(base_url, old, signed(old))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the refund is not recorded here"},
    )


# ---- disputes: a dispute opens days after the charge, announced by webhook -------------
#
# localstripe has no disputes: the tests' FAKE of Stripe's /v1/disputes
# (tests/fixtures/localstripe_server.py) opens and decides them, and has localstripe send
# their events to the endpoint, signed as its own.


def dispute_event(
    event_type: str, dispute: dict[str, Any], *, event_id: str | None = None
) -> bytes:
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": dispute},
    }
    return json.dumps(event).encode()


async def charged(client: PaystreamClient, amount: int = 2500) -> dict[str, Any]:
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": amount, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(paid) == "payment.succeeded", paid.get_data()
    return dict(paid.get_data()["object"])


async def localstripe_event(localstripe_url: str, event_id: str) -> bytes:
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{localstripe_url}/v1/events/{event_id}", headers=auth) as r,
    ):
        r.raise_for_status()
        return await r.read()


async def test_a_dispute_opened_after_the_charge_is_ingested_answered_and_decided(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """The cardholder disputes days later: Stripe's charge.dispute.created (sent by
    localstripe for the fake) becomes the payment's refresh, whose outcome names the
    dispute; the tenant answers it with evidence; the network's decision, announced by
    charge.dispute.closed, is read back the same way."""
    _, base_url = deployed
    pay = await charged(client)
    opened = await open_fake_dispute(localstripe_url, pay["provider_payment_id"], events=True)
    provider_dispute = opened["dispute"]["id"]
    command_id = derived_id("whk", "stripe", TENANT, opened["event"])
    found = await asyncio.wait_for(client.expect(TENANT, command_id), 60)
    assert outcome(found) == "payment.succeeded", found.get_data()
    assert found.get_data()["previous_status"] == "succeeded"
    [related] = found.get_data()["related"]
    dispute = related["object"]
    assert (dispute["provider_dispute_id"], dispute["status"], dispute["payment_id"]) == (
        provider_dispute,
        "needs_response",
        pay["id"],
    )
    assert (dispute["reason"], dispute["amount"]) == ("fraudulent", 2500)
    # The same event sent again (Stripe's retry) brings nothing: answered once.
    resent = await localstripe_event(localstripe_url, opened["event"])
    status, answer = await post(base_url, resent, signed(resent))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the dispute is needs_response already"},
    )

    answered = await client.command(
        "dispute.submit_evidence",
        TENANT,
        {"dispute_id": dispute["id"], "evidence": {"uncategorized_text": "delivered"}},
    )
    assert outcome(answered) == "dispute.evidence_submitted", answered.get_data()
    assert answered.get_data()["object"]["status"] == "under_review"

    decided = await decide_fake_dispute(localstripe_url, provider_dispute, "won", events=True)
    command_id = derived_id("whk", "stripe", TENANT, decided["event"])
    read_back = await asyncio.wait_for(client.expect(TENANT, command_id), 60)
    assert outcome(read_back) == "payment.succeeded", read_back.get_data()
    [related] = read_back.get_data()["related"]
    assert (related["entity_id"], related["object"]["status"]) == (dispute["id"], "won")


async def test_a_dispute_event_sent_twice_is_one_refresh_and_the_dispute_can_be_accepted(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    pay = await charged(client, 1700)
    opened = await open_fake_dispute(localstripe_url, pay["provider_payment_id"])
    event_id = f"evt_{uuid.uuid4().hex}"
    body = dispute_event("charge.dispute.created", opened["dispute"], event_id=event_id)
    command_id = derived_id("whk", "stripe", TENANT, event_id)
    first = client.expect(TENANT, command_id)
    # Twice at once (Stripe's retry of an answer it did not get): one command id, and
    # the second, if the first is not applied yet, answered from its idempotency record.
    answers = await asyncio.gather(
        post(base_url, body, signed(body)), post(base_url, body, signed(body))
    )
    assert {(s, a.get("command_id", a.get("why"))) for s, a in answers} <= {
        (200, command_id),
        (200, "the dispute is needs_response already"),
    }, answers
    found = await asyncio.wait_for(first, 60)
    [related] = found.get_data()["related"]
    dispute_id = related["entity_id"]
    accepted = await client.command("dispute.accept", TENANT, {"dispute_id": dispute_id})
    assert outcome(accepted) == "dispute.closed", accepted.get_data()
    assert accepted.get_data()["object"]["status"] == "lost"
    # Stripe's charge.dispute.closed for what paystream did itself: nothing new.
    closed = dict(opened["dispute"], status="lost")
    body = dispute_event("charge.dispute.closed", closed)
    status, answer = await post(base_url, body, signed(body))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the dispute is lost already"},
    )


async def test_dispute_events_not_the_tenants_are_ignored_and_unsigned_ones_refused(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    pay = await charged(client, 1100)
    opened = await open_fake_dispute(localstripe_url, pay["provider_payment_id"])
    body = dispute_event("charge.dispute.created", opened["dispute"])
    # Sent to the neighbour's endpoint (one Stripe account behind both): its PaymentIntent
    # names the "hooked" tenant's payment.
    status, answer = await post(base_url, body, signed(body, OTHER_SECRET), tenant="neighbour")
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "another tenant's payment"},
    )
    # A PaymentIntent paystream did not make (no metadata of its own), and one the
    # tenant's key does not find (another account's).
    for pi in ("pi_unknown00000000", None):
        other = dict(opened["dispute"], payment_intent=pi)
        body = dispute_event("charge.dispute.created", other)
        status, answer = await post(base_url, body, signed(body))
        assert (status, answer["action"]) == (200, "ignored"), (pi, answer)
    body = dispute_event("charge.dispute.created", opened["dispute"])
    status, answer = await post(base_url, body, signed(body, OTHER_SECRET))
    assert (status, answer["error"]) == (400, "bad_signature")
    # None of them recorded a dispute.
    assert (await payment(base_url, pay["id"]))["dispute_id"] is None


async def test_a_dispute_whose_payment_cannot_be_read_is_sent_again_later(
    deployed: tuple[Deployment, str], localstripe_url: str
) -> None:
    """The PaymentIntent is read with the tenant's key: refused (a key rotated at Stripe
    and not here), the event is answered 503, so that Stripe sends it again."""
    dep, base_url = deployed
    keyring = MasterKeyring(MASTER)
    refused = Tenant(
        tenant_id="keyless",
        gateway="stripe",
        secrets={
            # (localstripe refuses any key but an sk_ one, 401 as Stripe does)
            "api_key": seal_secret(keyring, "keyless", "api_key", "rk_test_refused"),
            "webhook_secret": seal_secret(keyring, "keyless", "webhook_secret", SECRET),
        },
    )
    await dep.add_tenants(refused)
    dispute = {"id": "du_x", "object": "dispute", "payment_intent": "pi_x",
               "charge": "ch_x", "status": "needs_response"}  # fmt: skip
    body = dispute_event("charge.dispute.created", dispute)
    deadline = time.monotonic() + 30
    while (answered := await post(base_url, body, signed(body), tenant="keyless"))[0] == 404:
        assert time.monotonic() < deadline, answered  # (the registry's news on its way)
        await asyncio.sleep(0.2)
    assert answered == (
        503,
        {
            "error": "unavailable",
            "message": "the disputed payment cannot be read from the provider; send it again",
        },
    )


def transfer_event(provider_transfer_id: str, ref: str, amount_reversed: int) -> bytes:
    obj = {
        "id": provider_transfer_id,
        "object": "transfer",
        "amount_reversed": amount_reversed,
        "metadata": {"paystream_transfer": ref},
    }
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "transfer.reversed",
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


async def test_a_transfer_reversed_outside_paystream_is_learnt_by_webhook(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """A reversal made with Stripe's SDK (the Dashboard's), then Stripe's
    `transfer.reversed`: the transfer's refresh, its reversal learnt once (the event
    sent again says what paystream holds now: dropped)."""
    from tests.e2e.connect_e2e import enabled_account

    _, base_url = deployed
    acct = await enabled_account(client, TENANT, localstripe_url)
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": 5000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(paid) == "payment.succeeded", paid.get_data()
    pay = paid.get_data()["object"]
    body = {"connected_account_id": acct["id"], "amount": 4000, "currency": "EUR",
            "payment_id": pay["id"]}  # fmt: skip
    made = await client.command("transfer.create", TENANT, body)
    assert outcome(made) == "transfer.created", made.get_data()
    tr = made.get_data()["object"]
    http = stripe.AIOHTTPClient()
    sdk = stripe.StripeClient(
        LOCALSTRIPE_API_KEY, base_addresses={"api": localstripe_url}, http_client=http
    )
    try:
        await sdk.v1.transfers.reversals.create_async(tr["provider_transfer_id"], {"amount": 1500})
    finally:
        await http.close_async()
    event = transfer_event(tr["provider_transfer_id"], f"{TENANT}:{tr['id']}", 1500)
    command_id = derived_id("whk", "stripe", TENANT, json.loads(event)["id"])
    answered = client.expect(TENANT, command_id)
    status, answer = await post(base_url, event, signed(event))
    assert (status, answer) == (
        200,
        {"received": True, "action": "refresh", "command_id": command_id},
    )
    learnt = await asyncio.wait_for(answered, 60)
    assert outcome(learnt) == "transfer.reversed", learnt.get_data()
    assert learnt.get_data()["amount_reversed_now"] == 1500
    assert learnt.get_data()["related"][0]["object"]["amount_transferred"] == 2500
    # Stripe's retry of the event (or another saying what paystream now holds): no news.
    status, again = await post(base_url, event, signed(event))
    assert (status, again) == (
        200,
        {"received": True, "action": "ignored", "why": "the transfer is as recorded already"},
    ), again
    assert (await payment(base_url, pay["id"]))["amount_transferred"] == 2500


# A one-off invoice's events (localstripe_server.py's FAKE sends Stripe's invoice.paid,
# invoice.voided, invoice.marked_uncollectible of one-off invoices).


async def test_a_sent_invoice_paid_at_stripe_is_learnt_by_webhook_and_counted_once(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """A send_invoice invoice paid by its customer at Stripe (its hosted page: here the
    stripe SDK's pay, straight to localstripe): Stripe's invoice.paid brings the
    invoice's refresh, its invoice.paid outcome, with no invoice.refresh sent by anyone;
    counted toward the day's volume once (a day of 120.00: 50.00 learnt, then another
    50.00 paid by invoice.pay fits, a third is over)."""
    dep, base_url = deployed
    tenant_id = "invoicing"
    tenant = _hooked_tenant(tenant_id, limits=TenantLimits(daily_payment_volume={"USD": 12_000}))
    await dep.add_tenants(tenant)
    hook = f"paystream-{uuid.uuid4().hex}"
    endpoint = f"{base_url}/webhooks/stripe/{tenant_id}"
    async with aiohttp.ClientSession() as session:
        config = {"url": endpoint, "secret": SECRET}
        async with session.post(f"{localstripe_url}/_config/webhooks/{hook}", data=config):
            pass
    try:
        deadline = time.monotonic() + 30
        while True:  # (the worker learns of the tenant from the registry topic)
            cus = await client.command("customer.create", tenant_id, {"email": "i@example.com"})
            if outcome(cus) == "customer.created":
                break
            assert time.monotonic() < deadline, cus.get_data()
            await asyncio.sleep(0.5)
        customer = cus.get_data()["object"]
        pm = await client.command(
            "payment_method.attach",
            tenant_id,
            {"customer_id": customer["id"], "token": "pm_card_visa"},
        )
        assert outcome(pm) == "payment_method.attached", pm.get_data()
        method = pm.get_data()["object"]
        lines = [{"description": "Hours", "amount": 5000}]
        sent = await client.command(
            "invoice.create",
            tenant_id,
            {"customer_id": customer["id"], "currency": "USD", "line_items": lines,
             "collection_method": "send_invoice", "days_until_due": 30},
        )  # fmt: skip
        assert outcome(sent) == "invoice.created", sent.get_data()
        invoice = sent.get_data()["object"]
        opened = await client.command("invoice.finalize", tenant_id, {"invoice_id": invoice["id"]})
        assert outcome(opened) == "invoice.finalized", opened.get_data()

        stripe_client = stripe.StripeClient(
            LOCALSTRIPE_API_KEY, base_addresses={"api": localstripe_url}
        )
        paid_at_stripe = await asyncio.to_thread(
            stripe_client.invoices.pay,
            invoice["provider_invoice_id"],
            {"payment_method": method["provider_payment_method_id"]},
        )
        assert paid_at_stripe.status == "paid"

        url = f"{base_url}/v1/tenants/{tenant_id}/invoices/{invoice['id']}"
        deadline = time.monotonic() + 60
        while True:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                held = await resp.json()
            if held.get("status") == "paid":
                break
            assert time.monotonic() < deadline, f"the webhook never moved the invoice: {held}"
            await asyncio.sleep(0.2)

        invoice_id = invoice["id"].encode()

        def of_the_invoice(r: Any) -> bool:
            return dict(r.headers).get("ce_subject", b"") == invoice_id or invoice_id in (
                r.value or b""
            )

        def paid(rs: list[Any]) -> bool:
            ok = b"com.paystream.invoice.paid"
            return any(of_the_invoice(r) and dict(r.headers).get("ce_type") == ok for r in rs)

        records = await dep.read_topic(dep.settings.events_topic, idle_polls=2, until=paid)
        outcomes = [r for r in records if of_the_invoice(r)]
        types = [dict(r.headers)["ce_type"].decode() for r in outcomes]
        assert types == [
            "com.paystream.invoice.created",
            "com.paystream.invoice.finalized",
            "com.paystream.invoice.paid",
        ], types
        causation = dict(outcomes[2].headers)["ce_causationid"].decode()
        assert causation.startswith("whk_"), causation  # (the webhook's refresh)

        async def charged() -> Any:
            made = await client.command(
                "invoice.create",
                tenant_id,
                {"customer_id": customer["id"], "currency": "USD", "line_items": lines,
                 "payment_method_id": method["id"]},
            )  # fmt: skip
            made_id = made.get_data()["object"]["id"]
            await client.command("invoice.finalize", tenant_id, {"invoice_id": made_id})
            return await client.command("invoice.pay", tenant_id, {"invoice_id": made_id})

        second = await charged()
        assert outcome(second) == "invoice.paid", second.get_data()  # (10000 of 12000)
        third = await charged()
        assert third.get_data().get("reason") == "quota_exceeded", third.get_data()
    finally:
        async with aiohttp.ClientSession() as session:
            mute = {"url": endpoint, "secret": SECRET, "events[]": "paystream.none"}
            async with session.post(f"{localstripe_url}/_config/webhooks/{hook}", data=mute):
                pass
