"""A new user's mistakes on a dev stack, following the README's "From the shell" (review h73c).

Each failed on be8b6d5."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream import dlq
from paystream.cli import dlq as cli_module

_ENV = (
    "KAFKA_BROKER_URL",
    "DATABASE_URL",
    "REDIS_URL",
    "PAYSTREAM_MASTER_KEY",
    "PAYSTREAM_INGRESS_TOKEN",
    "PAYSTREAM_INGRESS_KEY",
)


def test_a_replay_from_a_shell_without_the_export_line_names_the_export_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 1. A shell without `paystream dev`'s export line (no KAFKA_BROKER_URL, no
    master key, no REDIS_URL): every other command says to paste the export line;
    `dlq replay` instead tells the user to pass --without-master-key, then --no-lease,
    both wrong for the dev stack's workers (they have a master key and Redis)."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    calls: list[Any] = []

    async def replayed(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        calls.append(kwargs)
        return dlq.ReplayResult(started_ms=1, complete=True)

    monkeypatch.setattr(dlq, "replay", replayed)
    result = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert result.exit_code != 0 and calls == []
    assert "KAFKA_BROKER_URL" in result.output, result.output
    assert "--without-master-key" not in result.output, result.output


def test_send_refuses_an_ingress_key_pasted_as_the_command_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 2. `paystream send --id psk_…` put the key on the commands topic, the
    outcome (causationid), the idempotency record (`/v1/tenants/acme/commands/<key>`)
    and the ledger (`created_by`), all kept for good; the tenants and api-key commands
    refuse a key given as an id or label ("that is a key"), and `send` already refuses
    a card number as the id."""
    from paystream import cli as root

    monkeypatch.setenv("KAFKA_BROKER_URL", "kafka://127.0.0.1:1")  # never reached
    key = "psk_a6a2340c_" + "A" * 43
    result = CliRunner().invoke(
        root.cli,
        [
            "send",
            "payment.create",
            "--tenant",
            "acme",
            "--id",
            key,
            "--timeout",
            "1",
            "--data",
            '{"amount": 1999, "currency": "USD", "payment_method_token": "pm_card_visa"}',
        ],
    )
    assert result.exit_code == 2, result.output
    assert "that is a key" in result.output and key not in result.output, result.output


@pytest.mark.parametrize(
    "pasted",
    [
        "psk_a6a2340c_" + "A" * 43,  # the api key just created, pasted for the pi_ id
        "4242424242424242",  # a card number
        "3H/Pmmj/Cz+lwjn2Wa8VjSdomVTxLjyNDbNQx4SycRM=",  # the platform token
    ],
)
def test_simulator_authenticate_does_not_repeat_a_pasted_secret(
    monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    """Finding 3. `paystream simulator authenticate acme <what was pasted>` repeats
    the value in its error (to the terminal, scrollback, CI logs), and for anything not
    `pi_…` blames "paystream's pay_… id", a mistake not made."""
    import asyncio

    import click

    from paystream import simulator_cli
    from paystream.gateways.errors import ErrorCode, GatewayError
    from paystream.gateways.simulator import SimulatorGateway
    from paystream.settings import Settings

    async def not_found(self: Any, provider_payment_id: str, succeed: bool) -> None:
        raise GatewayError(ErrorCode.NOT_FOUND, "no such payment", provider="simulator")

    monkeypatch.setattr(SimulatorGateway, "complete_authentication", not_found)
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(click.ClickException) as exc:
        asyncio.run(simulator_cli._authenticate(settings, "acme", pasted, passed=True))
    msg = exc.value.message
    assert pasted not in msg, msg
    assert "pay_… id" not in msg, msg
