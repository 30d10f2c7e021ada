"""Tenant API keys for the HTTP command ingress (``POST /v1/commands``).

A key is shown once, when it is made, and kept only as its SHA-256 digest in the
tenant's registry record: whoever reads the registry topic learns no key. A fast digest
is enough for 256 random bits (there is nothing to guess; slow hashes are for
passwords). A key reads ``psk_<key id>_<secret>``: the id says which digest to compare,
so a tenant can hold a new key beside the old one while its services move over.

A key may expire (``expires_at``: refused from then on, as a rolled key's old half is
after its grace) and may be restricted to some commands (``commands``: names such as
``refund.create``, or a domain's every command as ``refund.*``), as Stripe's restricted
keys are: a checkout service's key then cannot refund. Both are left out of the registry
record when unset (registry.tenant_record), so a worker older than them still reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "COMMAND_SCOPE_PATTERN",
    "KEY_ID_PATTERN",
    "MAX_KEYS_PER_TENANT",
    "IngressKey",
    "key_id_of",
    "matched_key",
    "new_key",
]

KEY_ID_PATTERN = r"^[0-9a-f]{8}$"
# A handful covers rotation (old and new) and a key per calling service; a record
# grown without bound would slow every registry read.
MAX_KEYS_PER_TENANT = 10
_PREFIX = "psk_"
_KEY = re.compile(r"psk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})\Z")
# A command's name (``payment.create``) or a domain's every command (``payment.*``).
# Not checked against this version's commands: a key naming one added later is read by
# every version, and sends it where it is known.
COMMAND_SCOPE_PATTERN = r"^[a-z_]{1,40}\.([a-z_]{1,40}|\*)$"
CommandScope = Annotated[str, StringConstraints(pattern=COMMAND_SCOPE_PATTERN)]


class IngressKey(BaseModel):
    """One key of a tenant's, as the registry keeps it: its digest, never the key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    created_at: datetime
    label: Annotated[str, StringConstraints(max_length=100)] = ""
    expires_at: AwareDatetime | None = None  # refused from this moment on
    # The commands it may send (None: every one); sorted, so a record reads the same.
    commands: Annotated[tuple[CommandScope, ...], Field(min_length=1, max_length=40)] | None = None
    # The key `roll` made to follow it: its expiry is then a grace, not its lifetime.
    rolled_to: Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)] | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def allows(self, command: str) -> bool:
        """May this key send ``command`` (``payment.create``)?"""
        if self.commands is None:
            return True
        domain = command.partition(".")[0]
        return command in self.commands or f"{domain}.*" in self.commands


def new_key(
    label: str = "",
    now: datetime | None = None,
    taken: Collection[str] = (),
    *,
    expires_at: datetime | None = None,
    commands: Collection[str] | None = None,
) -> tuple[str, str, IngressKey]:
    """A fresh key: (its id, the key itself, what the registry keeps of it); its id is
    none of ``taken`` (the tenant's other keys': one of the same id would replace it)."""
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    text = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    kept = IngressKey(
        digest=_digest(text),
        created_at=now or datetime.now(UTC),
        label=label,
        expires_at=expires_at,
        commands=None if commands is None else tuple(sorted(set(commands))),
    )
    return key_id, text, kept


def key_id_of(text: str) -> str | None:
    """The id a key names, if ``text`` is shaped as a key."""
    found = _KEY.match(text)
    return None if found is None else found.group(1)


def matched_key(keys: Mapping[str, IngressKey], text: str) -> tuple[str, IngressKey] | None:
    """The key among ``keys`` that ``text`` is, expired or not: (its id, the key)."""
    found = _KEY.match(text)
    if found is None:
        return None
    kept = keys.get(found.group(1))
    if kept is None:
        return None
    # (Compared in constant time; the id is no secret, the digest's match is.)
    return (found.group(1), kept) if hmac.compare_digest(kept.digest, _digest(text)) else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()
