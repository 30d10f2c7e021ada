"""Tenant secrets (provider API keys) sealed for the tenant registry topic.

Envelope encryption (tenancy.crypto): each secret gets its own data key, wrapped by the
master key; the record carries ``v1.<master key id>.<wrapped key>.<ciphertext>`` and
both halves are bound to (tenant, secret name) so a sealed value cannot be moved to
another tenant or field.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from pydantic import SecretStr

from paystream.settings import Settings
from paystream.tenancy import crypto
from paystream.tenancy.models import Tenant

__all__ = ["open_secret", "reseal_secret", "seal_secret", "secret_opener"]

_PURPOSE = "tenant-secret"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def seal_secret(
    keyring: crypto.MasterKeyring, tenant_id: str, name: str, value: str, purpose: str = _PURPOSE
) -> str:
    """Encrypt one secret for storage in the tenant record (``purpose``: what else it is,
    bound into its ciphertext, for a secret kept elsewhere)."""
    ref = f"secret/{name}"
    data_key = crypto.generate_data_key()
    wrapped = crypto.wrap_data_key(keyring.current, data_key, tenant_id, ref)
    blob = crypto.encrypt(data_key, value.encode(), crypto.aad(tenant_id, purpose, name))
    return ".".join(["v1", wrapped.master_key_id, _b64(wrapped.blob), _b64(blob)])


def open_secret(
    keyring: crypto.MasterKeyring, tenant_id: str, name: str, sealed: str, purpose: str = _PURPOSE
) -> SecretStr:
    """Decrypt a sealed secret; CryptoError if it was tampered with or moved."""
    _, key_id, wrapped_b64, blob_b64 = _parts(name, sealed)
    wrapped = crypto.WrappedKey(key_id, base64.urlsafe_b64decode(wrapped_b64))
    data_key = crypto.unwrap_data_key(keyring, wrapped, tenant_id, f"secret/{name}")
    plain = crypto.decrypt(
        data_key, base64.urlsafe_b64decode(blob_b64), crypto.aad(tenant_id, purpose, name)
    )
    return SecretStr(plain.decode())


def reseal_secret(keyring: crypto.MasterKeyring, tenant_id: str, name: str, sealed: str) -> str:
    """The sealed secret with its data key re-wrapped under the keyring's current master
    key (the ciphertext is unchanged); the same string if it already is."""
    version, key_id, wrapped_b64, blob_b64 = _parts(name, sealed)
    wrapped = crypto.WrappedKey(key_id, base64.urlsafe_b64decode(wrapped_b64))
    new = crypto.rewrap_data_key(keyring, wrapped, tenant_id, f"secret/{name}")
    if new is wrapped:
        return sealed
    return ".".join([version, new.master_key_id, _b64(new.blob), blob_b64])


_FORMAT_NAME = re.compile(r"v[0-9]{1,3}")


def _parts(name: str, sealed: str) -> tuple[str, str, str, str]:
    try:
        version, key_id, wrapped_b64, blob_b64 = sealed.split(".")
    except ValueError:
        raise crypto.CryptoError(f"secret {name!r} is not a sealed value") from None
    if version != "v1":
        # Named only if it reads as a format's name: a plaintext secret written by hand
        # (dots in it) would have a part of it quoted (review h64e).
        shown = repr(version) if _FORMAT_NAME.fullmatch(version) else "(not shown)"
        raise crypto.CryptoError(f"secret {name!r} uses unknown format {shown}")
    for part in (wrapped_b64, blob_b64):  # damaged base64 is a bad secret like any other
        try:
            base64.urlsafe_b64decode(part)
        except ValueError:  # binascii.Error
            raise crypto.CryptoError(f"secret {name!r} is not a sealed value") from None
    return version, key_id, wrapped_b64, blob_b64


def secret_opener(settings: Settings) -> Callable[[Tenant, str], SecretStr] | None:
    """An opener bound to the configured master key, or None when no key is configured."""
    if settings.master_key is None:
        return None
    keyring = crypto.keyring_from_settings(settings)

    def opener(tenant: Tenant, name: str) -> SecretStr:
        return open_secret(keyring, tenant.tenant_id, name, tenant.secrets[name])

    return opener
