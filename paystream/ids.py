"""Opaque ids that paystream and its simulator mint.

Written in lowercase letters only: an id travels inside later commands (a refund names
its payment), and every command is scanned for card numbers. Hex ids can hold a run of
13+ digits that passes the Luhn check (about 1 id in 300 for 24 hex digits), and the
command naming it would be refused as card data. Letters never can.
"""

from __future__ import annotations

import hashlib

__all__ = ["ID_LENGTH", "derived_id", "invoice_id", "letters"]

ID_LENGTH = 24  # one letter per byte: ~4.7 bits each, ~112 bits in all
# Byte → letter, byte mod 26: a slight bias towards a-v, irrelevant for uniqueness; one
# C-level translate instead of base-26 arithmetic on a big integer.
_LETTERS = bytes(ord("a") + b % 26 for b in range(256))


def letters(data: bytes, length: int = ID_LENGTH) -> str:
    """The first ``length`` bytes of ``data``, one lowercase letter each."""
    if len(data) < length:
        raise ValueError(f"need {length} bytes, got {len(data)}")
    return data[:length].translate(_LETTERS).decode("ascii")


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id for ``parts`` (e.g. tenant and command id): the same parts, the same id."""
    return f"{prefix}_{letters(hashlib.sha256(chr(0x1F).join(parts).encode()).digest())}"


def invoice_id(tenant_id: str, subscription_id: str, provider_invoice_id: str) -> str:
    """paystream's id of a provider's invoice of a subscription: derived from the tenant,
    paystream's subscription and the provider's id, so that every read of it (a replay,
    a refresh, a webhook's lookup) names the same one."""
    return derived_id("in", tenant_id, subscription_id, provider_invoice_id)
