"""Tenant API keys for the HTTP ingress: made once, kept as digests, matched exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from paystream.tenancy.ingress_keys import (
    MAX_KEYS_PER_TENANT,
    matched_key,
    new_key,
)
from paystream.tenancy.models import Tenant, TenantChanges, register_or_update
from paystream.tenancy.registry import tenant_record


def key_matches(keys: Any, text: str, now: datetime | None = None) -> str | None:
    """The id of the key among ``keys`` that ``text`` is, if any and unexpired at ``now``."""
    found = matched_key(keys, text)
    if found is None or found[1].expired(now or datetime.now(UTC)):
        return None
    return found[0]


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
    assert not mirror.ingress_key_of(text)
    with_key = Tenant(tenant_id="shop", ingress_keys={key_id: kept})
    mirror.apply(b'"shop"', json.dumps(tenant_record(with_key), default=str).encode())
    assert mirror.ingress_key_of(text)
    # The id alone is no key: a made-up secret under a real id is refused before the body.
    forged = text[: len(text) - 8] + ("A" * 8 if not text.endswith("A" * 8) else "B" * 8)
    assert not mirror.ingress_key_of(forged)
    mirror.apply(b'"shop"', json.dumps(tenant_record(Tenant(tenant_id="shop"))).encode())
    assert not mirror.ingress_key_of(text)  # revoked
    mirror.apply(b'"shop"', json.dumps(tenant_record(with_key), default=str).encode())
    mirror.apply(b'"shop"', None)
    assert not mirror.ingress_key_of(text)  # the tenant deleted


def test_a_new_key_never_takes_the_id_of_one_the_tenant_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr("paystream.tenancy.ingress_keys.secrets.token_hex", lambda n: next(ids))
    assert new_key(taken={"aaaaaaaa"})[0] == "bbbbbbbb"


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_an_expired_key_matches_no_more_but_is_known_as_expired() -> None:
    key_id, text, kept = new_key(expires_at=NOW + timedelta(hours=1))
    keys = {key_id: kept}
    assert key_matches(keys, text, NOW) == key_id
    assert key_matches(keys, text, NOW + timedelta(minutes=59)) == key_id
    assert key_matches(keys, text, NOW + timedelta(hours=1)) is None  # (from that moment)
    # Told apart from a made-up key only by the key itself.
    assert matched_key(keys, text) == (key_id, kept)
    assert matched_key(keys, text[:-1] + ("A" if text[-1] != "A" else "B")) is None


def test_a_restricted_key_allows_its_commands_and_domains_only() -> None:
    _, _, kept = new_key(commands=["refund.*", "customer.create", "customer.create"])
    assert kept.commands == ("customer.create", "refund.*")  # (sorted, once each)
    assert kept.allows("customer.create") and kept.allows("refund.create")
    assert kept.allows("refund.refresh")
    assert not kept.allows("customer.update") and not kept.allows("payment.create")
    assert new_key()[2].allows("payment.create")  # (unrestricted)
    for bad in (["payment"], ["*"], ["payment.create "], ["PAYMENT.create"], [".*"], []):
        with pytest.raises(ValidationError):
            new_key(commands=bad)
    with pytest.raises(ValidationError):  # (a time without its offset: whose zone?)
        new_key(expires_at=datetime(2027, 1, 1))


def test_expiry_and_commands_are_written_only_when_set() -> None:
    """A key with neither is written as older workers know keys; one with them reads
    back the same."""
    plain_id, _, plain = new_key("a")
    key_id, _, kept = new_key("b", expires_at=NOW, commands=["refund.*"])
    tenant = Tenant(tenant_id="shop", ingress_keys={plain_id: plain, key_id: kept})
    record = json.loads(json.dumps(tenant_record(tenant), default=str))
    assert set(record["ingress_keys"][plain_id]) == {"digest", "created_at", "label"}
    assert record["ingress_keys"][key_id]["commands"] == ["refund.*"]
    assert Tenant.model_validate(record) == tenant


def test_the_registry_tells_an_expired_key_from_a_held_one() -> None:
    from paystream.settings import load_settings
    from paystream.tenancy.mirror import RegistryMirror

    mirror = RegistryMirror(load_settings(kafka_broker_url="kafka://127.0.0.1:9"))
    live_id, live, live_kept = new_key()
    old_id, old, old_kept = new_key(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    tenant = Tenant(tenant_id="shop", ingress_keys={live_id: live_kept, old_id: old_kept})
    mirror.apply(b'"shop"', json.dumps(tenant_record(tenant), default=str).encode())
    assert mirror.ingress_key_of(live) == ("shop", live_id, live_kept)
    assert mirror.ingress_key_of(old) == ("shop", old_id, old_kept)
