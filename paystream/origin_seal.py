"""Commands paystream sends itself (a provider webhook's ``payment.refresh`` or
``refund.refresh``), known by a seal.

A refresh that a webhook brings is paystream's, not the tenant's: it must not spend the
tenant's rate limit and be refused ``rate_limited`` (the provider, answered 200, would
not send the event again, and the payment would wait for ever). Anyone who can produce to
the commands topic could claim to be paystream, so the claim counts only under a seal: an
HMAC-SHA256, under a key derived from the master key for this purpose alone, over the
command as sent (its key, value and CloudEvents headers), so it cannot be moved to another
command. The webhook endpoint seals what it sends, within a budget of its own per tenant
(web/webhooks.py); the worker neither checks a sealed refresh against the tenant's rate
limit nor spends the tenant's tokens on it (``LimitGate.admit``'s ``exempt``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from paystream.settings import Settings
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring, keyring_from_settings

__all__ = ["ORIGIN_HEADER", "OriginSeals"]

ORIGIN_HEADER = "paystream-origin-seal"  # "<master key id>.<hex HMAC>"
_LABEL = b"paystream/origin-seal/v1"
# The headers the decoder reads (any case, as it reads them).
_SEALED = re.compile(r"(?i)ce_|content-type\Z").match


@functools.lru_cache(maxsize=16)
def _seal_key(master: MasterKey) -> bytes:
    return hmac.new(master.key, _LABEL, hashlib.sha256).digest()


def _message(key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> bytes:
    parts = [_LABEL, key or b"", value or b""]
    for name, header in sorted((k, v) for k, v in headers.items() if _SEALED(k)):
        parts += [name.encode(), header]
    # Length-prefixed: no two different commands make the same message.
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


@dataclass(frozen=True)
class OriginSeals:
    """Seals with the current master key; opens with any key in the keyring."""

    keyring: MasterKeyring | None

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginSeals:
        return cls(None if settings.master_key is None else keyring_from_settings(settings))

    def seal(self, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> bytes:
        """The seal header's value for this command (a master key is required: the
        webhook endpoint needs one anyway, to open the tenant's secret)."""
        if self.keyring is None:
            raise CryptoError("no master key to seal a command with")
        current = self.keyring.current
        mac = hmac.new(_seal_key(current), _message(key, value, headers), hashlib.sha256)
        return f"{current.key_id}.{mac.hexdigest()}".encode()

    def sealed(self, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> bool:
        """Is this command paystream's own, under a key in the keyring?"""
        seal = headers.get(ORIGIN_HEADER)
        if seal is None or self.keyring is None:
            return False
        try:
            key_id, mac = seal.decode("ascii").split(".", 1)
            master = self.keyring.get(key_id)
        except (UnicodeDecodeError, ValueError, CryptoError):
            return False
        expected = hmac.new(_seal_key(master), _message(key, value, headers), hashlib.sha256)
        return hmac.compare_digest(expected.hexdigest(), mac)
