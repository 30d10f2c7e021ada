"""The worker's JSON endpoints and /metrics, over HTTP against a real worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from paystream.agents.pipeline import DEAD_LETTER_REASONS
from paystream.tables.views import TENANT_RECENT_KEPT
from tests.web.conftest import CARD_NUMBERS, EXPECTED_TILES, HTML_TENANT, Seeded, wait_for_stats

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


@pytest_asyncio.fixture(loop_scope="session")
async def http(seeded: Seeded) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=seeded.base_url, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as resp:
        assert resp.status == status, (path, resp.status, await resp.text())
        assert resp.content_type == "application/json"
        return await resp.json()


async def test_healthz(http: aiohttp.ClientSession) -> None:
    body = await get_json(http, "/healthz")
    assert body["ok"] is True and body["failing"] == [] and body["excused"] == []
    assert body["uptime_s"] >= 0


async def test_a_path_or_method_no_view_serves_is_answered_in_json(
    http: aiohttp.ClientSession,
) -> None:
    """aiohttp's own answers were text/plain and named its and Python's versions in
    Server (new-user review; the ingress answered JSON already)."""
    body = await get_json(http, "/nope", status=404)
    assert body == {"error": "not_found", "message": "no such path: /nope"}
    async with http.delete("/healthz") as resp:
        assert resp.status == 405 and resp.content_type == "application/json"
        assert (await resp.json())["error"] == "method_not_allowed"
        assert "GET" in resp.headers["Allow"]
    async with http.get("/healthz") as resp:
        assert resp.headers["Server"] == "paystream"


async def test_readyz_once_the_worker_can_run_commands(http: aiohttp.ClientSession) -> None:
    body = await get_json(http, "/readyz")
    assert body == {"ready": True, "waiting_for": [], "stalled": [], "publish_failing": None}


async def test_no_partitions_before_the_consumer_thread_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust serves the views before its consumer thread starts, whose assignment()
    raises meanwhile: /readyz was a 500 with a traceback (review finding)."""
    from faust.exceptions import ConsumerNotStarted

    from paystream.web import views

    def not_started() -> set[object]:
        raise ConsumerNotStarted("Consumer thread not yet started")

    monkeypatch.setattr(views.app.consumer, "assignment", not_started)
    assert views._assigned() == []


async def test_what_a_worker_waits_for() -> None:
    from paystream.web.views import not_ready_because

    assert not_ready_because(registry_loaded=True, partitions=2, rebalancing=False) == []
    assert not_ready_because(registry_loaded=False, partitions=0, rebalancing=True) == [
        "tenant registry",
        "partition assignment",
        "rebalance",
    ]
    from paystream.agents.offsets import Stall

    commands, sink = Stall("commands", 40, 130.0), Stall("ledger_sink", 9, 900.0)
    assert not_ready_because(
        registry_loaded=True, partitions=2, rebalancing=False, stalled=[commands, sink]
    ) == [commands.describe()]
    # The ledger sink's stall (its database down) takes no worker out of service; it is
    # the source of a worker that runs no commands (mutation testing).
    assert (
        not_ready_because(registry_loaded=True, partitions=2, rebalancing=False, stalled=[sink])
        == []
    )
    assert not_ready_because(
        registry_loaded=True, partitions=2, rebalancing=False, stalled=[sink], source="ledger_sink"
    ) == [sink.describe()]


async def test_a_lookup_while_tables_settle_is_retried_not_answered_not_found() -> None:
    from paystream.web.views import missing_entity, not_ready_because

    status, body, headers = missing_entity("payments", settling=True)
    assert (status, body["error"], headers) == (503, "unavailable", {"Retry-After": "1"})
    assert missing_entity("payments", settling=False)[:2] == (
        404,
        {"error": "not_found", "message": "no such payment"},
    )
    waiting = not_ready_because(
        registry_loaded=True, partitions=2, rebalancing=False, recovering=True
    )
    assert waiting == ["table recovery"]


async def test_a_lookup_whose_owner_is_unreachable_is_retried_not_a_500() -> None:
    """Forwarded to a tenant's owner that died (before the group notices): 503 with
    Retry-After, not a plain-text 500; a 503 forwarded back keeps its Retry-After."""
    from aiohttp import web

    from paystream.web.views import _owner_unreachable_is_503

    class StandInView:
        def json(self, body: Any, *, status: int, headers: Any = None) -> web.Response:
            return web.json_response(body, status=status, headers=headers)

    async def owner_down(view: Any, request: Any) -> web.Response:
        raise aiohttp.ClientConnectionError("connection refused")

    async def owner_settling(view: Any, request: Any) -> web.Response:
        # Faust's re-wrap: the owner's body and content type, no other header.
        body = '{"error": "unavailable"}'
        return web.Response(text=body, status=503, content_type="application/json")

    down = await _owner_unreachable_is_503(owner_down)(StandInView(), None)
    assert (down.status, down.headers["Retry-After"]) == (503, "1")
    assert down.content_type == "application/json"
    settling = await _owner_unreachable_is_503(owner_settling)(StandInView(), None)
    assert settling.headers["Retry-After"] == "1"

    async def no_owner_yet(view: Any, request: Any) -> web.Response:
        from faust.web.exceptions import ServiceUnavailable

        raise ServiceUnavailable()  # Faust's router, before the first assignment

    # In our shape, with Retry-After (review finding: ~4 s of Faust's own after each start).
    unknown = await _owner_unreachable_is_503(no_owner_yet)(StandInView(), None)
    assert (unknown.status, unknown.headers["Retry-After"]) == (503, "1")
    assert json.loads(unknown.text)["error"] == "unavailable"


async def test_stats_shape_and_counts(http: aiohttp.ClientSession, seeded: Seeded) -> None:
    stats = await get_json(http, "/v1/stats")
    assert set(stats) == {
        "worker",
        "activity",
        "parked_backlog",
        "insights",
        "tenants",
        "tenants_omitted",
        "summaries",
        "minor_units",
    }
    assert stats["insights"] is None  # this worker does not run them
    # Measured 5 s after the worker started, then every 5 s here: the dead letter.
    measured = await wait_for_stats(
        seeded.worker, lambda s: (s["parked_backlog"] or {}).get("waiting") == 1
    )
    assert measured["parked_backlog"]["topics"]["dlq"]["waiting"] == 1
    assert stats["minor_units"] == {"USD": 2}  # the currencies shown (amounts: minor units)

    worker = stats["worker"]
    assert set(worker) == {
        "app_id",
        "uptime_s",
        "partitions",
        "processed",
        "ledger_processed",
        "tables_recovering",
    }
    assert worker["app_id"] == seeded.deployment.settings.app_id
    assert worker["partitions"] == list(range(seeded.deployment.settings.partitions))
    assert worker["processed"] == EXPECTED_TILES["t-total"] + 1  # + the dead-lettered garbage

    act = stats["activity"]
    assert set(act) == {"recent", "by_outcome", "by_tenant", "dead_letters", "parked", "total"}
    assert act["by_outcome"] == {
        "payment.succeeded": 1,
        "payment.failed": 1,
        "command.rejected": 3,
        "customer.created": 1,
    }
    assert act["by_tenant"] == {"acme": 3, "globex": 1, "nobody": 1, HTML_TENANT: 1}
    assert (act["total"], act["dead_letters"], act["parked"]) == (6, 1, 0)
    assert len(act["recent"]) == 6
    for entry in act["recent"]:
        assert set(entry) == {
            "time",
            "tenant",
            "registered",
            "command",
            "outcome",
            "entity_id",
            "amount",
            "currency",
            "reason",
            "resent",
        }
    by_reason = {e["reason"]: e for e in act["recent"] if e["reason"]}
    assert set(by_reason) == {"card_declined", "card_data_forbidden", "unknown_tenant"}
    succeeded = next(e for e in act["recent"] if e["outcome"] == "payment.succeeded")
    assert succeeded == {
        **succeeded,
        "tenant": "acme",
        "command": "payment.create",
        "entity_id": seeded.succeeded_payment,
        "amount": 2500,
        "currency": "USD",
        "reason": None,
        "resent": False,
    }

    # Only registered tenants, and nothing of theirs but status, gateway and limits.
    assert stats["tenants_omitted"] == 0
    assert stats["tenants"] == {
        "acme": {"status": "active", "gateway": "simulator"},
        "globex": {
            "status": "active",
            "gateway": "simulator",
            "limits": "1000/s (burst 1000) · ≤ 500.00 EUR per payment",
        },
    }
    assert stats["summaries"] == {
        "acme": {
            "payments": {"succeeded": 1, "failed": 1},
            "captured": {"USD": 2500},
            "refunded": {"USD": 0},
        }
    }


async def test_a_tenants_recent_outcomes_are_its_own(
    http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    """GET /v1/tenants/{tenant}/outcomes: the tenant's latest outcomes, newest first, kept
    apart from the other tenants' (review h77c: a command sent by hand left every tenant's
    last 50 within seconds); one tenant's path never shows another's."""
    acme = await get_json(http, "/v1/tenants/acme/outcomes")
    assert (acme["tenant"], acme["kept"], acme["minor_units"]) == (
        "acme",
        TENANT_RECENT_KEPT,
        {"USD": 2},
    )
    assert [e["tenant"] for e in acme["recent"]] == ["acme"] * 3
    assert {(e["outcome"], e["reason"]) for e in acme["recent"]} == {
        ("payment.succeeded", None),
        ("payment.failed", "card_declined"),
        ("command.rejected", "card_data_forbidden"),
    }
    times = [e["time"] for e in acme["recent"]]
    assert times == sorted(times, reverse=True)
    # As "Recent outcomes" shows them: the same entries.
    stats = await get_json(http, "/v1/stats")
    assert acme["recent"] == [e for e in stats["activity"]["recent"] if e["tenant"] == "acme"]
    globex = await get_json(http, "/v1/tenants/globex/outcomes")
    assert [(e["tenant"], e["outcome"]) for e in globex["recent"]] == [
        ("globex", "customer.created")
    ]
    # An id no tenant is registered under: its rejection (a mistyped --tenant, found).
    nobody = await get_json(http, "/v1/tenants/nobody/outcomes")
    assert [(e["tenant"], e["reason"]) for e in nobody["recent"]] == [("nobody", "unknown_tenant")]
    assert (await get_json(http, "/v1/tenants/initech/outcomes"))["recent"] == []
    for no_tenant in ("Acme", "acme:x", "_unknown", "%3Cimg"):
        body = await get_json(http, f"/v1/tenants/{no_tenant}/outcomes", status=404)
        assert body == {"error": "not_found", "message": "no such tenant"}, no_tenant


async def test_entity_lookup(http: aiohttp.ClientSession, seeded: Seeded) -> None:
    pid = seeded.succeeded_payment
    body = await get_json(http, f"/v1/tenants/acme/payments/{pid}")
    assert (body["id"], body["tenant_id"], body["status"], body["amount"]) == (
        pid,
        "acme",
        "succeeded",
        2500,
    )
    assert "applied" not in body
    cus = seeded.outcomes["customer"].get_data()["entity_id"]
    assert (await get_json(http, f"/v1/tenants/globex/customers/{cus}"))["id"] == cus


async def test_command_lookup(http: aiohttp.ClientSession, seeded: Seeded) -> None:
    """What became of a command, by its id: the outcome event it was answered with."""
    ok = seeded.outcomes["succeeded"]
    command_id = ok.get_extension("causationid")
    body = await get_json(http, f"/v1/tenants/acme/commands/{command_id}")
    assert (body["command_id"], body["command_type"], body["state"]) == (
        command_id,
        "payment.create",
        "done",
    )
    assert (body["outcome"]["id"], body["outcome"]["type"]) == (ok.get_id(), ok.get_type())
    assert body["outcome"]["entity"] == {"kind": "payments", "id": seeded.succeeded_payment}
    # Another tenant's command is simply absent.
    absent = await get_json(http, f"/v1/tenants/globex/commands/{command_id}", status=404)
    assert absent == {"error": "not_found", "message": "no such command"}


# (Listed in the answer: a singular "payment" got a bare "unknown kind".)
_KINDS = (
    "; kinds: connected_accounts, customers, disputes, invoices, payment_methods, payments, "
    "payouts, refunds, subscriptions, tax_calculations, tax_rates, transfers, commands"
)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # another tenant's id is simply absent
        ("/v1/tenants/globex/payments/{pid}", "no such payment"),
        ("/v1/tenants/nobody/payments/{pid}", "no such payment"),
        ("/v1/tenants/acme/payments/pay_does_not_exist", "no such payment"),
        ("/v1/tenants/acme/refunds/{pid}", "no such refund"),
        ("/v1/tenants/acme/customers/{pid}", "no such customer"),
        ("/v1/tenants/acme/payment_methods/{pid}", "no such payment_method"),
        ("/v1/tenants/acme/disputes/{pid}", "no such dispute"),
        ("/v1/tenants/acme/subscriptions/{pid}", "no such subscription"),
        ("/v1/tenants/acme/invoices/{pid}", "no such invoice"),
        ("/v1/tenants/acme/payouts/{pid}", "no such payout"),
        ("/v1/tenants/acme/tax_rates/{pid}", "no such tax_rate"),
        ("/v1/tenants/acme/tax_calculations/{pid}", "no such tax_calculation"),
        ("/v1/tenants/acme/connected_accounts/{pid}", "no such connected_account"),
        ("/v1/tenants/acme/widgets/{pid}", "unknown kind" + _KINDS),
        # bookkeeping tables are not entity kinds
        ("/v1/tenants/acme/idempotency/{pid}", "unknown kind" + _KINDS),
        ("/v1/tenants/acme/tenants/acme", "unknown kind" + _KINDS),
        # not quoted back (review h64b: a card number was, whole; and 7,000 characters)
        ("/v1/tenants/acme/4242424242424242/{pid}", "unknown kind" + _KINDS),
        ("/v1/tenants/acme/4242%204242%204242%204242/{pid}", "unknown kind" + _KINDS),
        ("/v1/tenants/acme/" + "k" * 7000 + "/{pid}", "unknown kind" + _KINDS),
    ],
)
async def test_entity_lookup_not_found_shapes(
    http: aiohttp.ClientSession, seeded: Seeded, path: str, message: str
) -> None:
    body = await get_json(http, path.format(pid=seeded.succeeded_payment), status=404)
    assert body == {"error": "not_found", "message": message}


async def test_metrics_count_commands_by_tenant_command_and_outcome(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    commands = families["paystream_commands"]  # the parser drops the _total suffix
    assert commands.type == "counter"
    counts = {
        (s.labels["tenant"], s.labels["command"], s.labels["outcome"]): s.value
        for s in commands.samples
        if s.name == "paystream_commands_total"
    }
    assert counts == {
        ("acme", "payment.create", "payment.succeeded"): 1.0,
        ("acme", "payment.create", "payment.failed"): 1.0,
        ("acme", "payment.create", "command.rejected"): 1.0,
        ("globex", "customer.create", "customer.created"): 1.0,
        # made-up tenant ids share one label: they must not grow the metrics unbounded
        ("(unregistered)", "payment.create", "command.rejected"): 1.0,
        ("(unregistered)", "customer.create", "command.rejected"): 1.0,
    }
    dead = {
        s.labels["reason"]: s.value
        for s in families["paystream_dead_letters"].samples
        if s.name == "paystream_dead_letters_total"
    }
    # (Every reason is exposed from the start, at 0: the first one shows as an increase.)
    assert dead == dict.fromkeys(DEAD_LETTER_REASONS, 0.0) | {"not_a_cloudevent": 1.0}
    assert "paystream_command_latency_seconds_bucket" in text


async def test_the_worker_runs_on_uvloop(seeded: Seeded) -> None:
    """PAYSTREAM_EVENT_LOOP's default. Anything that touched a table's store (or the
    app's loop) while the worker's modules were imported bound them to asyncio's own loop
    before the worker chose one: it then ran on that, silently (a metrics collector
    registered at import once did)."""
    startup = [
        line for line in seeded.worker.log_path.read_text().splitlines() if "event loop:" in line
    ]
    assert startup and "event loop: uvloop;" in startup[0], startup


async def test_metrics_size_the_tables_and_their_recovery(http: aiohttp.ClientSession) -> None:
    """What the next recovery replays, and what is left of one in progress (none)."""
    async with http.get("/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    keys = {s.labels["table"]: s.value for s in families["paystream_table_keys"].samples}
    # acme's payments (one succeeded, one failed) and globex's customer.
    assert (keys["payments"], keys["customers"], keys["refunds"]) == (2.0, 1.0, 0.0)
    assert keys["idempotency"] >= 3.0  # at least the three commands that made entities
    assert families["paystream_table_recovering"].samples[0].value == 0.0
    remaining = {
        s.labels["kind"]: s.value
        for s in families["paystream_table_recovery_remaining_records"].samples
    }
    assert remaining == {"active": 0.0, "standby": 0.0}


async def test_no_card_number_in_any_response(http: aiohttp.ClientSession, seeded: Seeded) -> None:
    bodies = []
    for path in (
        "/v1/stats",
        "/metrics",
        f"/v1/tenants/acme/payments/{seeded.succeeded_payment}",
        f"/v1/tenants/acme/payments/{seeded.failed_payment}",
        "/v1/tenants/acme/outcomes",  # (its card-number rejection among them)
    ):
        async with http.get(path) as resp:
            bodies.append(await resp.text())
    for body in bodies:
        for pan in CARD_NUMBERS:
            assert pan not in body


async def test_fausts_raw_table_views_are_not_served(http: aiohttp.ClientSession) -> None:
    """They would hand out any table's raw records (personal data, idempotency records)."""
    for path in ("/table/", "/table/customers/", "/table/customers/acme:cus_1/"):
        async with http.get(path) as resp:
            assert resp.status == 404, path


async def test_personal_data_and_figures_are_not_cached(
    http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    """A proxy or browser cache must not keep a copy of a customer's data (review finding)."""
    for path in (
        f"/v1/tenants/acme/payments/{seeded.succeeded_payment}",
        "/v1/tenants/acme/outcomes",
        "/v1/stats",
        "/metrics",
    ):
        async with http.get(path) as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store", path


async def test_pages_and_data_carry_a_content_security_policy(
    http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    """Defence in depth behind the page's escaping: data never runs, frames or sniffs;
    the page runs only its own inline script and style (review finding). The browser
    tests (test_dashboard.py) run the page under this policy."""
    for path in (
        f"/v1/tenants/acme/payments/{seeded.succeeded_payment}",
        "/v1/tenants/acme/outcomes",
        "/v1/stats",
        "/metrics",
    ):
        async with http.get(path) as resp:
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none';"), path
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
            assert resp.headers["Referrer-Policy"] == "no-referrer", path
    async with http.get("/") as resp:
        policy = resp.headers["Content-Security-Policy"]
        assert "script-src 'sha256-" in policy and "style-src 'sha256-" in policy
        assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
        assert resp.headers["X-Frame-Options"] == "DENY"


async def test_a_forwarded_lookup_answered_other_than_json_is_a_502() -> None:
    """A peer that is no paystream worker (a stale assignment's address, reused) answering
    text/html: served on the dashboard's origin, it would run there (review finding)."""
    from aiohttp import web

    from paystream.web.views import _owner_unreachable_is_503

    class StandInView:
        def json(self, body: Any, *, status: int, headers: Any = None) -> web.Response:
            return web.json_response(body, status=status, headers=headers)

    async def rogue(view: Any, request: Any) -> web.Response:
        return web.Response(text="<script>alert(1)</script>", content_type="text/html")

    answer = await _owner_unreachable_is_503(rogue)(StandInView(), None)
    assert (answer.status, answer.content_type) == (502, "application/json")
    assert "<script>" not in answer.text


async def test_a_forwarded_lookup_carries_the_token_and_nothing_else_of_the_caller() -> None:
    """The dashboard's cookie goes as a bearer token; no other header (the caller's
    Host: the owner is asked under its own name; another local service's cookies, a
    proxy's) leaves for the owner (review finding)."""
    from multidict import CIMultiDict

    from paystream.app import forwarded_headers

    caller = CIMultiDict(
        {
            "host": "10.0.0.7:6066",
            "Cookie": "grafana_session=abc; paystream_token=s3cret; other=1",
            "X-Forwarded-For": "203.0.113.9",
            "Accept": "application/json",
        }
    )
    assert forwarded_headers(caller) == {
        "Accept": "application/json",
        "Authorization": "Bearer s3cret",
        **_MARK,
    }
    bearer = CIMultiDict({"Authorization": "Bearer t", "Cookie": "paystream_token=other"})
    assert forwarded_headers(bearer) == {"Authorization": "Bearer t", **_MARK}
    assert forwarded_headers(None) == _MARK
    # Behind an authenticating proxy (Basic): the cookie's token, not the proxy's header;
    # and a token the cookie had to escape (aiohttp's set_cookie), decoded as the worker
    # reads it (review finding: both were a 401 from the owner).
    from aiohttp import web

    jar = web.Response()
    jar.set_cookie("paystream_token", 'a;b,c"d')
    cookie = jar.cookies.output(header="").strip().split("; Path")[0]
    proxied = CIMultiDict({"Authorization": "Basic b3A6cHc=", "Cookie": f"x=1; {cookie}"})
    assert forwarded_headers(proxied) == {"Authorization": 'Bearer a;b,c"d', **_MARK}
    assert forwarded_headers(CIMultiDict({"Authorization": "Basic b3A6cHc="})) == _MARK
    # Another service's cookie that Python's SimpleCookie refuses (a space, brackets, no
    # name) made it drop them all: the owner got no token, and answered 401 (review).
    for other in ("theme=dark mode", "arr[k]=1", "=nameless", 'q="unclosed'):
        odd = CIMultiDict({"Cookie": f"{other}; paystream_token=s3cret"})
        assert forwarded_headers(odd) == {"Authorization": "Bearer s3cret", **_MARK}, other


_MARK = {"Paystream-Forwarded": "1"}


async def test_a_forwarded_lookup_is_never_forwarded_again() -> None:
    """Mid-rebalance two workers can each name the other the tenant's owner: the lookup
    went back and forth, a new request each hop, until a timeout (review finding). The
    second forward is refused, and the caller gets a 503 to retry."""
    from aiohttp import web
    from multidict import CIMultiDict

    from paystream.app import ForwardingClient, ForwardLoop
    from paystream.web.views import _owner_unreachable_is_503

    client = ForwardingClient()
    try:
        forwarded = CIMultiDict({"Authorization": "Bearer t", **_MARK})
        with pytest.raises(ForwardLoop):
            client.request("GET", "http://10.0.0.8:6066/v1/x", headers=forwarded)
    finally:
        await client.close()

    class StandInView:
        def json(self, body: Any, *, status: int, headers: Any = None) -> web.Response:
            return web.json_response(body, status=status, headers=headers)

    async def bounced(view: Any, request: Any) -> web.Response:
        raise ForwardLoop("again")

    answer = await _owner_unreachable_is_503(bounced)(StandInView(), None)
    assert (answer.status, answer.headers["Retry-After"]) == (503, "1")
    assert "no worker owns this tenant yet" in answer.text


async def test_an_open_worker_refuses_a_rebound_domain(
    http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    """No PAYSTREAM_WEB_TOKEN: a page whose domain was re-pointed at the worker (DNS
    rebinding) reads nothing; the same requests by address, and the probes, are answered
    (review finding)."""
    lookup = f"/v1/tenants/acme/payments/{seeded.succeeded_payment}"
    rebound = {"Host": "rebind.attacker.example:6066"}
    for path in ("/", "/v1/stats", "/metrics", lookup, "/v1/tenants/acme/outcomes"):
        async with http.get(path, headers=rebound) as resp:
            assert resp.status == 403, (path, resp.status)
            assert "acme" not in await resp.text()
        async with http.get(path) as resp:
            assert resp.status == 200, path
    for probe in ("/healthz", "/readyz"):
        async with http.get(probe, headers=rebound) as resp:
            assert resp.status == 200, probe


@pytest.mark.parametrize(
    "host", ["w1:99999", "w1:0", "u:p@w1", "w1/x", "w 1", "[::1", "w1:x", "x[", "a[b"]
)
async def test_a_host_header_that_is_no_host_and_port_is_a_400(
    http: aiohttp.ClientSession, seeded: Seeded, host: str
) -> None:
    """A port out of range, or credentials in it, made the URL Faust forwards a lookup
    under raise: a 500, and a traceback logged per request (review finding)."""
    lookup = f"/v1/tenants/acme/payments/{seeded.succeeded_payment}"
    for path in ("/", "/v1/stats", lookup):
        async with http.get(path, headers={"Host": host}) as resp:
            assert resp.status == 400, (path, resp.status)
            assert (await resp.json())["error"] == "bad_host"
