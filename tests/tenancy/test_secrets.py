"""Tenant secrets sealed for the registry topic: bound to tenant and name, rotatable."""

from __future__ import annotations

import pytest

from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring
from paystream.tenancy.secrets import open_secret, seal_secret


def test_round_trip_never_shows_the_plaintext() -> None:
    ring = MasterKeyring(MasterKey.generate())
    sealed = seal_secret(ring, "acme", "api_key", "sk_test_123")
    assert "sk_test" not in sealed and sealed.startswith("v1.")
    assert open_secret(ring, "acme", "api_key", sealed).get_secret_value() == "sk_test_123"


@pytest.mark.parametrize(("tenant", "name"), [("globex", "api_key"), ("acme", "webhook_secret")])
def test_a_sealed_value_cannot_be_moved(tenant: str, name: str) -> None:
    ring = MasterKeyring(MasterKey.generate())
    sealed = seal_secret(ring, "acme", "api_key", "sk_test_123")
    with pytest.raises(CryptoError):
        open_secret(ring, tenant, name, sealed)


def test_tampering_and_unknown_formats_are_refused() -> None:
    ring = MasterKeyring(MasterKey.generate())
    sealed = seal_secret(ring, "acme", "api_key", "sk_test_123")
    version, key_id, wrapped, blob = sealed.split(".")
    flipped = blob[:-4] + ("AAAA" if blob[-4:] != "AAAA" else "BBBB")
    damaged = f"{version}.{key_id}.abc.def"  # base64 that does not decode (binascii.Error)
    for bad in (f"{version}.{key_id}.{wrapped}.{flipped}", "v2.x.y.z", "garbage", damaged):
        with pytest.raises(CryptoError):
            open_secret(ring, "acme", "api_key", bad)


def test_rotation_keeps_old_secrets_readable_via_the_retired_key() -> None:
    old = MasterKeyring(MasterKey.generate())
    sealed = seal_secret(old, "acme", "api_key", "sk_test_123")
    rotated = old.rotated_to(MasterKey.generate())
    assert open_secret(rotated, "acme", "api_key", sealed).get_secret_value() == "sk_test_123"
    with pytest.raises(CryptoError):
        open_secret(MasterKeyring(MasterKey.generate()), "acme", "api_key", sealed)
