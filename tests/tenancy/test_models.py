"""`tenants add` on a registered tenant changes only what the operator gave."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant, TenantChanges, TenantStatus, register_or_update

STRIPE = Tenant(
    tenant_id="acme",
    name="Acme",
    status=TenantStatus.SUSPENDED,
    gateway="stripe",
    gateway_options={"stripe_version": "2024-06-20"},
    secrets={"api_key": "v1:sealed-key"},
    connected_account="acct_1",
    limits=TenantLimits(commands_per_second=5),
)


def test_a_new_tenant_gets_the_defaults() -> None:
    tenant = register_or_update("new", None, TenantChanges())
    assert tenant == Tenant(tenant_id="new", name="new")
    assert tenant.gateway == "simulator" and tenant.status is TenantStatus.ACTIVE


def test_a_new_tenant_takes_what_was_given() -> None:
    limits = TenantLimits(max_payment_amount={"USD": 100})
    given = TenantChanges(
        name="N", gateway="stripe", gateway_options={"a": 1}, secrets={"api_key": "v1:x"},
        connected_account="acct_2", limits=limits,
    )  # fmt: skip
    tenant = register_or_update("new", None, given)
    assert (tenant.name, tenant.gateway, tenant.gateway_options) == ("N", "stripe", {"a": 1})
    assert tenant.secrets == {"api_key": "v1:x"} and tenant.connected_account == "acct_2"
    assert tenant.limits == limits


def test_renaming_keeps_gateway_secrets_status_and_limits() -> None:
    renamed = register_or_update("acme", STRIPE, TenantChanges(name="Acme Corp"))
    assert renamed == STRIPE.model_copy(update={"name": "Acme Corp"})


def test_nothing_given_changes_nothing() -> None:
    assert register_or_update("acme", STRIPE, TenantChanges(secrets={})) == STRIPE


def test_a_rotated_secret_replaces_only_itself() -> None:
    extra = STRIPE.model_copy(update={"secrets": {**STRIPE.secrets, "webhook": "v1:w"}})
    rotated = register_or_update("acme", extra, TenantChanges(secrets={"api_key": "v1:new"}))
    assert rotated.secrets == {"api_key": "v1:new", "webhook": "v1:w"}
    assert rotated.status is TenantStatus.SUSPENDED


def test_options_given_replace_the_options() -> None:
    changed = register_or_update("acme", STRIPE, TenantChanges(gateway_options={"x": 2}))
    assert changed.gateway_options == {"x": 2} and changed.secrets == STRIPE.secrets


def test_the_same_gateway_named_again_keeps_its_settings() -> None:
    assert register_or_update("acme", STRIPE, TenantChanges(gateway="stripe")) == STRIPE


def test_a_new_gateway_starts_its_settings_afresh() -> None:
    moved = register_or_update("acme", STRIPE, TenantChanges(gateway="simulator"))
    assert moved.gateway == "simulator" and moved.gateway_options == {}
    assert moved.secrets == {} and moved.connected_account is None
    # what is not the provider's stays
    assert moved.status is TenantStatus.SUSPENDED and moved.limits == STRIPE.limits
    assert moved.name == "Acme"
    with_settings = register_or_update(
        "acme", STRIPE, TenantChanges(gateway="simulator", gateway_options={"latency_ms": 5})
    )
    assert with_settings.gateway_options == {"latency_ms": 5}


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Soci\udce9t\udce9"},
        {"connected_account": "acct_\udcff"},
        {"gateway_options": {"latency_ms": "\udcff"}},
        {"gateway_options": {"k\udcff": 1}},
        {"gateway_options": {"nested": ["ok", {"deep": "\ud800"}]}},
    ],
)
def test_a_tenant_with_text_that_is_not_unicode_is_refused(fields: dict[str, Any]) -> None:
    """Written escaped (JSON spells a lone surrogate), every reader would refuse the
    record: a new tenant would never exist, a known one could never change again."""
    with pytest.raises(ValidationError, match="is not valid Unicode"):
        Tenant(tenant_id="acme", **fields)


def test_an_empty_connected_account_removes_it() -> None:
    """`tenants add --connected-account ""` means the platform's own account again: kept
    as none (as `tenants list` then shows it), not as an empty account name."""
    known = register_or_update("t1", None, TenantChanges(connected_account="acct_1"))
    assert known.connected_account == "acct_1"
    cleared = register_or_update("t1", known, TenantChanges(connected_account=""))
    assert cleared.connected_account is None
    assert (
        register_or_update("t2", None, TenantChanges(connected_account="")).connected_account
        is None
    )
