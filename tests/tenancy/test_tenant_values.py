"""Tenant values that reach provider headers or the registry in odd shapes: control
characters in secrets, older workers reading newer records, removals written empty."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from paystream.cli import cli
from paystream.errors import ConfigurationError
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.settings import load_settings
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant

BROKER = {"KAFKA_BROKER_URL": "kafka://127.0.0.1:9"}
_KEY_VAR = "PAYSTREAM_SECRET_API_KEY"


# ---- a secret or connected account with a control character (a file's trailing newline)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--gateway", "stripe", "--secret", "api_key"], {_KEY_VAR: "sk_live_k\n"}),
        (["--gateway", "stripe", "--secret", "api_key"], {_KEY_VAR: "sk_live\r_k"}),
        (["--gateway", "stripe", "--connected-account", "acct_1\n"], {}),
    ],
    ids=["secret-newline", "secret-cr", "account-newline"],
)  # fmt: skip
def test_a_value_with_a_control_character_is_refused_without_showing_it(
    args: list[str], env: dict[str, str]
) -> None:
    """`PAYSTREAM_SECRET_API_KEY` from a mounted secret file keeps its trailing newline:
    it was sealed and stored, and every Stripe call of the tenant then failed as
    `provider_unavailable` ("could not reach Stripe (ValueError)": the header is refused
    by the HTTP client), retried, opening the tenant's circuit and parking every payment
    as if Stripe were down."""
    result = CliRunner().invoke(cli, ["tenants", "add", "acme", *args], env={**BROKER, **env})
    assert result.exit_code == 2, (result.output, result.exception)
    assert "control character" in result.output
    assert "sk_live" not in result.output and "Traceback" not in result.output


def _stripe_pool(value: str) -> GatewayPool:
    settings = load_settings(stripe_api_base="http://127.0.0.1:9")
    return GatewayPool(GatewayDeps(settings=settings), open_secret=lambda t, n: SecretStr(value))


async def test_a_stored_secret_with_a_control_character_is_a_configuration_problem() -> None:
    """A record already written so (by an older CLI): the tenant's commands must answer
    gateway_not_configured, not be parked behind an open circuit as a provider outage."""
    pool = _stripe_pool("sk_test_k\n")
    tenant = Tenant(tenant_id="acme", gateway="stripe", secrets={"api_key": "v1.x.y.z"})
    try:
        with pytest.raises(GatewayError) as caught:
            pool.get(tenant)
        assert caught.value.code is ErrorCode.AUTHENTICATION_FAILED
        assert not caught.value.retryable and "sk_test" not in str(caught.value)
    finally:
        await pool.aclose()


async def test_a_stored_connected_account_with_a_control_character_is_refused() -> None:
    pool = _stripe_pool("sk_test_k")
    tenant = Tenant(
        tenant_id="acme",
        gateway="stripe",
        secrets={"api_key": "v1.x.y.z"},
        connected_account="acct_1\r\n",
    )
    try:
        with pytest.raises(ConfigurationError, match="control character"):
            pool.get(tenant)
    finally:
        await pool.aclose()


# ---- a limited tenant's record unreadable by a worker not yet upgraded


def test_a_limited_tenant_s_record_leaves_out_what_it_does_not_use() -> None:
    """Workers before `only_listed_currencies` refuse records naming it (extra="forbid")
    and keep the tenant's previous record. Every record of a limited tenant named it
    (`false`), so during a rolling upgrade a key rotated with `tenants add --secret`, or
    new limits, never reached those workers: they went on with the old key and limits."""
    from pydantic import BaseModel, ConfigDict, StrictInt

    from paystream.tenancy.limits import TenantLimits
    from paystream.tenancy.registry import tenant_record

    class OlderLimits(BaseModel):  # TenantLimits as released before only_listed_currencies
        model_config = ConfigDict(frozen=True, extra="forbid")
        commands_per_second: StrictInt | None = None
        burst: StrictInt | None = None
        max_payment_amount: dict[str, StrictInt] = {}
        daily_payment_volume: dict[str, StrictInt] = {}

    limits = TenantLimits(commands_per_second=5, max_payment_amount={"USD": 100})
    record = tenant_record(Tenant(tenant_id="acme", limits=limits))
    OlderLimits.model_validate(record["limits"])  # raised: only_listed_currencies unknown
    assert Tenant.model_validate(record).limits == limits
    listed = limits.model_copy(update={"only_listed_currencies": True})
    assert tenant_record(Tenant(tenant_id="acme", limits=listed))["limits"][
        "only_listed_currencies"
    ]


# ---- a removal written as an empty value (not a null)


@pytest.mark.parametrize("empty", [b"", b"\n"])
def test_an_empty_registry_value_removes_the_tenant(empty: bytes) -> None:
    """`echo '"acme":' | kcat -P -K:` (without -Z) or a console producer deletes with an
    empty value, not a null. It was taken for a record from a newer version: the tenant
    stayed active on every worker (still charged), and `tenants suspend` / `add` refused
    to touch it ("upgrade before changing it")."""
    import json

    from paystream.tenancy.mirror import RegistryState
    from paystream.tenancy.registry import tenant_record

    state = RegistryState()
    state.apply(b'"acme"', json.dumps(tenant_record(Tenant(tenant_id="acme"))).encode())
    state.apply(b'"acme"', empty)
    assert "acme" not in state.tenants and "acme" not in state.unreadable
