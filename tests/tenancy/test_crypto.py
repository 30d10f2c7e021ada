"""Envelope encryption: round trips, AAD binding, tamper detection and master-key rotation."""

from __future__ import annotations

import base64
import os

import pytest

from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.tenancy.crypto import (
    CryptoError,
    MasterKey,
    MasterKeyring,
    WrappedKey,
    aad,
    customer_key_ref,
    decrypt,
    encrypt,
    generate_data_key,
    get_data_key,
    keyring_from_settings,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
)


def test_round_trip_and_fresh_nonce_per_message() -> None:
    key = generate_data_key()
    ad = aad("t1", "customer.email", "cus_1")
    first, second = encrypt(key, b"ann@example.com", ad), encrypt(key, b"ann@example.com", ad)
    assert first != second
    assert decrypt(key, first, ad) == decrypt(key, second, ad) == b"ann@example.com"
    assert b"ann" not in first


@pytest.mark.parametrize(
    "other",
    [
        aad("t2", "customer.email", "cus_1"),  # another tenant
        aad("t1", "customer.name", "cus_1"),  # another column
        aad("t1", "customer.email", "cus_2"),  # another row
    ],
)
def test_ciphertext_is_bound_to_tenant_purpose_and_row(other: bytes) -> None:
    key = generate_data_key()
    blob = encrypt(key, b"secret", aad("t1", "customer.email", "cus_1"))
    with pytest.raises(CryptoError):
        decrypt(key, blob, other)


def test_aad_is_unambiguous() -> None:
    assert aad("t1", "a", "bc") != aad("t1", "ab", "c")
    assert aad("t", "x") != aad("t", "x", "")


def test_tampered_or_truncated_ciphertext_is_rejected() -> None:
    key, ad = generate_data_key(), aad("t", "p", "r")
    blob = bytearray(encrypt(key, b"secret", ad))
    blob[-1] ^= 1
    with pytest.raises(CryptoError):
        decrypt(key, bytes(blob), ad)
    with pytest.raises(CryptoError):
        decrypt(key, bytes(blob[:10]), ad)
    with pytest.raises(CryptoError):
        decrypt(generate_data_key(), encrypt(key, b"x", ad), ad)


def test_wrapped_key_is_bound_to_tenant_and_ref() -> None:
    ring = MasterKeyring(MasterKey.generate())
    data_key = generate_data_key()
    wrapped = wrap_data_key(ring.current, data_key, "t1", "customer/cus_1")
    assert wrapped.master_key_id == ring.current.key_id
    assert unwrap_data_key(ring, wrapped, "t1", "customer/cus_1") == data_key
    with pytest.raises(CryptoError):
        unwrap_data_key(ring, wrapped, "t2", "customer/cus_1")
    with pytest.raises(CryptoError):
        unwrap_data_key(ring, wrapped, "t1", "customer/cus_2")


def test_rotation_rewraps_the_same_data_key() -> None:
    old = MasterKeyring(MasterKey.generate())
    data_key = generate_data_key()
    wrapped = wrap_data_key(old.current, data_key, "t1", "tenant")
    rotating = old.rotated_to(MasterKey.generate())
    rewrapped = rewrap_data_key(rotating, wrapped, "t1", "tenant")
    assert rewrapped.master_key_id == rotating.current.key_id != wrapped.master_key_id
    assert rewrap_data_key(rotating, rewrapped, "t1", "tenant") is rewrapped
    assert unwrap_data_key(MasterKeyring(rotating.current), rewrapped, "t1", "tenant") == data_key
    with pytest.raises(CryptoError, match="not in the keyring"):
        unwrap_data_key(MasterKeyring(rotating.current), wrapped, "t1", "tenant")


def test_master_key_from_settings_and_its_errors() -> None:
    raw = os.urandom(32)
    settings = load_settings(master_key=base64.b64encode(raw).decode())
    ring = keyring_from_settings(settings)
    assert ring.current == MasterKey(raw)
    assert ring.current.key_id.startswith("mk-")
    assert raw.hex() not in repr(ring) and "key=" not in repr(ring.current)
    with pytest.raises(ConfigurationError, match="not set"):
        keyring_from_settings(load_settings(master_key=None))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        MasterKey.from_base64(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="base64"):
        MasterKey.from_base64("not base64!!")


class MemoryKeyStore:
    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], WrappedKey] = {}

    async def get(self, tenant_id: str, key_ref: str) -> WrappedKey | None:
        return self.keys.get((tenant_id, key_ref))

    async def put(self, tenant_id: str, key_ref: str, wrapped: WrappedKey) -> None:
        self.keys[(tenant_id, key_ref)] = wrapped

    async def delete(self, tenant_id: str, key_ref: str) -> bool:
        return self.keys.pop((tenant_id, key_ref), None) is not None


async def test_get_data_key_creates_once_and_shreds_on_delete() -> None:
    store, ring = MemoryKeyStore(), MasterKeyring(MasterKey.generate())
    ref = customer_key_ref("cus_1")
    assert await get_data_key(store, ring, "t1", ref, create=False) is None
    key = await get_data_key(store, ring, "t1", ref, create=True)
    assert await get_data_key(store, ring, "t1", ref, create=True) == key
    assert await store.delete("t1", ref)
    assert await get_data_key(store, ring, "t1", ref, create=False) is None
