"""`Authorization: Bearer <token>`: read from a request and compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from pydantic import SecretStr

__all__ = ["bearer", "matches"]


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credentials of a Bearer Authorization header, or None."""
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 7235).
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def matches(given: str | None, token: SecretStr | None) -> bool:
    """Is ``given`` the configured ``token``? (False when either is missing.)"""
    if given is None or token is None:
        return False
    try:
        return hmac.compare_digest(given.encode(), token.get_secret_value().encode())
    except UnicodeEncodeError:  # raw bytes that are not UTF-8: not the token
        return False
