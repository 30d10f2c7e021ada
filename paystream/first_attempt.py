"""When a re-sent command was first run, believed only under paystream's seal.

A parked command carries the time it was first run (``paystream-first-attempt-ms``):
providers keep idempotency keys for a day, so `dlq replay` holds back, and the worker
parks again unrun, a command first run longer ago than that (re-sent, the provider might
charge it a second time). Anyone who can produce to the commands topic can set that
header too. Trusted as it stands, a made-up old time parked a new command unrun and then
held its whole retry partition in every replay until an operator reconciled it.

So on the commands topic the time counts only under a seal: an HMAC-SHA256, under a key
derived from the master key, over the time and the command as sent (its key, value and
CloudEvents headers, and the reconciled mark if it has one), so a seal cannot be moved to
another command nor its time changed, nor a mark added.
`dlq replay` seals what it re-sends; the worker believes a sealed time and ignores any
other. The retry and dead-letter topics are written by paystream alone, so the replay
reads their times as they stand. A seal made under a retired master key is believed while
that key is in PAYSTREAM_RETIRED_MASTER_KEYS. With no master key configured there is
nothing to seal with, and the time is believed as it stands (as before seals).
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

__all__ = ["FIRST_ATTEMPT_HEADER", "SEAL_HEADER", "FirstAttemptSeals"]

# When a parked command was first run, in ms since the epoch (see dlq.py).
FIRST_ATTEMPT_HEADER = "paystream-first-attempt-ms"
# "<master key id>.<hex HMAC>" over the time and the command as sent.
SEAL_HEADER = "paystream-first-attempt-seal"
# The headers a seal covers: the command's (the ones the worker reads and a park keeps),
# and the reconciled mark `dlq replay --include-stale-as-of` adds (dlq.RECONCILED_HEADER;
# unsealed, any producer could add it to release its own stale retries).
_COMMAND_HEADER = re.compile(r"(?i)ce_|content-type\Z|paystream-reconciled\Z").match
_LABEL = b"paystream/first-attempt-seal/v1"


@functools.lru_cache(maxsize=16)
def _seal_key(master: MasterKey) -> bytes:
    # A key of its own for this purpose: the master key itself only wraps data keys.
    return hmac.new(master.key, _LABEL, hashlib.sha256).digest()


def _message(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes], ms: int
) -> bytes:
    parts = [_LABEL, key or b"", value or b""]
    for name, header in sorted((k, v) for k, v in headers.items() if _COMMAND_HEADER(k)):
        parts += [name.encode(), header]
    parts.append(str(ms).encode())
    # Length-prefixed: no two different commands make the same message.
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


@dataclass(frozen=True)
class FirstAttemptSeals:
    """Seals first-attempt times with the current master key; opens them with any key in
    the keyring."""

    keyring: MasterKeyring | None

    @classmethod
    def from_settings(cls, settings: Settings) -> FirstAttemptSeals:
        return cls(None if settings.master_key is None else keyring_from_settings(settings))

    @property
    def sealing(self) -> bool:
        return self.keyring is not None

    def seal(
        self, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes], ms: int
    ) -> bytes | None:
        """The seal header's value for this command first run at ``ms`` (None: no key)."""
        if self.keyring is None:
            return None
        current = self.keyring.current
        mac = hmac.new(_seal_key(current), _message(key, value, headers, ms), hashlib.sha256)
        return f"{current.key_id}.{mac.hexdigest()}".encode()

    def first_attempt_ms(
        self, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
    ) -> int | None:
        """The first-attempt time a record on the commands topic carries, if believed:
        sealed for this very command by a key in the keyring (or, with no master key,
        any readable time)."""
        raw = headers.get(FIRST_ATTEMPT_HEADER)
        if raw is None:
            return None
        try:
            ms = int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        if self.keyring is None:
            return ms
        seal = headers.get(SEAL_HEADER)
        if seal is None:
            return None
        try:
            key_id, mac = seal.decode("ascii").split(".", 1)
            master = self.keyring.get(key_id)
        except (UnicodeDecodeError, ValueError, CryptoError):  # not ours (or a dropped key)
            return None
        expected = hmac.new(_seal_key(master), _message(key, value, headers, ms), hashlib.sha256)
        return ms if hmac.compare_digest(expected.hexdigest(), mac) else None
