"""What a client generated from the interface documents is told against what paystream
takes and answers (review h59c): every valid command of every type passes the OpenAPI
request schemas, and the ingress's own refusals are the documented `Error`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.settings import load_settings
from paystream.streams.commands import COMMANDS
from paystream.web.ingress import _command_record, _Refused
from paystream.web.ingress_server import IngressServer
from tests.test_docs import ROOT, published, response_schema, validator

# One valid command per type: several are valid data of more than one type
# (`{"payment_id": …}` is a capture's, a cancel's, a refresh's and a refund's).
VALID: dict[str, dict[str, Any]] = {
    "customer.create": {"email": "a@example.com"},
    "customer.update": {"customer_id": "c1", "name": "A"},
    "customer.delete": {"customer_id": "c1"},
    "customer.erase": {"customer_id": "c1"},
    "customer.export": {"customer_id": "c1"},
    "payment_method.attach": {"customer_id": "c1", "token": "pm_card_visa"},
    "payment_method.detach": {"payment_method_id": "pm1"},
    "payment.create": {"amount": 100, "currency": "USD", "payment_method_id": "pm1"},
    "payment.capture": {"payment_id": "p1"},
    "payment.cancel": {"payment_id": "p1"},
    "payment.refresh": {"payment_id": "p1"},
    "refund.create": {"payment_id": "p1"},
    "refund.refresh": {"refund_id": "r1"},
    "dispute.submit_evidence": {"dispute_id": "d1", "evidence": {"a": "b"}},
    "dispute.accept": {"dispute_id": "d1"},
    "subscription.create": {
        "customer_id": "c1",
        "payment_method_id": "pm1",
        "amount": 900,
        "currency": "EUR",
        "interval": "month",
    },
    "subscription.cancel": {"subscription_id": "s1", "at_period_end": True},
    "subscription.update": {"subscription_id": "s1", "amount": 1200, "payment_method_id": "pm2"},
    "subscription.refresh": {"subscription_id": "s1"},
    "subscription.pause": {"subscription_id": "s1", "resumes_at": "2027-03-01T00:00:00Z"},
    "subscription.resume": {"subscription_id": "s1"},
    "payout.create": {"amount": 5000, "currency": "EUR", "statement_descriptor": "ACME"},
    "invoice.create": {
        "customer_id": "cus_1",
        "payment_method_id": "pm_1",
        "currency": "EUR",
        "line_items": [{"description": "Hours", "amount": 1500, "quantity": 2}],
        "tax_rate_ids": ["vat"],
        "metadata": {"order": "o-1"},
    },
    "invoice.update": {
        "invoice_id": "in_1",
        "line_items": [{"description": "Hours", "amount": 1500, "quantity": 2}],
        "description": "March",
        "days_until_due": 14,
        "metadata": {"po": "p-9"},
    },
    "invoice.finalize": {"invoice_id": "in_1"},
    "invoice.pay": {"invoice_id": "in_1", "payment_method_id": "pm_2"},
    "invoice.void": {"invoice_id": "in_1"},
    "invoice.mark_uncollectible": {"invoice_id": "in_1"},
    "invoice.refresh": {"invoice_id": "in_1"},
    "payout.cancel": {"payout_id": "po1"},
    "payout.refresh": {"payout_id": "po1"},
    "balance.retrieve": {},
    "tax_rate.create": {
        "display_name": "VAT",
        "percentage": "20",
        "inclusive": False,
        "country": "GB",
        "tax_type": "vat",
    },
    "tax_rate.archive": {"tax_rate_id": "vat"},
    "tax.calculate": {
        "currency": "GBP",
        "line_items": [{"amount": 1000, "reference": "sku-1", "quantity": 2}],
        "tax_rate_ids": ["vat"],
    },
    "connected_account.create": {
        "country": "FR",
        "email": "owner@bakery.example",
        "business_type": "company",
        "capabilities": ["card_payments", "transfers"],
    },
    "connected_account.onboarding_link": {
        "connected_account_id": "bakery",
        "refresh_url": "https://platform.example/reauth",
        "return_url": "https://platform.example/done",
    },
    "connected_account.refresh": {"connected_account_id": "bakery"},
    "transfer.create": {
        "connected_account_id": "bakery",
        "amount": 7000,
        "currency": "EUR",
        "payment_id": "pay_1",
        "transfer_group": "order-1",
    },
    "transfer.reverse": {"transfer_id": "tr_1", "amount": 2000},
    "transfer.refresh": {"transfer_id": "tr_1"},
}
BODY = "/paths/~1v1~1commands/post/requestBody/content/application~1json/schema"


def _structured(kind: str, data: dict[str, Any], **attributes: str) -> dict[str, Any]:
    event = build_command(kind, "acme", data, command_id="c-1")
    body = {k: v for k, v in event.get_attributes().items() if k != "partitionkey"}
    body["time"] = body["time"].isoformat()
    return {**body, **attributes, "data": data}


def test_every_command_type_has_a_sample() -> None:
    assert set(VALID) == set(COMMANDS)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_command_passes_the_request_schemas(kind: str) -> None:
    COMMANDS[kind].model_validate(VALID[kind])  # the worker takes it
    validator(published("openapi"), "/components/schemas/Command").validate(
        _structured(kind, VALID[kind])
    )
    validator(published("openapi"), BODY).validate(VALID[kind])  # binary mode's body


def test_a_command_s_data_is_checked_against_its_own_type() -> None:
    """The type picks the schema: a capture's data is no payment.create."""
    schema = validator(published("openapi"), "/components/schemas/Command")
    wrong = _structured("payment.capture", VALID["payment.capture"])
    wrong["type"] = "com.paystream.command.payment.create"
    assert not schema.is_valid(wrong)
    assert not schema.is_valid({**wrong, "data": {"amount": 1.5, "currency": "USD"}})


@pytest.mark.parametrize(
    "media",
    ["application/json", "application/json; charset=utf-8", "text/json", "Application/Vnd.A+JSON"],
)
def test_a_json_media_type_the_ingress_takes_passes_the_command_schema(media: str) -> None:
    body = _structured("payment.create", VALID["payment.create"], datacontenttype=media)
    attributes = {k: v for k, v in body.items() if k not in ("data", "time")}
    event = CloudEvent(attributes, body["data"])
    _command_record(event, load_settings(kafka_broker_url="kafka://127.0.0.1:9"))  # taken
    validator(published("openapi"), "/components/schemas/Command").validate(body)


@pytest.mark.parametrize(
    "media",
    [
        "text/plain",
        " application/json",
        "application/json ",
        "image/x+json",
        "A/B+JSON",
        "application/cloudevents+json",
        "Application/CloudEvents-Batch+JSON",
    ],
)
def test_a_media_type_the_ingress_refuses_fails_the_command_schema(media: str) -> None:
    body = _structured("payment.create", VALID["payment.create"], datacontenttype=media)
    attributes = {k: v for k, v in body.items() if k not in ("data", "time")}
    with pytest.raises(_Refused):
        _command_record(CloudEvent(attributes, body["data"]), load_settings())
    assert not validator(published("openapi"), "/components/schemas/Command").is_valid(body)


@pytest.mark.parametrize(("host", "status"), [("bad host", 400), ("evil.example.com", 403)])
async def test_the_ingress_metrics_refusals_are_documented_errors(host: str, status: int) -> None:
    server = IngressServer(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    answer = await server._metrics(make_mocked_request("GET", "/metrics", headers={"Host": host}))
    assert answer.status == status
    body = json.loads(answer.body)
    validator(published("openapi"), response_schema("/metrics", status)).validate(body)


def test_the_readme_names_every_command_type() -> None:
    found = re.search(
        r"^Supported: (.*?)\.\n", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL
    )
    assert found, "the README's Supported: line moved"
    listed = {
        f"{domain}.{verb}"
        for domain, verbs in re.findall(r"`([a-z_]+)\.([a-z_|]+)`", found.group(1))
        for verb in verbs.split("|")
    }
    assert listed == set(COMMANDS)
