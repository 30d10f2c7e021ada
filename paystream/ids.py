"""Opaque ids that paystream and its simulator mint.

Written in lowercase letters only: an id travels inside later commands (a refund names
its payment), and every command is scanned for card numbers. Hex ids can hold a run of
13+ digits that passes the Luhn check (about 1 id in 300 for 24 hex digits), and the
command naming it would be refused as card data. Letters never can.
"""

from __future__ import annotations

import hashlib

__all__ = ["ID_LENGTH", "derived_id", "letters"]

ID_LENGTH = 24  # 26**24 ≈ 2**113 values
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def letters(value: int, length: int = ID_LENGTH) -> str:
    """``value`` (mod 26**length) written in ``length`` base-26 letters."""
    out = []
    for _ in range(length):
        value, digit = divmod(value, 26)
        out.append(_ALPHABET[digit])
    return "".join(out)


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id for ``parts`` (e.g. tenant and command id): the same parts, the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{letters(int.from_bytes(digest, 'big'))}"
