"""A card number typed where a tenant id goes was refused unechoed by `tenants add`, `send`
and `dlq list --tenant`, but `tenants suspend`, `activate`, `limits` and `api-key
list|create|revoke` repeated it on the terminal (review h68i). So did an ingress key
pasted there (review h71k), or given as a tenant's name (kept in the registry)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream.cli import cli
from paystream.tenancy.ingress_keys import new_key

PAN = "4242424242424242"
KEY = new_key()[1]
SECRET = KEY.split("_", 2)[2]
BROKER = {"KAFKA_BROKER_URL": "kafka://127.0.0.1:9"}


@pytest.mark.parametrize(
    "args",
    [
        ["tenants", "suspend", PAN],
        ["tenants", "activate", PAN],
        ["tenants", "limits", PAN],
        ["tenants", "api-key", "list", PAN],
        ["tenants", "api-key", "create", PAN],
        ["tenants", "api-key", "revoke", PAN, "k1"],
    ],
)
@pytest.mark.parametrize(("given", "shown"), [(PAN, "4242"), (KEY, SECRET)], ids=["pan", "key"])
def test_a_card_number_given_as_tenant_id_is_not_repeated(
    args: list[str], given: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def not_registered(settings: Any, tenant_id: str) -> None:
        return None  # (the registry as read: no such tenant)

    monkeypatch.setattr("paystream.tenancy.registry.registered_tenant", not_registered)
    result = CliRunner().invoke(cli, [given if a == PAN else a for a in args], env=BROKER)
    assert result.exit_code != 0, result.output
    assert shown not in result.output, result.output


@pytest.mark.parametrize(
    "args", [["tenants", "add", KEY], ["tenants", "add", "acme", "--name", KEY]]
)
def test_a_key_is_not_taken_as_a_tenant_id_or_name(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 2 and SECRET not in result.output, result.output
