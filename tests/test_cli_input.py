"""The CLI refuses bad operator input with a usage error, never a traceback, and never
prints a password: no broker needed (these fail before contacting one)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from paystream.cli import _without_password, cli

BROKER = {"KAFKA_BROKER_URL": "kafka://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenants", "add", "Acme"], "tenant ids match"),
        (["tenants", "add", "acme", "--option", "fail_rate"], "is not key=value"),
        (["tenants", "add", "acme", "--option", "=1"], "is not key=value"),
        (["send", "customer.create", "--tenant", "acme", "--data", "[1]"], "JSON object"),
        (["send", "customer.create", "--tenant", "acme", "--data", "{"], "is not JSON"),
        (["send", "customer.create", "--tenant", "acme", "--data", '{"a": NaN}'], "NaN"),
        (
            ["send", "customer.create", "--tenant", "acme", "--data", '{"a": -Infinity}'],
            "-Infinity",
        ),
        (["send", "customer.create", "--tenant", "acme\udcff"], "not valid Unicode"),
        (["send", "customer.create", "--tenant", "a", "--data", '{"x": 1e999}'], "out of range"),
        (
            ["send", "customer.create", "--tenant", "a", "--data", '{"x": %s}' % ("1" * 5000)],
            "cannot be read",
        ),
        (
            ["tenants", "add", "acme", "--name", "Soci\udce9t\udce9"],
            "Invalid value for --name: not valid Unicode",
        ),
        (["tenants", "add", "acme", "--connected-account", "acct_\udcff"], "not valid Unicode"),
        (["tenants", "add", "acme", "--option", 'latency_ms="\udcff"'], "not valid Unicode"),
        (["send", "customer.create", "--tenant", ""], "tenant id is empty"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("postgresql+asyncpg://owner:hunter2@db:5432/paystream",
         "postgresql+asyncpg://owner:***@db:5432/paystream"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("kafka://k1:9092;k2:9092", "kafka://k1:9092;k2:9092"),
        (4, 4),
    ],
)  # fmt: skip
def test_config_masks_passwords_in_urls(value: object, shown: object) -> None:
    assert _without_password(value) == shown


def test_config_never_prints_a_database_password() -> None:
    env = {**BROKER, "DATABASE_URL": "postgresql+asyncpg://owner:hunter2@db/paystream"}
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "owner:***@db" in result.output


@pytest.mark.parametrize("args", [["tenants", "list"], ["dlq", "list"]])
def test_an_unreachable_broker_is_an_error_message_not_a_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 1, result.output
    assert "Error: KafkaConnectionError" in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit
