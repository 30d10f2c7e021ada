"""The CLI refuses bad operator input with a usage error, never a traceback, and never
prints a password: no broker needed (these fail before contacting one)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from paystream.cli import cli
from paystream.cli.serve import _without_password

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
        # The number's text is not repeated: a card number's digits (review finding).
        (
            ["send", "customer.create", "--tenant", "a", "--data", '{"x": 4242424242424242e999}'],
            "--data holds a number out of range",
        ),
        # A login in the URL: refused, not repeated (aiohttp's traceback before).
        (
            ["send", "customer.create", "--tenant", "a", "--http", "http://u:pw@127.0.0.1:9"],
            "holds a login",
        ),
        (
            ["send", "customer.create", "--tenant", "a", "--data", '{"x": %s}' % ("1" * 5000)],
            "cannot be read",
        ),
        (
            ["tenants", "add", "acme", "--name", "Soci\udce9t\udce9"],
            "Invalid value for --name: not valid Unicode",
        ),
        (["tenants", "add", "acme", "--connected-account", "acct_\udcff"], "not valid Unicode"),
        (["dev", "--web-port", "0"], "0 is not in the range 1<=x<=65535"),
        (
            ["tenants", "add", "acme", "--gateway", "stripe", "--connected-account", "acme-eu"],
            "a Stripe connected account is an account id (acct_...)",
        ),
        (
            ["tenants", "add", "acme", "--connected-account", "sk_live_pasted"],
            "the connected account looks like a secret key",
        ),
        # an undecodable byte in a secret's name (its value is never shown either way)
        (["tenants", "add", "acme", "--secret", "api_key\udcff"], "not valid Unicode"),
        (["tenants", "add", "acme", "--option", 'latency_ms="\udcff"'], "not valid Unicode"),
        (["send", "customer.create", "--tenant", ""], "tenant id is empty"),
        # What every worker refuses unrun, refused as the HTTP ingress refuses it: exit 2,
        # the fields named (a new user got a validation_error outcome and 0 over Kafka).
        (
            ["send", "payment.create", "--tenant", "acme", "--data", '{"amount": -5}'],
            "invalid payment.create data:\n  amount: Input should be greater than or equal to 1",
        ),
        (
            [
                "send",
                "payment.create",
                "--tenant",
                "acme",
                "--data",
                '{"amount": 5, "currency": "USD"}',
            ],
            # (the validator's words, without pydantic's "Value error, " before them)
            "invalid payment.create data:\n  (data): exactly one of payment_method_id or "
            "payment_method_token is required",
        ),
        (
            [
                "send",
                "tax.calculate",
                "--tenant",
                "acme",
                "--data",
                '{"currency": "USD", "line_items": [{"amount": 1, "reference": "a"}, '
                '{"amount": 2, "reference": "a"}]}',
            ],
            "  (data): each line item's reference is unique in the calculation\n",
        ),
        (
            ["send", "payment.charge", "--tenant", "acme"],
            # (quoted as typed, not with the prefix the client adds)
            "COMMAND_TYPE: 'payment.charge' is no paystream command; known: balance.retrieve, ",
        ),
        (["send", "customer.create", "--tenant", "Acme"], "--tenant: tenant ids match"),
        # Over the structured-mode limit: refused before connecting (it was exit 1, an
        # outage's status, after a connection; review finding).
        (
            [
                "send",
                "customer.create",
                "--tenant",
                "acme",
                "--structured",
                "--data",
                '{"metadata": {"k": "%s"}}' % ("x" * 70_000),
            ],
            "PAYSTREAM_COMMAND_MAX_BYTES",
        ),
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
        # A URL an operator mistyped is still masked (it was printed as it was).
        ("postgresql+asyncpg://owner:pg-pass@db:54 32/paystream",
         "postgresql+asyncpg://owner:***@db:54 32/paystream"),
        ("redis://cache:6379/0?password=s3cr3t", "redis://cache:6379/0?password=***"),
        ("redis://cache:6379/0?db=1", "redis://cache:6379/0?db=1"),
        # "/", "#" or "?" left unencoded in a password end the host part for a parser.
        ("postgresql+asyncpg://app:s3cr/et@db:5432/paystream",
         "postgresql+asyncpg://app:***@db:5432/paystream"),
        ("redis://:hunter#2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app:pa?ss@db/paystream", "postgresql://app:***@db/paystream"),
        ("postgresql://app@db/p?sslpassword=k3y&sslmode=require",
         "postgresql://app@db/p?sslpassword=***&sslmode=require"),
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


def test_config_names_a_mistyped_variable() -> None:
    """PAYSTREAM_WEB_TOKN (sic) would leave the views open while the operator believes
    them guarded: named as read by nothing. Secret references and real settings are not."""
    env = {
        **BROKER,
        "PAYSTREAM_WEB_TOKN": "t0ken",
        "PAYSTREAM_SECRET_API_KEY": "sk",
        "PAYSTREAM_LOG_LEVEL": "info",
    }
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert "PAYSTREAM_WEB_TOKN is not a paystream setting" in result.stderr
    assert "SECRET_API_KEY" not in result.stderr and "LOG_LEVEL" not in result.stderr
    assert "t0ken" not in result.output


@pytest.mark.parametrize("args", [["tenants", "list"], ["dlq", "list"]])
def test_an_unreachable_broker_is_an_error_message_not_a_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 1, result.output
    assert "Error: no Kafka broker answered at 127.0.0.1:9 (KAFKA_BROKER_URL)" in result.output
    assert "KafkaConnectionError" in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit


def test_send_gives_up_on_a_broker_that_never_answers_within_its_timeout() -> None:
    """A broker that takes connections and never answers held `send --timeout 1` for
    aiokafka's 40 s metadata wait; now the timeout covers connecting too, and says the
    command was not sent."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # connections complete in the kernel; nothing ever answers
        port = hung.getsockname()[1]
        started = time.monotonic()
        result = CliRunner().invoke(
            cli,
            ["send", "customer.create", "--tenant", "acme", "--id", "c-hung", "--timeout", "1"],
            env={"KAFKA_BROKER_URL": f"kafka://127.0.0.1:{port}"},
        )
        took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "no answer from the broker" in result.output and "c-hung was not sent" in result.output
    assert took < 15, f"took {took:.1f} s"


def test_send_refuses_a_timeout_that_is_not_positive() -> None:
    result = CliRunner().invoke(
        cli, ["send", "customer.create", "--tenant", "acme", "--timeout", "-5"], env=BROKER
    )
    assert result.exit_code == 2 and "--timeout" in result.output


def test_dev_on_a_port_in_use_says_so_before_starting_anything(tmp_path: object) -> None:
    """It started the broker, PostgreSQL and Redis, then the worker died on the port,
    ending in a 12-frame traceback; the cause was only in the worker's log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["dev", "--duration", "1", "--web-port", str(port)],
            env={"PAYSTREAM_DATA_DIR": str(tmp_path), "PAYSTREAM_WEB_HOST": "127.0.0.1"},
        )
    assert result.exit_code == 1, result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.output
    assert "starting embedded stack" not in result.output and "Traceback" not in result.output


def test_dev_on_an_ingress_port_in_use_names_the_option(tmp_path: object) -> None:
    """A second stack beside the first needs its own ingress port too (a new user
    following the README's second-stack line hit the first one's)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            web_port = free.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["dev", "--duration", "1", "--web-port", str(web_port), "--ingress-port", str(port)],
            env={
                "PAYSTREAM_DATA_DIR": str(tmp_path),
                "PAYSTREAM_WEB_HOST": "127.0.0.1",
                "PAYSTREAM_INGRESS_HOST": "127.0.0.1",
            },
        )
    assert result.exit_code == 1, result.output
    assert f"port {port} on 127.0.0.1 (the command ingress) is in use" in result.output
    assert "--ingress-port" in result.output and "starting embedded stack" not in result.output


def test_an_undecodable_secret_value_is_a_usage_error_that_never_shows_it() -> None:
    """`export PAYSTREAM_SECRET_API_KEY=$(cat key.bin)`: a usage error, not a traceback
    whose exception carries the secret (review finding)."""
    result = CliRunner().invoke(
        cli,
        ["tenants", "add", "acme", "--gateway", "stripe", "--secret", "api_key"],
        env={**BROKER, "PAYSTREAM_SECRET_API_KEY": "sk_live_secret\udcff"},
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert "not valid Unicode" in result.output and "sk_live_secret" not in result.output


@pytest.mark.parametrize("value", ["1" * 5000, "[" * 100_000], ids=["5000 digits", "deep"])
def test_an_option_json_cannot_read_is_a_usage_error(value: str) -> None:
    result = CliRunner().invoke(
        cli, ["tenants", "add", "acme", "--option", f"seed={value}"], env=BROKER
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert "cannot be read" in result.output


@pytest.mark.parametrize("timeout", ["nan", "inf"])
def test_a_timeout_that_is_no_finite_number_is_a_usage_error(timeout: str) -> None:
    """nan passed FloatRange (every comparison with it is false): the send timed out at
    once, blaming the broker."""
    args = ["send", "customer.create", "--tenant", "acme", "--timeout", timeout]
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 2 and "--timeout" in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["tenants", "add", "acme", "--secret", "sk_live_51hqlyjwdarjtt1zdp7dcxyz"],
        ["tenants", "add", "acme", "--gateway", "stripe", "--secret", "sk_test_abc"],
        ["tenants", "add", "acme", "--gateway", "simulator", "--secret", "api_key"],
    ],
    ids=["any-gateway", "stripe", "simulator-reads-none"],
)
def test_a_secret_name_the_gateway_does_not_read_is_refused_unrepeated(args: list[str]) -> None:
    """`--secret sk_live_...` (a key typed where its name goes) was stored in plain text
    as the name, and printed by `tenants add` and `tenants list` (review finding)."""
    result = CliRunner().invoke(cli, args, env=BROKER)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "does not read" in result.output
    assert "sk_" not in result.output and "value of secret" not in result.output


def test_a_credential_in_the_broker_url_is_refused_unrepeated() -> None:
    """aiokafka took "user:password@host" for a host name, and its connection errors
    (`paystream doctor` printed them) showed the password (review finding)."""
    result = CliRunner().invoke(
        cli, ["config"], env={"KAFKA_BROKER_URL": "kafka://svc:Sup3rSecretPart@127.0.0.1:9"}
    )
    assert result.exit_code != 0 and "takes no credentials" in result.output
    assert "Sup3rSecretPart" not in result.output


@pytest.mark.parametrize("password", ["hQ7vZk2R9x/mB4tLpN3s", "hQ7vZk2R9x#mB4tLpN3s"])
def test_a_url_whose_password_hides_its_port_is_refused_masked(password: str) -> None:
    """The driver's parse error quoted most of the password ("Port could not be cast to
    integer value as '...'")."""
    url = f"redis://default:{password}@127.0.0.1:6379/0"
    result = CliRunner().invoke(cli, ["config"], env={"REDIS_URL": url})
    assert result.exit_code != 0 and "percent-encode" in result.output
    assert "hQ7vZk2R9x" not in result.output and "mB4tLpN3s" not in result.output
    # (the validator's words, without pydantic's "Value error, " before them)
    assert "REDIS_URL: REDIS_URL cannot be parsed: percent-encode" in result.output


def test_a_database_password_sqlalchemy_reads_is_accepted() -> None:
    """The ledger connects with SQLAlchemy, whose parser takes "/", "?" and "#" in a
    password (a raw base64 one): refused by a stricter parser, it broke start-up."""
    from paystream.settings import load_settings

    url = "postgresql://owner:ab/cd+ef==@db.internal:5432/x"
    assert load_settings(database_url=url).database_url == url


def test_a_refused_broker_url_is_not_repeated() -> None:
    result = CliRunner().invoke(
        cli, ["config"], env={"KAFKA_BROKER_URL": "kafka://b1:9092?sasl_plain_password=hunter2"}
    )
    assert result.exit_code != 0 and "hunter2" not in result.output


def test_a_database_url_whose_password_moves_the_host_into_the_path_is_refused() -> None:
    """`u:p@ss/word@db`: SQLAlchemy reads host "ss" and database "word@db:5432/ledger"."""
    result = CliRunner().invoke(
        cli, ["config"], env={"DATABASE_URL": "postgresql://u:p@ss/word@db:5432/ledger"}
    )
    assert result.exit_code != 0 and "percent-encode" in result.output
    assert "ss/word" not in result.output


def test_a_database_url_with_a_second_at_sign_is_refused() -> None:
    """SQLAlchemy ends the password at the first "@": `app:Tr0ub@dor?Horse@db` read host
    "dor" (a piece of the password) and no database."""
    result = CliRunner().invoke(
        cli, ["config"], env={"DATABASE_URL": "postgresql+asyncpg://app:Tr0ub@dor?Horse@db:5432/x"}
    )
    assert result.exit_code != 0 and "percent-encode" in result.output
    assert "Tr0ub" not in result.output and "Horse" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://paystream:s3cret@db.internal:5432/paystream?application_name=ledger@eu-west-1",
        "postgresql://paystream@db.internal/paystream?sslcert=/home/svc@corp/client.crt",
    ],
)
def test_a_database_url_with_an_at_sign_in_a_query_value_is_accepted(url: str) -> None:
    from paystream.settings import load_settings

    assert load_settings(database_url=url).database_url == url


def test_dev_exports_are_quoted_and_never_show_a_configured_password() -> None:
    """The export line printed a configured DATABASE_URL's password, unquoted: a URL
    with "&" put half the line in the background (review finding)."""
    from paystream.cli.dev import _shell_values

    url = "postgresql+asyncpg://owner:S3cretPw9@db:5432/paystream?sslmode=require&x=1"
    shown = _shell_values(
        {"DATABASE_URL": url, "REDIS_URL": "redis://cache:6379/0", "X": "a b&c"},
        {"DATABASE_URL": url},
    )
    assert shown == {
        "DATABASE_URL": '"$DATABASE_URL"',
        "REDIS_URL": "redis://cache:6379/0",
        "X": "'a b&c'",
    }


def test_tenants_list_marks_a_tenant_whose_latest_record_is_unreadable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tenants list` hid a tenant whose only record this version cannot read, and showed
    one whose latest record it cannot read with its older data, unmarked (review
    finding); the other subcommands refuse such tenants."""
    import json

    from paystream.settings import load_settings
    from paystream.tenancy import registry as registry_mod
    from paystream.tenancy.mirror import RegistryMirror
    from paystream.tenancy.models import Tenant
    from paystream.tenancy.registry import tenant_record

    mirror = RegistryMirror(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    mirror.apply(b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="acme"))).encode())
    mirror.apply(b'"acme"', b'{"tenant_id": "acme", "field_from_a_newer_version": 1}')
    mirror.apply(b'"beta"', b'{"tenant_id": "beta", "field_from_a_newer_version": 1}')
    mirror.apply(b'"gamma"', json.dumps(tenant_record(Tenant(tenant_id="gamma"))).encode())

    async def read(*_: object, **__: object) -> RegistryMirror:
        return mirror

    monkeypatch.setattr(registry_mod, "read_registry", read)
    result = CliRunner().invoke(cli, ["tenants", "list"], env=BROKER)
    assert result.exit_code == 0, result.output
    listed = {t["tenant_id"]: t for t in map(json.loads, result.output.splitlines())}
    assert sorted(listed) == ["acme", "beta", "gamma"]
    assert listed["acme"]["unreadable"] is True and listed["beta"] == {
        "tenant_id": "beta",
        "unreadable": True,
    }
    assert "unreadable" not in listed["gamma"]


def test_the_dev_stacks_urls_are_exported_by_reference_to_owner_only_files(
    tmp_path: Path,
) -> None:
    """The embedded servers' URLs hold this run's passwords: the export line for other
    shells names a file only this user reads, never the password."""
    from paystream.cli.dev import _dev_url_file

    url = "redis://:s3cr3t-pw@127.0.0.1:6380/0"
    line = _dev_url_file(tmp_path, "REDIS_URL", url)
    path = tmp_path / "redis_url.url"
    assert line == f'"$(cat {path})"' and "s3cr3t" not in line
    assert path.read_text() == url and (path.stat().st_mode & 0o777) == 0o600
    _dev_url_file(tmp_path, "REDIS_URL", url)  # a later run writes it again


def test_the_ingress_s_field_errors_are_said_in_its_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`send --http`: the fields the ingress names are in the error, under it, not
    printed above click's usage text (walkthrough finding); exit 2, as bad input."""
    from paystream.http_client import IngressClient, IngressError

    async def refused(self: Any, command: Any, *, wait: float | None = None) -> Any:
        errors = [{"loc": "", "msg": "no"}, {"loc": "email", "msg": "bad"}]
        raise IngressError(400, "validation_error", "invalid data", errors, "c1")

    monkeypatch.setattr(IngressClient, "send", refused)
    args = ["send", "customer.create", "--tenant", "acme", "--http", "http://127.0.0.1:9"]
    result = CliRunner().invoke(cli, args, env={**BROKER, "PAYSTREAM_INGRESS_KEY": "k"})
    assert result.exit_code == 2, result.output
    said = result.output[result.output.index("Error: the ingress refused it") :]
    assert "400 validation_error: invalid data\n  (data): no\n  email: bad" in said
