"""Tenant API keys for the HTTP ingress: made once, kept as digests, matched exactly."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from paystream.tenancy.ingress_keys import MAX_KEYS_PER_TENANT, key_matches, new_key
from paystream.tenancy.models import Tenant, TenantChanges, register_or_update
from paystream.tenancy.registry import tenant_record


def test_a_key_matches_itself_only() -> None:
    key_id, text, kept = new_key()
    other_id, other_text, other_kept = new_key()
    keys = {key_id: kept, other_id: other_kept}
    assert key_matches(keys, text) == key_id
    assert key_matches(keys, other_text) == other_id
    assert key_matches({key_id: kept}, other_text) is None  # another tenant's
    tampered = text[:-1] + ("A" if text[-1] != "A" else "B")
    assert key_matches(keys, tampered) is None
    # The right id with another secret, the id alone, extra characters, not ASCII.
    assert key_matches(keys, f"psk_{key_id}_{'A' * 43}") is None
    assert key_matches(keys, f"psk_{key_id}") is None
    assert key_matches(keys, text + " ") is None
    assert key_matches(keys, text[:-1] + "é") is None
    assert key_matches({}, text) is None


def test_keys_are_random_and_the_registry_keeps_no_key() -> None:
    made = {new_key()[1] for _ in range(50)}
    assert len(made) == 50
    key_id, text, kept = new_key("checkout")
    tenant = Tenant(tenant_id="shop", ingress_keys={key_id: kept})
    stored = json.dumps(tenant_record(tenant), default=str)
    assert text not in stored and text.split("_", 2)[2] not in stored
    assert kept.digest in stored
    assert tenant.redacted()["ingress_keys"] == [key_id]


def test_a_tenant_without_keys_is_written_as_before() -> None:
    """Older workers refuse a record with a field they do not know: none without keys."""
    assert "ingress_keys" not in tenant_record(Tenant(tenant_id="shop"))


def test_a_change_of_gateway_keeps_the_keys() -> None:
    key_id, _, kept = new_key()
    known = Tenant(tenant_id="shop", ingress_keys={key_id: kept})
    changed = register_or_update("shop", known, TenantChanges(gateway="stripe"))
    assert changed.ingress_keys == {key_id: kept}


def test_keys_are_bounded_and_well_formed() -> None:
    keys = dict(new_key()[::2] for _ in range(MAX_KEYS_PER_TENANT + 1))
    with pytest.raises(ValidationError):
        Tenant(tenant_id="shop", ingress_keys=keys)
    key_id, _, kept = new_key()
    with pytest.raises(ValidationError):
        Tenant(tenant_id="shop", ingress_keys={"NOT-AN-ID": kept})
    with pytest.raises(ValidationError):
        Tenant.model_validate(
            {"tenant_id": "shop", "ingress_keys": {key_id: {"digest": "x", "created_at": 0}}}
        )


def test_the_registry_knows_which_keys_are_held_as_records_come() -> None:
    from paystream.settings import load_settings
    from paystream.tenancy.mirror import RegistryMirror

    mirror = RegistryMirror(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    key_id, text, kept = new_key()
    assert not mirror.holds_ingress_key(text)
    with_key = Tenant(tenant_id="shop", ingress_keys={key_id: kept})
    mirror.apply(b'"shop"', json.dumps(tenant_record(with_key), default=str).encode())
    assert mirror.holds_ingress_key(text)
    # The id alone is no key: a made-up secret under a real id is refused before the body.
    forged = text[: len(text) - 8] + ("A" * 8 if not text.endswith("A" * 8) else "B" * 8)
    assert not mirror.holds_ingress_key(forged)
    mirror.apply(b'"shop"', json.dumps(tenant_record(Tenant(tenant_id="shop"))).encode())
    assert not mirror.holds_ingress_key(text)  # revoked
    mirror.apply(b'"shop"', json.dumps(tenant_record(with_key), default=str).encode())
    mirror.apply(b'"shop"', None)
    assert not mirror.holds_ingress_key(text)  # the tenant deleted


def test_a_new_key_never_takes_the_id_of_one_the_tenant_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr("paystream.tenancy.ingress_keys.secrets.token_hex", lambda n: next(ids))
    assert new_key(taken={"aaaaaaaa"})[0] == "bbbbbbbb"
