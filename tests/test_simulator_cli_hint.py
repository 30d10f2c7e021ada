"""`paystream simulator authenticate` with a wrong id names the outcome field that holds
the provider payment id (review h58n: it named data.provider_payment_id; outcomes carry it at
data.object.provider_payment_id)."""

import asyncio

import click
import pytest

from paystream import simulator_cli
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import Settings


def test_not_found_hint_names_the_outcome_field_that_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def not_found(self, provider_payment_id, succeed):
        raise GatewayError(ErrorCode.NOT_FOUND, "no such payment", provider="simulator")

    monkeypatch.setattr(SimulatorGateway, "complete_authentication", not_found)
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(click.ClickException) as exc:
        asyncio.run(simulator_cli._authenticate(settings, "acme", "pay_x", passed=True))
    msg = exc.value.message
    # an outcome's data is {command_id, entity_id, entity_type, object, tenant_id, version}
    assert "data.object.provider_payment_id" in msg, msg


def _refused(monkeypatch: pytest.MonkeyPatch, given: str) -> str:
    async def not_found(self, provider_payment_id, succeed):
        raise GatewayError(ErrorCode.NOT_FOUND, "no such payment", provider="simulator")

    monkeypatch.setattr(SimulatorGateway, "complete_authentication", not_found)
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(click.ClickException) as exc:
        asyncio.run(simulator_cli._authenticate(settings, "globex", given, passed=True))
    return exc.value.message


def test_a_provider_id_not_found_is_not_blamed_on_a_pay_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A provider id under the wrong tenant was told it was paystream's pay_… id (review
    h67a): the hint named a mistake not made, and not the one made."""
    msg = _refused(monkeypatch, "pi_btzkdfkucqcgpzgfsmuqranb")
    assert "not paystream's pay_" not in msg, msg
    assert "tenant" in msg and "another tenant" in msg, msg


def test_a_pay_id_still_gets_the_pay_id_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _refused(monkeypatch, "pay_zauiccvmsiawlmuzqgtsxnyp")
    assert "data.object.provider_payment_id" in msg, msg
