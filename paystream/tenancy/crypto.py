"""Envelope encryption (AES-256-GCM): data keys per tenant or customer, wrapped by a master key.

Data keys encrypt rows; the master key only wraps data keys. Rotating the master key
therefore re-wraps a handful of small keys and never rewrites a row, and deleting a
customer's data key crypto-shreds everything encrypted under it. Every ciphertext is
bound by AAD to its tenant, purpose and row, so a ciphertext copied to another row,
column or tenant fails to decrypt instead of leaking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from paystream.errors import ConfigurationError, PaystreamError
from paystream.settings import Settings

__all__ = [
    "CryptoError",
    "KeyStore",
    "MasterKey",
    "MasterKeyring",
    "UnknownMasterKeyError",
    "WrappedKey",
    "aad",
    "customer_key_ref",
    "decrypt",
    "encrypt",
    "generate_data_key",
    "get_data_key",
    "keyring_from_settings",
    "master_key_ids",
    "rewrap_data_key",
    "unwrap_data_key",
    "wrap_data_key",
]

KEY_BYTES = 32
NONCE_BYTES = 12
# First byte of every ciphertext and wrapped key: lets the format change without guessing.
FORMAT_V1 = b"\x01"

# What a master key id looks like (MasterKey: "mk-" and 16 hex digits of its digest).
_KEY_ID = re.compile(r"mk-[0-9a-f]{16}")


class CryptoError(PaystreamError):
    """A ciphertext or wrapped key failed authentication, or a key is unavailable."""


class UnknownMasterKeyError(CryptoError):
    """A key was wrapped under a master key the keyring does not hold (a retired key
    missing from PAYSTREAM_RETIRED_MASTER_KEYS, or the wrong PAYSTREAM_MASTER_KEY)."""


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A 256-bit key-encryption key; ``key_id`` is recorded beside every key it wraps."""

    key: bytes
    key_id: str = ""

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ConfigurationError("master key must be exactly 32 bytes")
        if not self.key_id:
            # A digest under a fixed label: identifies the key without revealing it.
            digest = hashlib.sha256(b"paystream/master-key-id\x00" + self.key).hexdigest()
            object.__setattr__(self, "key_id", f"mk-{digest[:16]}")

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    @classmethod
    def from_base64(cls, value: str, name: str = "PAYSTREAM_MASTER_KEY") -> MasterKey:
        """Parse a master key (base64 of 32 random bytes) given in the variable ``name``."""
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError(f"{name} is not valid base64") from exc
        if len(raw) != KEY_BYTES:
            raise ConfigurationError(f"{name} must decode to 32 bytes, got {len(raw)}")
        return cls(raw)

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random master key (for development stacks and tests)."""
        return cls(os.urandom(KEY_BYTES))


@dataclass(frozen=True)
class MasterKeyring:
    """The current master key plus retired ones still needed to unwrap until re-wrapped."""

    current: MasterKey
    retired: tuple[MasterKey, ...] = ()
    _by_id: Mapping[str, MasterKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {k.key_id: k for k in (*self.retired, self.current)}
        object.__setattr__(self, "_by_id", keys)

    def get(self, key_id: str) -> MasterKey:
        """The master key with this id, or CryptoError naming it."""
        try:
            return self._by_id[key_id]
        except KeyError:
            # Named only if it reads as a key id (mk-<16 hex>): a sealed value written by
            # hand may hold anything there, a secret too (review h64e).
            shown = repr(key_id) if _KEY_ID.fullmatch(key_id) else "(not shown)"
            raise UnknownMasterKeyError(f"master key {shown} is not in the keyring") from None

    def rotated_to(self, new: MasterKey) -> MasterKeyring:
        """A keyring whose current key is ``new``, keeping this one's keys for unwrapping."""
        return MasterKeyring(new, (*self.retired, self.current))


@dataclass(frozen=True, repr=False)
class WrappedKey:
    """A data key encrypted under the master key named by ``master_key_id``."""

    master_key_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(master_key_id={self.master_key_id!r})"


class KeyStore(Protocol):
    """Where wrapped data keys live, addressed by (tenant, key ref); backed by the ledger DB."""

    async def get(self, tenant_id: str, key_ref: str) -> WrappedKey | None: ...

    async def put(self, tenant_id: str, key_ref: str, wrapped: WrappedKey) -> None: ...

    async def delete(self, tenant_id: str, key_ref: str) -> bool: ...


def keyring_from_settings(settings: Settings, *retired: str) -> MasterKeyring:
    """The keyring from ``settings.master_key`` and ``settings.retired_master_keys``;
    ``retired`` adds more base64 keys being rotated out."""
    if settings.master_key is None:
        raise ConfigurationError("PAYSTREAM_MASTER_KEY is not set")
    current = MasterKey.from_base64(settings.master_key.get_secret_value())
    configured = settings.retired_master_keys
    names = [*(configured.get_secret_value().split(",") if configured else ()), *retired]
    old = tuple(
        MasterKey.from_base64(r, "a key in PAYSTREAM_RETIRED_MASTER_KEYS")
        for r in names
        if r.strip()
    )
    return MasterKeyring(current, tuple(k for k in old if k.key_id != current.key_id))


def customer_key_ref(customer_id: str) -> str:
    """Key ref of a customer's PII data key (deleting it erases the customer)."""
    return f"customer/{customer_id}"


def aad(tenant_id: str, purpose: str, *row: str) -> bytes:
    """Associated data binding a ciphertext to (tenant, purpose, row id parts).

    Length-prefixed so that no two different tuples encode to the same bytes.
    """
    parts = [b"paystream/v1", tenant_id.encode(), purpose.encode(), *(r.encode() for r in row)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def generate_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: ``0x01 || nonce || ciphertext+tag``; random 96-bit nonce per message."""
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt`; CryptoError if the key, AAD or bytes do not match."""
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != FORMAT_V1:
        raise CryptoError("ciphertext is truncated or of an unknown format")
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, associated)
    except InvalidTag:
        raise CryptoError("ciphertext failed authentication (wrong key, AAD or tampered)") from None


def _wrap_aad(tenant_id: str, key_ref: str, master_key_id: str) -> bytes:
    return aad(tenant_id, "data-key", key_ref, master_key_id)


def wrap_data_key(master: MasterKey, data_key: bytes, tenant_id: str, key_ref: str) -> WrappedKey:
    """Encrypt a data key under ``master``, bound to its tenant and key ref."""
    blob = encrypt(master.key, data_key, _wrap_aad(tenant_id, key_ref, master.key_id))
    return WrappedKey(master.key_id, blob)


def unwrap_data_key(
    keyring: MasterKeyring, wrapped: WrappedKey, tenant_id: str, key_ref: str
) -> bytes:
    """Recover a data key; fails if it was wrapped for another tenant or key ref."""
    master = keyring.get(wrapped.master_key_id)
    return decrypt(master.key, wrapped.blob, _wrap_aad(tenant_id, key_ref, master.key_id))


def rewrap_data_key(
    keyring: MasterKeyring, wrapped: WrappedKey, tenant_id: str, key_ref: str
) -> WrappedKey:
    """Re-wrap under the keyring's current master key; the data key itself is unchanged."""
    if wrapped.master_key_id == keyring.current.key_id:
        return wrapped
    data_key = unwrap_data_key(keyring, wrapped, tenant_id, key_ref)
    return wrap_data_key(keyring.current, data_key, tenant_id, key_ref)


async def get_data_key(
    store: KeyStore, keyring: MasterKeyring, tenant_id: str, key_ref: str, *, create: bool
) -> bytes | None:
    """Unwrap the stored data key; with ``create`` make and store one if absent."""
    wrapped = await store.get(tenant_id, key_ref)
    if wrapped is not None:
        return unwrap_data_key(keyring, wrapped, tenant_id, key_ref)
    if not create:
        return None
    data_key = generate_data_key()
    wrapped = wrap_data_key(keyring.current, data_key, tenant_id, key_ref)
    await store.put(tenant_id, key_ref, wrapped)
    return data_key


def master_key_ids(wrapped: Iterable[WrappedKey]) -> set[str]:
    """Which master keys a set of wrapped keys still depends on (rotation progress)."""
    return {w.master_key_id for w in wrapped}
