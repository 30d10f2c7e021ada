"""The interface documents (docs/asyncapi.yaml, docs/openapi.yaml) say what the code does.

They are generated (`paystream docs`); these tests hold the committed files to the
generator, the generator to the code (every command, outcome, rejection reason and web
route), and the documented response and outcome schemas to what a real worker answers.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from pydantic import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT7, DRAFT202012

from paystream import docs
from paystream.agents import handlers
from paystream.client import build_command
from paystream.gateways.base import RefundStatus
from paystream.gateways.simulator import SimulatorGateway
from paystream.insights.events import alert_event, window_event
from paystream.insights.observe import Observed
from paystream.insights.state import InsightsConfig, TenantInsights
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.commands import COMMAND_PREFIX, COMMANDS
from paystream.streams.outcomes import CommandRef, RejectReason, encode_outcome
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.fixtures.pipeline import Deployment

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ROOT / "paystream" / "web" / "views.py"
WEB_SOURCES = sorted((ROOT / "paystream" / "web").glob("*.py"))
TOKEN = "docs-test-token"


@functools.cache
def published(name: str) -> dict[str, Any]:
    """docs/<name>.yaml as committed (`asyncapi` or `openapi`)."""
    return dict(yaml.safe_load((ROOT / "docs" / f"{name}.yaml").read_text()))


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text()))


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text()))


def validator(doc: dict[str, Any], pointer: str, *, draft7: bool = False) -> Any:
    """A validator for the schema at ``pointer`` in ``doc``, its refs resolved in ``doc``."""
    spec = DRAFT7 if draft7 else DRAFT202012
    uri = "urn:paystream:doc"
    registry: Registry[Any] = Registry().with_resource(uri, spec.create_resource(doc))
    cls = jsonschema.Draft7Validator if draft7 else jsonschema.Draft202012Validator
    return cls({"$ref": f"{uri}#{pointer}"}, registry=registry)


def response_schema(path: str, status: int, content: str = "application/json") -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/get/responses/{status}/content/{content.replace('/', '~1')}/schema"


# ---- the files are the generator's ---------------------------------------------------


def test_the_committed_documents_are_what_the_code_generates() -> None:
    assert docs.stale(ROOT / "docs") == [], "run `paystream docs` and commit docs/*.yaml"


def test_the_documents_read_back_as_the_generated_values() -> None:
    generated = {"asyncapi.yaml": docs.asyncapi(), "openapi.yaml": docs.openapi()}
    for name, text in docs.documents().items():
        assert yaml.safe_load(text) == generated[name], name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_the_yaml_writer_round_trips_any_json_like_value(value: dict[str, Any]) -> None:
    assert yaml.safe_load(docs.to_yaml(value)) == (value or None)


def test_docs_check_fails_on_a_stale_document_and_docs_writes_them(tmp_path: Path) -> None:
    from paystream.cli import cli

    runner = CliRunner()
    stale = runner.invoke(cli, ["docs", "--check", "--dir", str(tmp_path)])
    assert stale.exit_code == 1, stale.output
    assert "not found" in stale.output  # (not "differ": run outside the repository root)
    assert f"run `paystream docs --dir {tmp_path}`" in stale.output
    written = runner.invoke(cli, ["docs", "--dir", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asyncapi.yaml", "openapi.yaml"]
    assert runner.invoke(cli, ["docs", "--check", "--dir", str(tmp_path)]).exit_code == 0
    (tmp_path / "openapi.yaml").write_text("openapi: 3.1.0\n")
    changed = runner.invoke(cli, ["docs", "--check", "--dir", str(tmp_path)])
    assert changed.exit_code == 1 and "openapi.yaml" in changed.output


def test_docs_outside_the_repository_writes_nothing_unasked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.cli import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["docs"])
    assert result.exit_code == 1 and "run from the repository root" in result.output
    assert list(tmp_path.iterdir()) == []


# ---- required top-level fields ------------------------------------------------------


def test_asyncapi_top_level(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] and asyncapi["info"]["version"]
    assert {"channels", "operations", "components", "servers"} <= set(asyncapi)
    addresses = {c["address"] for c in asyncapi["channels"].values()}
    assert {
        "paystream.commands",
        "paystream.events",
        "paystream.commands.dlq",
        "paystream.commands.retry",
        "paystream.tenants",
    } <= addresses
    for name, operation in asyncapi["operations"].items():
        assert operation["action"] in ("send", "receive"), name


def test_openapi_is_a_valid_openapi_3_1_document(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    assert openapi["info"]["title"] and openapi["info"]["version"]
    assert openapi["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    validate_openapi(openapi)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.parametrize("name", ["asyncapi", "openapi"])
def test_every_reference_resolves(name: str, request: pytest.FixtureRequest) -> None:
    doc = request.getfixturevalue(name)
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        assert _resolve(doc, ref) is not None, ref


def test_asyncapi_names_and_schemas_are_well_formed(asyncapi: dict[str, Any]) -> None:
    key = re.compile(r"^[A-Za-z0-9.\-_]+$")  # AsyncAPI 3.0's rule for component keys
    for section in asyncapi["components"].values():
        assert all(key.match(k) for k in section), list(section)
    for channel in asyncapi["channels"].values():
        assert all(key.match(k) for k in channel["messages"])
    # The default schema format is a superset of JSON Schema draft 7.
    for name, schema in asyncapi["components"]["schemas"].items():
        jsonschema.Draft7Validator.check_schema(schema)
        assert "$defs" not in json.dumps(schema), name


# ---- every command, outcome, reason and route ---------------------------------------


def test_every_command_has_a_message_whose_payload_is_its_model(asyncapi: dict[str, Any]) -> None:
    channel = asyncapi["channels"]["commands"]["messages"]
    assert set(channel) == {f"command.{kind}" for kind in COMMANDS}
    for kind, model in COMMANDS.items():
        message = _resolve(asyncapi, channel[f"command.{kind}"]["$ref"])
        assert message["name"] == kind and message["title"] == COMMAND_PREFIX + kind
        payload = _resolve(asyncapi, message["payload"]["$ref"])
        expected = model.model_json_schema()
        assert set(payload["properties"]) == set(expected["properties"]), kind
        assert payload.get("required", []) == expected.get("required", []), kind
        assert payload["additionalProperties"] is False
        assert kind in docs.COMMAND_SUMMARIES


SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("payment.create", {"amount": 1999, "currency": "USD", "payment_method_token": "pm_card_visa"}),
    ("payment.create", {"amount": 1999, "currency": "USD", "payment_method_id": "pm_1"}),
    (
        "payment.create",
        {"amount": 1, "currency": "JPY", "payment_method_id": None, "payment_method_token": "tok"},
    ),
    ("payment.create", {"amount": 1999, "currency": "USD"}),
    (
        "payment.create",
        {"amount": 1, "currency": "USD", "payment_method_id": "a", "payment_method_token": "tok"},
    ),
    ("payment.create", {"amount": 19.99, "currency": "USD", "payment_method_id": "pm_1"}),
    ("payment.create", {"amount": 5, "currency": "USD", "payment_method_id": "x", "cvc": "1"}),
    # `currency`: what money.normalise_currency takes, and nothing else.
    *[
        ("payment.create", {"amount": 5, "currency": currency, "payment_method_id": "x"})
        for currency in [
            "usd",
            "Usd",
            "kWd",
            " eur",
            "JPY\n",
            "\u00a0gbp\u3000",
            "\x1cUSD\x1f",
            "XYZ",
            "",
            "US",
            "USDX",
            "U SD",
            "u\u017fd",
            "\uff35\uff33\uff24",
            "USD\x00",
            "\ufeffUSD",
            "\u200bUSD",
            840,
            None,
            ["USD"],
        ]
    ],
    ("customer.create", {}),
    ("customer.create", {"email": "not-an-address"}),
    ("customer.update", {"customer_id": "cus_1", "metadata": {"k": ""}}),
    ("payment.cancel", {"payment_id": "p1", "reason": "abandoned"}),
    ("payment.cancel", {"payment_id": "p1", "reason": "bored"}),
    ("payment.refresh", {"payment_id": "p1"}),
    ("payment.refresh", {"payment_id": "p1", "status": "succeeded"}),
    ("refund.create", {"payment_id": "p 1"}),
    ("dispute.submit_evidence", {"dispute_id": "dp_1", "evidence": {}}),
    ("dispute.submit_evidence", {"dispute_id": "dp_1", "evidence": {"a": "b"}, "submit": 1}),
    ("dispute.accept", {"dispute_id": "dp_1"}),
]


@pytest.mark.parametrize(("kind", "data"), SAMPLES)
def test_command_schemas_accept_what_the_models_accept(
    asyncapi: dict[str, Any], kind: str, data: dict[str, Any]
) -> None:
    message = asyncapi["components"]["messages"][f"command.{kind}"]
    schema = validator(asyncapi, message["payload"]["$ref"][1:], draft7=True)
    try:
        COMMANDS[kind].model_validate(data)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    assert schema.is_valid(data) == model_accepts, (kind, data)


def test_the_currency_pattern_ignores_the_white_space_the_model_strips(
    asyncapi: dict[str, Any],
) -> None:
    """str.strip()'s white space, not the pattern dialect's `\\s` (another set)."""
    currency = asyncapi["components"]["schemas"]["CreatePayment"]["properties"]["currency"]
    pattern = re.compile(currency["pattern"])
    padded = {c for c in range(0x110000) if pattern.search(f"{chr(c)}usd{chr(c)}")}
    assert padded == {c for c in range(0x110000) if chr(c).isspace()}


@pytest.mark.parametrize("literal", ["100.0", "1e2", "1E2", "100.00"])
def test_an_amount_with_a_fraction_or_exponent_is_refused_as_documented(
    asyncapi: dict[str, Any], literal: str
) -> None:
    """JSON Schema's `integer` takes 100.0 (a schema cannot tell it from 100); the model
    refuses it, and each command's `amount` says so."""
    data = json.loads(f'{{"amount": {literal}, "currency": "USD", "payment_method_id": "x"}}')
    with pytest.raises(ValidationError):
        COMMANDS["payment.create"].model_validate(data)
    schema = validator(asyncapi, "/components/schemas/CreatePayment", draft7=True)
    assert schema.is_valid(data)  # (hence the description)
    for kind, model in COMMANDS.items():
        props = asyncapi["components"]["schemas"][model.__name__]["properties"]
        if "amount" in props:
            assert "JSON integer literal" in props["amount"]["description"], kind
            assert "`1e2`" in props["amount"]["description"], kind


def test_every_reject_reason_is_documented(asyncapi: dict[str, Any]) -> None:
    reason = asyncapi["components"]["schemas"]["RejectReason"]
    assert reason["enum"] == [r.value for r in RejectReason]
    for r in RejectReason:
        assert f"`{r.value}`:" in reason["description"]
    rejected = asyncapi["components"]["schemas"]["CommandRejected"]["properties"]["reason"]
    assert rejected == {"$ref": "#/components/schemas/RejectReason"}


def _emitted_outcomes() -> set[str]:
    """Every outcome type the handlers can produce, read from their code."""
    source = Path(handlers.__file__).read_text()
    literal = set(re.findall(r'HandlerResult\(\s*"([a-z_]+\.[a-z_]+)"', source))
    assert literal, 'the handlers\' outcome types are no longer written HandlerResult("...")'
    assert 'f"refund.{status.value}"' in source
    return (
        literal
        | set(handlers._PAYMENT_OUTCOME.values())
        | set(handlers._PAYOUT_OUTCOME.values())
        | set(handlers._INVOICE_OUTCOME.values())
        | set(handlers._PAUSE_OUTCOME.values())
        | {f"refund.{s.value}" for s in RefundStatus}
        | {"command.rejected"}
    )


def test_every_outcome_type_is_documented(asyncapi: dict[str, Any]) -> None:
    documented = set(docs.OUTCOMES)
    assert documented == _emitted_outcomes()
    channel = asyncapi["channels"]["events"]["messages"]
    assert set(channel) == {f"outcome.{o}" for o in documented}


def test_the_ledger_knows_which_outcomes_carry_no_entity() -> None:
    # It counts them by type; any other entity-less type is "other" (a forged label).
    from paystream.ledger.sink import ENTITYLESS_OUTCOMES

    entityless = {o for o, (entity, _s, _p) in docs.OUTCOMES.items() if entity is None}
    assert {docs.OUTCOME_PREFIX + o for o in entityless} == ENTITYLESS_OUTCOMES


def _page_routes() -> set[str]:
    """The paths of every ``@app.page(...)`` in paystream/web."""
    routes = set()
    for node in ast.walk(ast.parse("\n".join(p.read_text() for p in WEB_SOURCES))):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                if (
                    isinstance(deco, ast.Call)
                    and ast.unparse(deco.func) == "app.page"
                    and isinstance(deco.args[0], ast.Constant)
                ):
                    routes.add(str(deco.args[0].value))
    return routes


def test_every_web_route_is_in_the_openapi_paths(openapi: dict[str, Any]) -> None:
    routes = _page_routes()
    assert "/v1/stats" in routes and "/healthz" in routes
    assert routes == set(openapi["paths"])
    kinds = openapi["paths"]["/v1/tenants/{tenant}/{kind}/{entity_id}"]["get"]["parameters"][1]
    source = VIEWS.read_text()
    for kind in kinds["schema"]["enum"]:
        if kind == "commands":  # not a table's: what became of a command
            assert 'kind == "commands"' in source
            continue
        assert f'"{kind}": t.{kind}' in source, kind


def test_every_error_the_views_answer_is_in_the_error_schema(openapi: dict[str, Any]) -> None:
    source = "\n".join(p.read_text() for p in WEB_SOURCES)
    answered = set(re.findall(r'"error": "([a-z_]+)"', source))
    # The ingress's refusals: _Refused(status, result label, error, ...).
    answered |= set(re.findall(r'_Refused\(\s*\d+,\s*"[a-z_]+",\s*"([a-z_]+)"', source))
    assert {"bad_host", "bad_gateway", "not_found", "unsupported_media_type"} <= answered
    schemas = openapi["components"]["schemas"]
    errors = set(schemas["Error"]["properties"]["error"]["enum"])
    invalid = set(schemas["CommandInvalid"]["properties"]["error"]["enum"])
    single = {
        schemas[name]["properties"]["error"]["const"]
        for name in ("RateLimited", "KeyExpired", "KeyForbidden")
    }
    assert errors | invalid | single == answered
    assert invalid == {"validation_error", "unsupported", "unknown_command"}


def test_a_malformed_host_is_a_documented_400(openapi: dict[str, Any]) -> None:
    """web/views.py _refused_host: on every view but the probes."""
    body = {"error": "bad_host", "message": "the Host header is not a host[:port]"}
    for path in ("/", "/metrics", "/v1/stats", "/v1/tenants/{tenant}/{kind}/{entity_id}"):
        validator(openapi, response_schema(path, 400)).validate(body)
    for probe in ("/healthz", "/readyz"):
        assert "400" not in openapi["paths"][probe]["get"]["responses"], probe


def test_an_owner_answering_other_than_json_is_a_documented_502(openapi: dict[str, Any]) -> None:
    from paystream.web.views import owner_not_json  # (imports the Faust app)

    status, body, headers = owner_not_json()
    path = "/v1/tenants/{tenant}/{kind}/{entity_id}"
    validator(openapi, response_schema(path, status)).validate(body)
    documented = openapi["paths"][path]["get"]["responses"][str(status)]["headers"]
    assert set(headers) <= set(documented)


def test_the_dashboard_redirects_a_token_only_when_one_is_configured(
    openapi: dict[str, Any],
) -> None:
    """views.py DashboardView: `?token=` is read only with PAYSTREAM_WEB_TOKEN set."""
    assert "token is not None and settings.web_token is not None" in VIEWS.read_text()
    found = openapi["paths"]["/"]["get"]["responses"]["303"]["description"]
    assert "while PAYSTREAM_WEB_TOKEN is set" in found


# ---- headers as the codec writes them -------------------------------------------------


def test_a_command_as_the_client_sends_it_matches_its_headers(asyncapi: dict[str, Any]) -> None:
    event = build_command(
        "payment.create", "acme", {"amount": 1}, idempotency_key="k1", traceparent=None
    )
    record = encode_event(event, b"acme", CloudEventsMode.BINARY)
    headers = {k: v.decode() for k, v in record.headers}
    message = asyncapi["components"]["messages"]["command.payment.create"]
    schema = validator(asyncapi, "/components/messages/command.payment.create/headers", draft7=True)
    schema.validate(headers)
    assert not schema.is_valid({**headers, "ce_type": COMMAND_PREFIX + "refund.create"})
    assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_an_outcome_record_matches_its_headers(asyncapi: dict[str, Any]) -> None:
    cmd = CommandRef("acme", "c1", "payment.create", "c1", datetime(2026, 1, 2, tzinfo=UTC))
    data = {"tenant_id": "acme", "command_id": "c1", "entity_id": "pay_1"}
    record = encode_outcome(cmd, "payment.succeeded", data, CloudEventsMode.BINARY)
    headers = {k: v.decode() for k, v in record.headers}
    pointer = "/components/messages/outcome.payment.succeeded/headers"
    validator(asyncapi, pointer, draft7=True).validate(headers)
    assert headers["ce_subject"] == "pay_1"


def test_insights_events_match_their_messages(asyncapi: dict[str, Any]) -> None:
    """What paystream/insights/events.py publishes, payload and headers, as documented."""
    cfg = InsightsConfig(subject_declines=2)
    st = TenantInsights("acme")
    at = 1_700_000_040_000
    paid = Observed(
        "e1", "acme", "payment.succeeded", at, currency="USD", captured=900, attempt=True
    )
    declined = Observed(
        "e2", "acme", "payment.failed", at, currency="USD", declined=500,
        decline_code="generic_decline", card_declined=True, customer_id="cus_1", attempt=True,
    )  # fmt: skip
    # A dispute opened and one lost (disputes, payments_succeeded: present when any).
    disputed = Observed(
        "e3", "acme", "payment.succeeded", at, currency="USD",
        disputes_opened=(("USD", 900),), disputes_lost=(("EUR", 450),),
    )  # fmt: skip
    st.apply(paid, cfg)
    st.apply(disputed, cfg)
    alerts = [a for _ in range(2) for a in st.apply(declined, cfg)]
    records = {
        "analyticsWindow": window_event(
            "acme", at, cfg.window_ms, st.windows[str(at)], CloudEventsMode.BINARY
        ),
        "fraudAlert": alert_event("acme", alerts[0], CloudEventsMode.BINARY),
    }
    window = json.loads(records["analyticsWindow"].value)
    assert {"disputes", "payments_succeeded"} <= set(window), window  # (validated below)
    for name, record in records.items():
        pointer = f"/components/messages/{name}"
        validator(asyncapi, f"{pointer}/payload", draft7=True).validate(json.loads(record.value))
        headers = {k: v.decode() for k, v in record.headers}
        validator(asyncapi, f"{pointer}/headers", draft7=True).validate(headers)


# ---- an export as the handlers build it ----------------------------------------------


@pytest.mark.asyncio
async def test_a_customer_export_matches_its_published_schema(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Its rows are entities as published: the closed schemas of `object`s (the table rows
    carried the entity view's `entity_type` tag, which they refuse)."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        await h.send("customer.create", t, {"customer_id": "c1", "email": "a@example.com"})
        attach = {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "pm1"}
        await h.send("payment_method.attach", t, attach)
        card = {"amount": 1000, "currency": "USD", "payment_method_id": "pm1"}
        paid = await h.send("payment.create", t, {**card, "customer_id": "c1"})
        refund = {"payment_id": paid.get_data()["entity_id"], "amount": 100}
        await h.send("refund.create", t, refund)
        # A disputed payment, and a subscription with its first invoice.
        disputing = {"customer_id": "c1", "token": "pm_card_createDispute",
                     "payment_method_id": "pm2"}  # fmt: skip
        await h.send("payment_method.attach", t, disputing)
        await h.send("payment.create", t, {**card, "customer_id": "c1", "payment_method_id": "pm2"})
        plan = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "pm1",
                "amount": 900, "currency": "EUR", "interval": "month"}  # fmt: skip
        await h.send("subscription.create", t, plan)
        out = await h.send("customer.export", t, {"customer_id": "c1"})
    body = out.get_data()
    assert out.get_type() == "com.paystream.customer.exported", body
    export = body["export"]
    lists = ("payment_methods", "payments", "refunds", "disputes", "subscriptions", "invoices")
    assert [len(export[n]) for n in lists] == [2, 2, 1, 1, 1, 1]
    pointer = "/components/messages/outcome.customer.exported/payload"
    validator(asyncapi, pointer, draft7=True).validate(body)


# ---- against a real worker ----------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(deployment_factory: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A worker with a web token, a payment, a decline, a customer and a rejection behind
    it: (base URL, the outcomes by name)."""
    dep: Deployment = await deployment_factory(PAYSTREAM_WEB_TOKEN=TOKEN)
    await dep.add_tenants(Tenant(tenant_id="acme"))
    with dep.worker() as worker:
        await asyncio.to_thread(worker.wait_ready, ["acme"], partitions=dep.settings.partitions)
        card = {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"}
        async with dep.client() as client:
            outcomes = dict(
                zip(
                    ("paid", "declined", "customer", "unknown"),
                    await asyncio.gather(
                        client.command("payment.create", "acme", card),
                        client.command(
                            "payment.create",
                            "acme",
                            {**card, "payment_method_token": "pm_card_chargeDeclined"},
                        ),
                        client.command("customer.create", "acme", {"email": "a@example.com"}),
                        client.command("payment.create", "nobody", card),
                    ),
                    strict=True,
                )
            )
        yield worker.base_url, outcomes


async def _get(base_url: str, path: str, *, token: bool = True) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            base_url + path, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_real_worker_answers_as_the_openapi_document_says(
    served: tuple[str, dict[str, Any]], openapi: dict[str, Any]
) -> None:
    base_url, outcomes = served
    paid = outcomes["paid"].get_data()["entity_id"]
    checks = [
        ("/healthz", 200, False),
        ("/readyz", 200, False),
        ("/v1/stats", 200, True),
        ("/v1/stats", 401, False),
        (f"/v1/tenants/acme/payments/{paid}", 200, True),
        ("/v1/tenants/acme/payments/nope", 404, True),
        ("/v1/tenants/acme/widgets/nope", 404, True),
        (f"/v1/tenants/acme/payments/{paid}", 401, False),
        (f"/v1/tenants/acme/commands/{outcomes['paid'].get_extension('causationid')}", 200, True),
        ("/v1/tenants/acme/commands/nope", 404, True),
    ]
    for path, status, token in checks:
        got, body = await _get(base_url, path, token=token)
        assert got == status, (path, got, body)
        template = "/v1/tenants/{tenant}/{kind}/{entity_id}" if "/tenants/" in path else path
        validator(openapi, response_schema(template, status)).validate(body)
    _, stats = await _get(base_url, "/v1/stats")
    # The checks saw the parts that are optional or nullable filled in.
    assert stats["activity"]["recent"] and stats["summaries"]["acme"]
    assert {e["reason"] for e in stats["activity"]["recent"]} >= {None, "unknown_tenant"}


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_real_workers_outcomes_match_their_asyncapi_payloads(
    served: tuple[str, dict[str, Any]], asyncapi: dict[str, Any]
) -> None:
    _, outcomes = served
    seen = set()
    for event in outcomes.values():
        outcome = event.get_type().removeprefix("com.paystream.")
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {"payment.succeeded", "payment.failed", "customer.created", "command.rejected"}


@pytest.mark.asyncio
async def test_every_subscription_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each subscription outcome the handlers emit (created, active and trialing;
    failed; updated: renewed, past due, to cancel at period end; canceled), with its
    invoices in `related`, against its AsyncAPI payload: the real worker's check above
    sees none of them (review h73u)."""
    day = 24 * 3600
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        await h.send("customer.create", t, {"customer_id": "c1"})
        for token, pm in (("pm_card_visa", "m1"), ("pm_card_chargeCustomerFail", "m2")):
            await h.send(
                "payment_method.attach", t,
                {"customer_id": "c1", "token": token, "payment_method_id": pm},
            )  # fmt: skip
        plan = {"customer_id": "c1", "amount": 900, "currency": "EUR", "interval": "month"}
        for sid, pm, trial in (("s1", "m1", {}), ("s2", "m2", {}), ("s3", "m2", {"trial_days": 1})):
            body = {**plan, "subscription_id": sid, "payment_method_id": pm, **trial}
            outs.append(await h.send("subscription.create", t, body))
        gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
        assert isinstance(gateway, SimulatorGateway)
        await gateway.advance_clock(32 * day)
        outs.append(await h.send("subscription.refresh", t, {"subscription_id": "s1"}))
        outs.append(await h.send("subscription.refresh", t, {"subscription_id": "s3"}))
        outs.append(
            await h.send("subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True})
        )
        outs.append(await h.send("subscription.cancel", t, {"subscription_id": "s3"}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {
        "subscription.created",
        "subscription.failed",
        "subscription.updated",
        "subscription.canceled",
    }, seen
    assert any(r["entity_type"] == "invoice" for e in outs for r in e.get_data()["related"])


@pytest.mark.asyncio
async def test_every_payout_and_balance_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each payout outcome (created; updated; paid; failed; canceled), the balance read
    and the balance_insufficient rejection, against their AsyncAPI payloads."""
    day = 24 * 3600
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        closed = h.add_tenant(gateway_options={"payout_destination": "000111111113"})
        for tenant in (t, closed):
            await h.send(
                "payment.create", tenant,
                {"amount": 5000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
            )  # fmt: skip
            gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
            assert isinstance(gateway, SimulatorGateway)
            await gateway.advance_clock(2 * day)
        outs.append(await h.send("balance.retrieve", t, {}))
        for tenant, pid in ((t, "po1"), (t, "po2"), (closed, "po3")):
            body = {"payout_id": pid, "amount": 1000, "currency": "EUR", "metadata": {"k": "v"}}
            outs.append(await h.send("payout.create", tenant, body))
        outs.append(await h.send("payout.cancel", t, {"payout_id": "po2"}))
        outs.append(await h.send("payout.refresh", t, {"payout_id": "po1"}))
        outs.append(await h.send("payout.create", t, {"amount": 10**6, "currency": "EUR"}))
        for tenant in (t, closed):
            gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
            assert isinstance(gateway, SimulatorGateway)
            await gateway.advance_clock(2 * day)
        outs.append(await h.send("payout.refresh", t, {"payout_id": "po1"}))
        outs.append(await h.send("payout.refresh", closed, {"payout_id": "po3"}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {
        "balance.retrieved",
        "payout.created",
        "payout.canceled",
        "payout.updated",
        "payout.paid",
        "payout.failed",
        "command.rejected",
    }, seen
    assert any(e.get_data().get("reason") == "balance_insufficient" for e in outs)


@pytest.mark.asyncio
async def test_every_tax_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each tax outcome (a rate created and archived; tax.calculated) and the taxed
    payments' and subscription's outcomes carrying `amount_tax` / `tax_rate_ids` and an
    invoice's subtotal, tax and total (a payment succeeded, declined, authorized,
    captured in part and canceled), against their AsyncAPI payloads (review h74t: the
    payouts' were validated from a real harness, tax's only by the SDK e2e, on success)."""
    vat = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        for rid in ("vat", "old"):
            outs.append(await h.send("tax_rate.create", t, {**vat, "tax_rate_id": rid}))
        calc = await h.send(
            "tax.calculate", t,
            {"currency": "GBP", "line_items": [{"amount": 1000, "reference": "l1"}],
             "tax_rate_ids": ["vat"]},
        )  # fmt: skip
        outs.append(calc)
        body = {
            "amount": 1200,
            "currency": "GBP",
            "tax_calculation_id": calc.get_data()["entity_id"],
        }
        for token in ("pm_card_visa", "pm_card_chargeDeclined"):
            outs.append(await h.send("payment.create", t, {**body, "payment_method_token": token}))
        manual = {**body, "payment_method_token": "pm_card_visa", "capture": "manual"}
        for pid in ("p_part", "p_cancel"):
            outs.append(await h.send("payment.create", t, {**manual, "payment_id": pid}))
        outs.append(await h.send("payment.capture", t, {"payment_id": "p_part", "amount": 600}))
        outs.append(await h.send("payment.cancel", t, {"payment_id": "p_cancel"}))
        await h.send("customer.create", t, {"customer_id": "c1"})
        await h.send(
            "payment_method.attach", t,
            {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
        )  # fmt: skip
        outs.append(
            await h.send(
                "subscription.create",
                t,
                {
                    "customer_id": "c1",
                    "payment_method_id": "m1",
                    "amount": 1000,
                    "currency": "GBP",
                    "interval": "month",
                    "tax_rate_ids": ["vat"],
                },
            )
        )
        outs.append(await h.send("tax_rate.archive", t, {"tax_rate_id": "old"}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        assert outcome != "command.rejected", event.get_data()
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {
        "tax_rate.created",
        "tax.calculated",
        "tax_rate.archived",
        "payment.succeeded",
        "payment.failed",
        "payment.authorized",
        "payment.canceled",
        "subscription.created",
    }, seen
    taxes = [e.get_data()["object"].get("amount_tax") for e in outs[3:9]]
    assert taxes == [200, 0, 200, 200, 100, 0], taxes  # (declined, canceled: none collected)
    [invoice] = [r for r in outs[9].get_data()["related"] if r["entity_type"] == "invoice"]
    assert (invoice["object"]["subtotal"], invoice["object"]["tax"]) == (1000, 200), invoice


@pytest.mark.asyncio
async def test_every_connected_account_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each connected account outcome (created; an onboarding link, first answered and
    then replayed without its URL; updated: enabled, restricted, rejected), against its
    AsyncAPI payload."""
    link = {"refresh_url": "https://p.example/reauth", "return_url": "https://p.example/done"}
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        for tag in ("enabled", "restricted", "rejected"):
            body = {
                "connected_account_id": tag,
                "country": "US",
                "email": f"shop+{tag}@example.com",
                "business_type": "individual",
                "capabilities": ["transfers"],
                "metadata": {"k": "v"},
            }
            outs.append(await h.send("connected_account.create", t, body))
            event = build_command(
                "connected_account.onboarding_link", t, {"connected_account_id": tag, **link}
            )
            for _ in range(2):  # (the second: a replay, without the URL)
                _, out = await h.send_event(event)
                assert out is not None
                outs.append(out)
            outs.append(await h.send("connected_account.refresh", t, {"connected_account_id": tag}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        assert outcome != "command.rejected", event.get_data()
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {
        "connected_account.created",
        "connected_account.onboarding_link_created",
        "connected_account.updated",
    }, seen
    urls = [e.get_data()["url"] for e in outs if e.get_type().endswith("link_created")]
    assert [u is None for u in urls] == [False, True] * 3
    statuses = {e.get_data()["object"]["status"] for e in outs if e.get_type().endswith("updated")}
    assert statuses == {"enabled", "restricted", "rejected"}


@pytest.mark.asyncio
async def test_every_transfer_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each transfer outcome (created, from a payment and from the balance; reversed in
    part and in full), against its AsyncAPI payload: the payment related with its
    ``amount_transferred``."""
    link = {"refresh_url": "https://p.example/reauth", "return_url": "https://p.example/done"}
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        body = {"connected_account_id": "ca", "country": "US", "email": "s+enabled@example.com"}
        await h.send("connected_account.create", t, body)
        await h.send("connected_account.onboarding_link", t, {"connected_account_id": "ca", **link})
        await h.send("connected_account.refresh", t, {"connected_account_id": "ca"})
        pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
               "payment_method_token": "pm_card_visa"}  # fmt: skip
        await h.send("payment.create", t, pay)
        made = {"connected_account_id": "ca", "amount": 3000, "currency": "USD",
                "payment_id": "p1", "transfer_id": "tr1", "transfer_group": "o1",
                "description": "share", "metadata": {"k": "v"}}  # fmt: skip
        outs.append(await h.send("transfer.create", t, made))
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1", "amount": 1000}))
        outs.append(await h.send("transfer.reverse", t, {"transfer_id": "tr1"}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        assert outcome != "command.rejected", event.get_data()
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {"transfer.created", "transfer.reversed"}, seen
    statuses = [e.get_data()["object"]["status"] for e in outs]
    assert statuses == ["created", "partially_reversed", "reversed"]
    related = [e.get_data()["related"][0]["object"]["amount_transferred"] for e in outs]
    assert related == [3000, 2000, 0]


@pytest.mark.asyncio
async def test_every_invoice_outcome_matches_its_published_payload(
    redis_url: str, asyncapi: dict[str, Any]
) -> None:
    """Each one-off invoice outcome (created, taxed and not; finalized; paid;
    payment_failed; voided; updated), against its AsyncAPI payload."""
    vat = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}
    lines = [{"description": "Hours", "amount": 1500, "quantity": 2}]
    outs = []
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        await h.send("tax_rate.create", t, {**vat, "tax_rate_id": "vat"})
        await h.send("customer.create", t, {"customer_id": "c1"})
        for token, pm in (("pm_card_visa", "m1"), ("pm_card_chargeCustomerFail", "m2")):
            await h.send(
                "payment_method.attach", t,
                {"customer_id": "c1", "token": token, "payment_method_id": pm},
            )  # fmt: skip
        base = {"customer_id": "c1", "currency": "GBP", "line_items": lines}
        for iid, pm, extra in (("i1", "m1", {"tax_rate_ids": ["vat"]}), ("i2", "m2", {})):
            body = {**base, "invoice_id": iid, "payment_method_id": pm, "metadata": {"k": "v"}}
            outs.append(await h.send("invoice.create", t, {**body, **extra}))
            change = {"invoice_id": iid, "line_items": [*lines, *lines], "metadata": {"k": ""}}
            outs.append(await h.send("invoice.update", t, change))
            outs.append(await h.send("invoice.finalize", t, {"invoice_id": iid}))
            outs.append(await h.send("invoice.pay", t, {"invoice_id": iid}))
        outs.append(await h.send("invoice.refresh", t, {"invoice_id": "i2"}))
        outs.append(await h.send("invoice.mark_uncollectible", t, {"invoice_id": "i2"}))
        outs.append(await h.send("invoice.void", t, {"invoice_id": "i2"}))
    seen = set()
    for event in outs:
        outcome = event.get_type().removeprefix("com.paystream.")
        assert outcome != "command.rejected", event.get_data()
        seen.add(outcome)
        pointer = f"/components/messages/outcome.{outcome}/payload"
        validator(asyncapi, pointer, draft7=True).validate(event.get_data())
    assert seen == {
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.updated",
        "invoice.marked_uncollectible",
        "invoice.voided",
    }, seen
