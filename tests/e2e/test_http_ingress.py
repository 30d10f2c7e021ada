"""The HTTP command ingress into a real worker: `POST /v1/commands`, as a worker serves
it and as `paystream ingress` serves it alone.

Commands posted in both CloudEvents HTTP modes are produced to the commands topic and
run by the pipeline as any command; `Prefer: wait` answers their outcome. Every refusal
(no key, another tenant's key, a revoked one, card data, invalid data, an unknown type,
too large, not a CloudEvent) is answered before anything reaches the topic, which the
tests check by the topic's end offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from cloudevents.core.v1.event import CloudEvent

from paystream.client import PaystreamClient, build_command
from paystream.devstack._process import free_port, wait_until
from paystream.devstack.ingress import IngressProcess
from paystream.devstack.worker import WorkerProcess
from paystream.http_client import Accepted, IngressClient, IngressError
from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import tenant_record
from tests.fixtures.pipeline import Deployment
from tests.test_cli import at_once, run_cli
from tests.test_docs import validator

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

PLATFORM_TOKEN = f"platform-{uuid.uuid4().hex}"
SHOP_KEY_ID, SHOP_KEY, SHOP_KEPT = new_key("checkout service")
OTHER_KEY_ID, OTHER_KEY, OTHER_KEPT = new_key()
PACED_KEY_ID, PACED_KEY, PACED_KEPT = new_key()
# Shop's keys restricted to its customers' commands, and one that has expired.
SCOPED_KEY_ID, SCOPED_KEY, SCOPED_KEPT = new_key("crm", commands=("customer.*",))
EXPIRED_AT = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRED_KEY_ID, EXPIRED_KEY, EXPIRED_KEPT = new_key("old", expires_at=EXPIRED_AT)
CARD = "4242424242424242"  # Stripe's public test number: no real card


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["worker", "ingress"])
async def deployed(
    request: pytest.FixtureRequest, deployment_factory: Any
) -> AsyncIterator[tuple[Deployment, str]]:
    """The route as a worker serves it beside its views, and as `paystream ingress`
    serves it in a process of its own: every test runs against both."""
    dep: Deployment = await deployment_factory(paystream_ingress_token=PLATFORM_TOKEN)
    with contextlib.ExitStack() as running:
        worker = running.enter_context(dep.worker())
        await dep.add_tenants(
            Tenant(
                tenant_id="shop",
                ingress_keys={
                    SHOP_KEY_ID: SHOP_KEPT,
                    SCOPED_KEY_ID: SCOPED_KEPT,
                    EXPIRED_KEY_ID: EXPIRED_KEPT,
                },
            ),
            Tenant(tenant_id="other", ingress_keys={OTHER_KEY_ID: OTHER_KEPT}),
            # (its provider answers after 3 s)
            Tenant(tenant_id="slow", gateway_options={"latency_ms": 3000}),
            Tenant(
                tenant_id="paced",
                ingress_keys={PACED_KEY_ID: PACED_KEPT},
                limits=TenantLimits(commands_per_second=1, burst=2),
            ),
        )
        served: WorkerProcess | IngressProcess = worker
        if request.param == "ingress":  # (starting while the worker joins its group)
            served = running.enter_context(IngressProcess(dep.env, dep.base_dir / "ingress.log"))
        tenants = ["shop", "other", "slow", "paced"]
        await asyncio.gather(
            asyncio.to_thread(worker.wait_ready, tenants, partitions=dep.settings.partitions),
            asyncio.to_thread(served.wait_ready) if served is not worker else asyncio.sleep(0),
        )
        yield dep, f"{served.base_url}/v1/commands"
        logs = [worker.log_path.read_text(errors="replace")]
        if isinstance(served, IngressProcess):
            logs.append(served.log_path.read_text(errors="replace"))
    for log in logs:
        for secret in (
            PLATFORM_TOKEN,
            SHOP_KEY,
            OTHER_KEY,
            PACED_KEY,
            SCOPED_KEY,
            EXPIRED_KEY,
            CARD,
        ):
            assert secret not in log


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


def structured(command_type: str, data: Any, tenant: str = "shop", **attrs: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": attrs.pop("id", str(uuid.uuid4())),
        "source": "/tests/http",
        "type": f"com.paystream.command.{command_type}",
        "tenantid": tenant,
        "datacontenttype": "application/json",
        "data": data,
        **attrs,
    }


async def post(
    url: str,
    event: dict[str, Any] | None = None,
    *,
    key: str | None = SHOP_KEY,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    sent = {"Content-Type": "application/cloudevents+json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    payload = body if body is not None else json.dumps(event).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=payload, headers=sent) as resp,
    ):
        text = await resp.text()
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = text
        return resp.status, dict(resp.headers), answer


async def answered_until(
    url: str, tenant: str, key: str, status: int, error: str | None = None
) -> None:
    """Post a command under ``key`` until it is answered ``status`` (and ``error``, if
    given): a registry change reaches the worker shortly."""
    for _ in range(600):
        got, _, answer = await post(url, structured("customer.create", {}, tenant), key=key)
        if got == status and (error is None or answer["error"] == error):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never answered {status} {error or ''}")


async def commands_end(dep: Deployment) -> dict[int, int]:
    """The commands topic's end offset per partition: unchanged, nothing was produced."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(dep.settings.require_broker()))
    await consumer.start()
    try:
        tps = [
            TopicPartition(dep.settings.commands_topic, p) for p in range(dep.settings.partitions)
        ]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def test_a_structured_command_is_accepted_and_run(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    _, url = deployed
    event = structured("customer.create", {"email": "ada@example.com"})
    outcome = client.expect("shop", event["id"])
    status, _, answer = await post(url, event)
    assert status == 202, answer
    assert answer == {
        "accepted": True,
        "tenant": "shop",
        "command_id": event["id"],
        "idempotency_key": event["id"],
    }
    done = await asyncio.wait_for(outcome, 60)
    assert done.get_type() == "com.paystream.customer.created"


async def test_a_binary_command_waited_for_is_answered_with_its_outcome(
    deployed: tuple[Deployment, str],
) -> None:
    _, url = deployed
    command_id = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": command_id,
        "ce-source": "/tests/http",
        "ce-type": "com.paystream.command.payment.create",
        "ce-tenantid": "shop",
        "ce-idempotencykey": f"order%2F{command_id}",  # percent-encoded, as HTTP says
        "Prefer": "respond-async, wait=20",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    data = {"amount": 4200, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    status, got, answer = await post(url, body=json.dumps(data).encode(), headers=headers)
    assert status == 200, answer
    assert got["Content-Type"].startswith("application/cloudevents+json")
    assert got["Preference-Applied"] == "wait=20"
    assert answer["type"] == "com.paystream.payment.succeeded"
    assert answer["causationid"] == command_id
    assert answer["tenantid"] == "shop"
    assert answer["data"]["object"]["amount"] == 4200
    # The caller's trace continues in the outcome.
    assert answer["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")

    # Sent again under the same key (decoded: "order/<id>"), with another id: the first
    # command's very event, not a second charge.
    again = {**headers, "ce-id": str(uuid.uuid4())}
    status, _, replayed = await post(url, body=json.dumps(data).encode(), headers=again)
    assert status == 200, replayed
    assert replayed["id"] == answer["id"]
    assert replayed["causationid"] == command_id


async def test_an_outcome_later_than_the_wait_is_answered_202(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    _, url = deployed
    data = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
    event = structured("payment.create", data, tenant="slow")
    outcome = client.expect("slow", event["id"])
    status, headers, answer = await post(
        url, event, key=PLATFORM_TOKEN, headers={"Prefer": "wait=1"}
    )
    assert status == 202, answer
    assert "Preference-Applied" not in headers
    assert answer["command_id"] == event["id"]
    # It runs all the same, and its outcome goes out on the topic.
    done = await asyncio.wait_for(outcome, 60)
    assert done.get_type() == "com.paystream.payment.succeeded"


async def test_a_rejection_is_the_outcome_too(deployed: tuple[Deployment, str]) -> None:
    """The platform's token sends for any tenant; the pipeline judges the tenant."""
    _, url = deployed
    event = structured("customer.create", {}, tenant="nobody")
    status, _, answer = await post(url, event, key=PLATFORM_TOKEN, headers={"Prefer": "wait=20"})
    assert status == 200, answer
    assert answer["type"] == "com.paystream.command.rejected"
    assert answer["data"]["reason"] == "unknown_tenant"


_REFUSED_SENDERS = [
    ("no key", None, "shop"),
    ("another tenant's key", OTHER_KEY, "shop"),
    ("an unknown tenant", SHOP_KEY, "nobody"),
    ("a forged key of the right id", f"psk_{SHOP_KEY_ID}_{'A' * 43}", "shop"),
    ("the operators' kind of token", "not-a-key", "shop"),
    ("a made-up key", f"psk_00000000_{'A' * 43}", "shop"),
]


# (Named by `why`: keys are random, and xdist's workers must collect the same ids.)
@pytest.mark.parametrize(
    ("why", "key", "tenant"), _REFUSED_SENDERS, ids=[c[0] for c in _REFUSED_SENDERS]
)
async def test_who_may_not_send_is_refused_alike(
    deployed: tuple[Deployment, str], why: str, key: str | None, tenant: str
) -> None:
    dep, url = deployed
    before = await commands_end(dep)
    status, headers, answer = await post(url, structured("customer.create", {}, tenant), key=key)
    assert status == 401, why
    assert answer["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert await commands_end(dep) == before


@pytest.mark.parametrize(
    ("why", "event", "status", "error"),
    [
        (
            "a card number in the data",
            structured("customer.create", {"metadata": {"note": f"card {CARD}"}}),
            400,
            "validation_error",
        ),
        (
            "a card number as the id",
            structured("customer.create", {}, id=CARD),
            400,
            "validation_error",
        ),
        (
            "invalid data",
            structured("payment.create", {"amount": -1, "currency": "EUR"}),
            400,
            "validation_error",
        ),
        ("an unknown command", structured("payment.teleport", {}), 400, "unknown_command"),
        (
            "not a paystream type",
            structured("x", {}, type="com.example.order.placed"),
            400,
            "unsupported",
        ),
        ("data not an object", structured("customer.create", []), 400, "validation_error"),
        ("data a number", structured("customer.create", 0), 400, "validation_error"),
        (
            "attributes over the worker's 16 KiB",
            structured("customer.create", {}, source="/" + "s" * 20_000),
            413,
            "payload_too_large",
        ),
        (
            "no tenant",
            {**structured("customer.create", {}), "tenantid": None},
            400,
            "validation_error",
        ),
        (
            "no id",
            {k: v for k, v in structured("customer.create", {}).items() if k != "id"},
            400,
            "validation_error",
        ),
    ],
)
async def test_what_a_worker_would_refuse_is_refused_before_the_topic(
    deployed: tuple[Deployment, str], why: str, event: dict[str, Any], status: int, error: str
) -> None:
    dep, url = deployed
    before = await commands_end(dep)
    got, _, answer = await post(url, event)
    assert (got, answer["error"]) == (status, error), (why, answer)
    assert CARD not in json.dumps(answer)
    assert await commands_end(dep) == before


async def test_validation_errors_name_the_fields(deployed: tuple[Deployment, str]) -> None:
    _, url = deployed
    status, _, answer = await post(url, structured("payment.create", {"amount": "x"}))
    assert status == 400
    assert answer["message"] == "invalid payment.create data"
    assert {"amount", "currency"} <= {e["loc"] for e in answer["errors"]}
    assert answer["error_count"] == len(answer["errors"])


@pytest.mark.parametrize(
    ("why", "headers", "body", "status"),
    [
        ("not JSON", {}, b"{not json", 400),
        ("plain text", {"Content-Type": "text/plain"}, b"hello", 415),
        ("a batch", {"Content-Type": "application/cloudevents-batch+json"}, b"[]", 415),
        ("too large", {}, b"x" * (64 * 1024 + 1), 413),
    ],
)
async def test_what_is_no_command_is_refused(
    deployed: tuple[Deployment, str], why: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    dep, url = deployed
    before = await commands_end(dep)
    got, _, answer = await post(url, headers=headers, body=body)
    assert got == status, (why, answer)
    assert await commands_end(dep) == before


async def test_a_header_given_twice_is_refused(deployed: tuple[Deployment, str]) -> None:
    _, url = deployed
    async with aiohttp.ClientSession() as session:
        headers = [
            ("Authorization", f"Bearer {SHOP_KEY}"),
            ("Content-Type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "one"),
            ("ce-id", "two"),
            ("ce-source", "/tests"),
            ("ce-type", "com.paystream.command.customer.create"),
            ("ce-tenantid", "shop"),
        ]
        async with session.post(url, data=b"{}", headers=headers) as resp:
            assert resp.status == 400
            assert "given more than once" in (await resp.json())["message"]
        # A name is quoted before the card-data scan has read it: never a card number.
        for value in ("a", "%ff"):
            named = [*headers[:4], *[("ce-x4242424242424242", value)] * (2 if value == "a" else 1)]
            async with session.post(url, data=b"{}", headers=named) as resp:
                assert resp.status == 400
                answer = await resp.text()
                assert "4242424242" not in answer and "[card number]" in answer, answer


async def test_a_key_made_by_the_cli_sends_until_revoked(deployed: tuple[Deployment, str]) -> None:
    """`paystream tenants api-key create|list|revoke`, as an operator runs them."""
    dep, url = deployed
    added = run_cli(dep, "tenants", "add", "newco")
    assert "registered newco (simulator gateway, status active)" in added.stderr
    assert json.loads(added.stdout)["tenant_id"] == "newco"  # (stdout: the record alone)
    none = run_cli(dep, "tenants", "api-key", "list", "newco")
    assert none.stdout == "" and "newco has no keys" in none.stderr
    made = run_cli(dep, "tenants", "api-key", "create", "newco", "--label", "billing")
    key = made.stdout.strip()
    assert key.startswith("psk_") and "shown only now" in made.stderr
    keys, tenants = at_once(
        lambda: run_cli(dep, "tenants", "api-key", "list", "newco"),
        lambda: run_cli(dep, "tenants", "list"),
    )
    listed = [json.loads(line) for line in keys.stdout.splitlines()]
    assert [(k["id"], k["label"]) for k in listed] == [(key.split("_")[1], "billing")]
    # The registry keeps its digest, never the key.
    shown = tenants.stdout
    assert key not in shown and key.split("_")[1] in shown

    await answered_until(url, "newco", key, 202)  # (once the worker has read the record)
    run_cli(dep, "tenants", "api-key", "revoke", "newco", listed[0]["id"])
    await answered_until(url, "newco", key, 401)
    again = run_cli(dep, "tenants", "api-key", "revoke", "newco", listed[0]["id"], check=False)
    assert again.returncode != 0 and "has no key" in again.stderr


async def test_a_key_restricted_to_some_commands_sends_only_those(
    deployed: tuple[Deployment, str],
) -> None:
    dep, url = deployed
    status, _, answer = await post(url, structured("customer.create", {}), key=SCOPED_KEY)
    assert status == 202, answer
    before = await commands_end(dep)
    data = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
    status, _, answer = await post(url, structured("payment.create", data), key=SCOPED_KEY)
    assert (status, answer["error"], answer["allowed"]) == (403, "forbidden", ["customer.*"])
    assert "may not send payment.create" in answer["message"]
    # Another tenant's command under it is the one answer, 401, not what it may send.
    status, _, answer = await post(url, structured("customer.create", {}, "other"), key=SCOPED_KEY)
    assert (status, answer["error"]) == (401, "unauthorized")
    assert await commands_end(dep) == before


async def test_an_expired_key_is_told_so_before_its_body_is_read(
    deployed: tuple[Deployment, str],
) -> None:
    dep, url = deployed
    before = await commands_end(dep)
    status, headers, answer = await post(url, body=b"{not json", key=EXPIRED_KEY)
    assert (status, answer["error"]) == (401, "key_expired"), answer  # (not the parser's 400)
    assert answer["expired_at"] == EXPIRED_AT.isoformat()
    assert f"key {EXPIRED_KEY_ID} expired" in answer["message"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    # Its id with a made-up secret is any made-up key: nothing said of the real one.
    forged = EXPIRED_KEY[:-4] + ("AAAA" if not EXPIRED_KEY.endswith("AAAA") else "BBBB")
    status, _, answer = await post(url, structured("customer.create", {}), key=forged)
    assert (status, answer["error"]) == (401, "unauthorized")
    assert "expired" not in answer["message"]
    assert await commands_end(dep) == before


async def test_a_key_rolled_by_the_cli_hands_over_to_its_successor(
    deployed: tuple[Deployment, str],
) -> None:
    """`paystream tenants api-key create --allow --expires-in`, then `roll`: the successor
    keeps the label, the commands and the lifetime; the old key, given no grace, is told
    it expired."""
    dep, url = deployed
    run_cli(dep, "tenants", "add", "rollco")
    made = run_cli(
        dep, "tenants", "api-key", "create", "rollco", "--label", "crm",
        "--allow", "customer.create,customer.update", "--allow", "refund.*", "--expires-in", "90d",
    )  # fmt: skip
    old_key = made.stdout.strip()
    old_id = old_key.split("_")[1]
    await answered_until(url, "rollco", old_key, 202)
    rolled = run_cli(dep, "tenants", "api-key", "roll", "rollco", old_id, "--expire-old-in", "0")
    new_key_text = rolled.stdout.strip()
    assert new_key_text.startswith("psk_") and f"to follow {old_id}" in rolled.stderr
    await answered_until(url, "rollco", old_key, 401, "key_expired")
    await answered_until(url, "rollco", new_key_text, 202)
    refused = await post(url, structured("payment.cancel", {"payment_id": "p"}, "rollco"),
                         key=new_key_text)  # fmt: skip
    assert refused[0] == 403, refused
    listed = {
        k["id"]: k
        for k in map(
            json.loads, run_cli(dep, "tenants", "api-key", "list", "rollco").stdout.split("\n")[:-1]
        )
    }
    new_id = new_key_text.split("_")[1]
    assert listed[old_id]["expired"] is True and listed[new_id]["expired"] is False
    # The successor lives as long as the old key was to (90 days), from its making.
    lived = [
        datetime.fromisoformat(listed[i]["expires_at"])
        - datetime.fromisoformat(listed[i]["created_at"])
        for i in (old_id, new_id)
    ]
    assert lived[1] == timedelta(days=90) and lived[0] < timedelta(days=90)
    for shown in listed.values():
        assert shown["label"] == "crm"
        assert shown["commands"] == ["customer.create", "customer.update", "refund.*"]
    # Refused as given: an unknown command, a time without its offset, a bad duration
    # (each refused alone, so asked at once).
    refusals = [
        (("--allow", "payment.teleport"), "names no command"),
        (("--allow", "teleport.*"), "names no command"),
        (("--expires-at", "2030-01-01T00:00:00"), "with its offset"),
        (("--expires-at", "2020-01-01T00:00:00Z"), "not in the future"),
        (("--expires-in", "soon"), "a number and a unit"),
    ]
    answers = at_once(
        *(
            functools.partial(
                run_cli, dep, "tenants", "api-key", "create", "rollco", *args, check=False
            )
            for args, _ in refusals
        )
    )
    for (args, said), bad in zip(refusals, answers, strict=True):
        assert bad.returncode == 2 and said in bad.stderr, (args, bad.stderr)


async def test_requests_are_counted(deployed: tuple[Deployment, str]) -> None:
    _, url = deployed
    metrics_url = url.removesuffix("/v1/commands") + "/metrics"

    def counted() -> bool:
        import urllib.request

        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return (
            'paystream_ingress_requests_total{result="accepted",tenant="shop"}' in text
            and 'paystream_ingress_requests_total{result="unauthorized",tenant="(unregistered)"}'
            in text
        )

    await asyncio.to_thread(wait_until, counted, timeout=30, what="ingress metrics")


async def test_the_answers_are_the_documented_ones(deployed: tuple[Deployment, str]) -> None:
    """Each answer validates against docs/openapi.yaml's schema for its status."""
    _, url = deployed
    openapi = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
    data = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
    cases = [
        (202, await post(url, structured("customer.create", {}))),
        (200, await post(url, structured("payment.create", data), headers={"Prefer": "wait=20"})),
        (400, await post(url, structured("payment.create", {"amount": "x"}))),
        (400, await post(url, structured("payment.teleport", {}))),
        (400, await post(url, body=b"{not json")),
        (401, await post(url, structured("customer.create", {}), key=None)),
        (401, await post(url, structured("customer.create", {}), key=EXPIRED_KEY)),
        (403, await post(url, structured("refund.create", {"payment_id": "p"}), key=SCOPED_KEY)),
        (413, await post(url, body=b"x" * (64 * 1024 + 1))),
        (415, await post(url, headers={"Content-Type": "text/plain"}, body=b"hi")),
    ]
    for status, (got, headers, answer) in cases:
        assert got == status, answer
        ctype = headers["Content-Type"].split(";")[0].replace("/", "~1")
        pointer = f"/paths/~1v1~1commands/post/responses/{status}/content/{ctype}/schema"
        validator(openapi, pointer).validate(answer)


async def test_a_tenant_over_its_rate_limit_is_refused_429_before_the_topic(
    deployed: tuple[Deployment, str],
) -> None:
    """Its `commands_per_second` (1) and `burst` (2) at the server: the third command at
    once is refused 429 with Retry-After, nothing produced; the Python client sends it
    again after the Retry-After, and it is taken."""
    dep, url = deployed
    openapi = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
    before = await commands_end(dep)
    # Back to back, everything else after: the bucket refills a token a second, and a
    # slow host's checks between the posts let the fourth through now and then.
    began = time.monotonic()
    answers = [
        await post(url, structured("customer.create", {}, "paced"), key=PACED_KEY) for _ in range(4)
    ]
    if time.monotonic() - began >= 1:
        pytest.skip("four posts took over a second here: the bucket refilled meanwhile")
    # The bucket is empty after two: the third and fourth are refused.
    assert [a[0] for a in answers] == [202, 202, 429, 429], answers
    _, headers, refused = answers[2]
    assert refused["error"] == "rate_limited" and 0 < refused["retry_after_ms"] <= 1000
    assert headers["Retry-After"] == "1"
    pointer = "/paths/~1v1~1commands/post/responses/429/content/application~1json/schema"
    validator(openapi, pointer).validate(refused)
    after = await commands_end(dep)
    assert sum(after.values()) - sum(before.values()) == 2  # the refused never reached it
    # The client sends again after the Retry-After: taken.
    async with IngressClient(url.removesuffix("/v1/commands"), PACED_KEY) as http:
        taken = await http.command("customer.create", "paced", {})
    assert isinstance(taken, Accepted) and taken.tenant == "paced"
    assert sum((await commands_end(dep)).values()) - sum(after.values()) == 1


async def test_a_made_up_key_is_refused_before_the_body_is_read(
    deployed: tuple[Deployment, str],
) -> None:
    _, url = deployed
    status, _, answer = await post(url, key=f"psk_00000000_{'A' * 43}", body=b"{not json")
    assert status == 401, answer  # (not the parser's 400)


async def _expecting_continue(url: str, head: bytes, body: bytes) -> list[bytes]:
    """A request sent with ``Expect: 100-continue``, its body only after a ``100
    Continue``: the status lines answered, in order (the body not sent, a single one)."""
    address = url.removeprefix("http://").split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))

    async def status_and_headers() -> bytes:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return answer.split(b"\r\n", 1)[0]

    try:
        writer.write(
            b"POST /v1/commands HTTP/1.1\r\nHost: " + address.encode() + b"\r\n" + head
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nExpect: 100-continue\r\n\r\n"
        )  # fmt: skip
        lines = [await status_and_headers()]
        if b" 100 " in lines[0]:
            writer.write(body)
            lines.append(await status_and_headers())
        return lines
    finally:
        writer.close()


async def test_expect_continue_is_refused_before_the_body_when_the_key_is(
    request: pytest.FixtureRequest, deployed: tuple[Deployment, str]
) -> None:
    """A client that asks first (``Expect: 100-continue``: curl does for bodies over 1 KB)
    with a key no tenant holds, or a body over the limit, is refused before it sends the
    body by `paystream ingress`; a worker's own route answers ``100 Continue`` first
    (Faust's routes take aiohttp's default), then the same refusal."""
    dep, url = deployed
    own_server = request.node.callspec.params["deployed"] == "ingress"
    json_type = b"Content-Type: application/cloudevents+json\r\n"
    made_up = f"Authorization: Bearer psk_00000000_{'A' * 43}\r\n".encode()
    shop = f"Authorization: Bearer {SHOP_KEY}\r\n".encode()
    event = json.dumps(structured("customer.create", {})).encode()
    refused = await _expecting_continue(url, made_up + json_type, event)
    assert refused[-1].startswith(b"HTTP/1.1 401 ")
    assert len(refused) == (1 if own_server else 2)
    limit = dep.settings.command_max_bytes
    too_large = await _expecting_continue(url, shop + json_type, b"{" + b" " * limit + b"}")
    assert too_large[-1].startswith(b"HTTP/1.1 413 ")
    assert len(too_large) == (1 if own_server else 2)
    taken = await _expecting_continue(url, shop + json_type, event)
    assert [line.split(b" ")[1] for line in taken] == [b"100", b"202"]


async def test_trace_context_reading_as_a_card_number_never_reaches_the_topic(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    """Dropped, as the worker drops it (a random trace id reads as one by chance), before
    paystream itself produces the command: the rest of the trace state is kept."""
    dep, url = deployed
    card_trace = f"00-abcd{CARD}abcdabcdabcd-b7ad6b7169203331-01"
    in_body = structured("customer.create", {}, tracestate=f"v={CARD}", traceparent=card_trace)
    in_headers = structured("customer.create", {})
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": f"vendor={CARD},keep=yes",
    }
    for event, sent in ((in_body, None), (in_headers, headers)):
        outcome = client.expect("shop", event["id"])
        status, _, answer = await post(url, event, headers=sent)
        assert status == 202, answer
        assert (await asyncio.wait_for(outcome, 60)).get_type().endswith("customer.created")
    records = await dep.read_topic(dep.settings.commands_topic)
    mine = [
        r
        for r in records
        if dict(r.headers).get("ce_id") in (in_body["id"].encode(), in_headers["id"].encode())
    ]
    assert len(mine) == 2
    for r in mine:
        assert CARD.encode() not in (r.value or b"") + b"".join(v for _, v in r.headers)
    kept = dict(
        mine[[dict(r.headers)["ce_id"] for r in mine].index(in_headers["id"].encode())].headers
    )
    assert kept["ce_tracestate"] == b"keep=yes"
    assert kept["ce_traceparent"] == headers["traceparent"].encode()


async def test_a_tenant_key_is_not_taken_while_its_newest_record_is_unreadable(
    deployed: tuple[Deployment, str],
) -> None:
    """A newer paystream's record (a field this worker does not know) may have revoked
    the key: the worker's older record is not believed for it (503: a peer may answer)."""
    dep, url = deployed
    key_id, key, kept = new_key()
    tenant = Tenant(tenant_id="upgrading", ingress_keys={key_id: kept})
    await dep.add_tenants(tenant)

    await answered_until(url, "upgrading", key, 202)
    newer = {**tenant_record(tenant.model_copy(update={"ingress_keys": {}})), "from_2027": 1}
    await dep.produce(
        dep.settings.tenants_topic,
        (json.dumps("upgrading").encode(), json.dumps(newer).encode(), None),
    )
    await answered_until(url, "upgrading", key, 503)
    # Another tenant's key learns nothing of it: the one answer, 401.
    other, _, _ = await post(url, structured("customer.create", {}, "upgrading"), key=SHOP_KEY)
    assert other == 401
    # The platform's token does not depend on the tenant's keys.
    status, _, _ = await post(
        url, structured("customer.create", {}, "upgrading"), key=PLATFORM_TOKEN
    )
    assert status == 202


async def _raw_request(url: str, head: bytes, body: bytes) -> bytes:
    """A request written byte for byte (headers no HTTP client would send); the answer's
    status line."""
    address = url.removeprefix("http://").split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/commands HTTP/1.1\r\nHost: " + address.encode() + b"\r\n" + head
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body
        )  # fmt: skip
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


async def test_what_the_parser_would_drop_is_scanned_too(
    deployed: tuple[Deployment, str],
) -> None:
    """A card number in a JSON key given twice (the parser keeps the last) or in the media
    type's parameters: refused, as the worker refuses such a Kafka record."""
    dep, url = deployed
    before = await commands_end(dep)
    event = structured("customer.create", {"description": "x"})
    text = json.dumps(event).replace(
        '"description": "x"', f'"description": "{CARD}", "description": "x"'
    )
    status, _, answer = await post(url, body=text.encode())
    assert status == 400 and answer["error"] == "validation_error", answer
    ctype = {"Content-Type": f"application/cloudevents+json; note={CARD}"}
    status, _, answer = await post(url, structured("customer.create", {}), headers=ctype)
    assert status == 400, answer
    assert CARD not in json.dumps(answer)
    assert await commands_end(dep) == before


async def test_odd_bytes_and_encodings_are_answered_not_crashed_on(
    deployed: tuple[Deployment, str],
) -> None:
    _, url = deployed
    event = json.dumps(structured("customer.create", {})).encode()
    auth = f"Authorization: Bearer {SHOP_KEY}\r\n".encode()
    json_type = b"Content-Type: application/cloudevents+json\r\n"
    # A traceparent that is not W3C's version 00, with a byte that is not UTF-8: not taken.
    odd_trace = b"traceparent: 01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-\xff\r\n"
    assert b" 202 " in await _raw_request(url, auth + json_type + odd_trace, event)
    # A body its Content-Encoding does not decode.
    gzip = b"Content-Encoding: gzip\r\n"
    assert b" 400 " in await _raw_request(url, auth + json_type + gzip, b"\x1f\x8bgarbage")


async def test_a_chunked_body_over_the_limit_is_refused_as_it_is_read(
    deployed: tuple[Deployment, str],
) -> None:
    _, url = deployed

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2.5 MiB, no Content-Length
            yield b"x" * 65536

    headers = {
        "Authorization": f"Bearer {SHOP_KEY}",
        "Content-Type": "application/cloudevents+json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=chunks(), headers=headers) as resp,
    ):
        assert resp.status == 413
        assert (await resp.json())["error"] == "payload_too_large"


async def test_the_python_client_sends_waits_and_says_why_it_was_refused(
    deployed: tuple[Deployment, str],
) -> None:
    """paystream.http_client.IngressClient, as an upstream service uses it."""
    _, url = deployed
    base = url.removesuffix("/v1/commands")
    data = {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"}
    async with IngressClient(base, SHOP_KEY) as client:
        outcome = await client.command("payment.create", "shop", data, wait=20)
        assert isinstance(outcome, CloudEvent)
        assert outcome.get_type() == "com.paystream.payment.succeeded"
        assert outcome.get_data()["object"]["amount"] == 2500
        accepted = await client.command("customer.create", "shop", {}, command_id="http-sdk-1")
        assert accepted == Accepted("shop", "http-sdk-1", "http-sdk-1")
        with pytest.raises(IngressError) as refused:
            await client.command("payment.create", "shop", {"amount": -5, "currency": "USD"})
        assert refused.value.status == 400 and refused.value.error == "validation_error"
        assert refused.value.errors
        with pytest.raises(IngressError) as other:
            await client.command("customer.create", "other", {})
        assert other.value.status == 401
    # The platform's token sends for a tenant whose newest record this worker cannot
    # read (the test above): it is not held to the tenant's keys.
    async with IngressClient(base, PLATFORM_TOKEN) as platform:
        assert isinstance(await platform.command("customer.create", "upgrading", {}), Accepted)


async def test_send_over_http_prints_the_outcome(deployed: tuple[Deployment, str]) -> None:
    dep, url = deployed
    base = url.removesuffix("/v1/commands")
    data = '{"amount": 1200, "currency": "EUR", "payment_method_token": "pm_card_visa"}'
    # (the commands URL itself, as `paystream dev` prints it, or the base below)
    sent = run_cli(
        dep, "send", "payment.create", "--tenant", "shop", "--data", data, "--http", url,
        PAYSTREAM_INGRESS_KEY=SHOP_KEY,
    )  # fmt: skip
    outcome = json.loads(sent.stdout)
    assert outcome["type"] == "com.paystream.payment.succeeded"
    assert outcome["data"]["object"]["amount"] == 1200
    # The refusals below send nothing: asked at once.
    closed = f"http://127.0.0.1:{free_port()}"
    refused, invalid, nobody, no_url = at_once(
        functools.partial(
            run_cli, dep, "send", "customer.create", "--tenant", "other", "--http", base,
            check=False, PAYSTREAM_INGRESS_KEY=SHOP_KEY,
        ),
        # Refused as sent: 2, the fields named (as bad input is over Kafka).
        functools.partial(
            run_cli, dep, "send", "payment.create", "--tenant", "shop", "--http", base,
            "--data", '{"amount": -5, "currency": "USD", "payment_method_token": "pm_card_visa"}',
            check=False, PAYSTREAM_INGRESS_KEY=SHOP_KEY,
        ),
        # Nothing listening: not sent (1); not a URL: bad input (2).
        functools.partial(
            run_cli, dep, "send", "customer.create", "--tenant", "shop", "--http", closed,
            check=False, PAYSTREAM_INGRESS_KEY=SHOP_KEY,
        ),
        functools.partial(
            run_cli, dep, "send", "customer.create", "--tenant", "shop", "--http",
            "127.0.0.1:6066", check=False, PAYSTREAM_INGRESS_KEY=SHOP_KEY,
        ),
    )  # fmt: skip
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    assert SHOP_KEY not in refused.stdout + refused.stderr
    assert invalid.returncode == 2 and "amount:" in invalid.stderr, invalid.stderr
    assert nobody.returncode == 1 and "was not sent" in nobody.stderr, nobody.stderr
    assert no_url.returncode == 2, no_url.stderr


async def test_a_command_lands_on_its_tenant_s_partition_as_a_kafka_producer_puts_it(
    deployed: tuple[Deployment, str], client: PaystreamClient
) -> None:
    """One tenant's commands are ordered on one partition, whichever way they come in:
    the ingress partitions by the tenant as the Python client (murmur2) does."""
    dep, url = deployed
    over_http = structured("customer.create", {"email": "p@example.com"})
    over_kafka = build_command("customer.create", "shop", {"email": "q@example.com"})
    waited = client.expect("shop", over_http["id"])
    assert (await post(url, over_http))[0] == 202
    await client.send(over_kafka, timeout=30)
    await asyncio.wait_for(waited, 30)
    records = await dep.read_topic(dep.settings.commands_topic)
    partitions = {
        dict(r.headers).get("ce_id", b"").decode(): r.partition
        for r in records
        if dict(r.headers).get("ce_id")
    }
    expected = murmur2(b"shop") % dep.settings.partitions
    assert partitions[over_http["id"]] == partitions[str(over_kafka.get_id())] == expected
