"""A card number typed where a tenant id goes was refused unechoed by `tenants add`, `send`
and `dlq list --tenant`, but `tenants suspend`, `activate`, `limits` and `api-key
list|create|revoke` repeated it on the terminal (review h68i)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream.cli import cli

PAN = "4242424242424242"
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
def test_a_card_number_given_as_tenant_id_is_not_repeated(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def not_registered(settings: Any, tenant_id: str) -> None:
        return None  # (the registry as read: no such tenant)

    monkeypatch.setattr("paystream.tenancy.registry.registered_tenant", not_registered)
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code != 0, result.output
    assert "4242" not in result.output, result.output
