"""The first-attempt seal is over its parts length-prefixed: bytes moved from one part to
the next (the key into the value, the last command header into the time) make another
command, or another time, that the seal does not open for."""

from __future__ import annotations

from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.tenancy.crypto import MasterKey, MasterKeyring


def _sealed(
    seals: FirstAttemptSeals, key: bytes, value: bytes, headers: dict[str, bytes], ms: int
) -> dict[str, bytes]:
    headers = {**headers, FIRST_ATTEMPT_HEADER: str(ms).encode()}
    seal = seals.seal(key, value, headers, ms)
    assert seal is not None
    return {**headers, SEAL_HEADER: seal}


def test_bytes_moved_between_key_and_value_make_another_command() -> None:
    seals = FirstAttemptSeals(MasterKeyring(MasterKey.generate()))
    headers = _sealed(seals, b"acme", b'{"a":1}', {"ce_id": b"c1"}, 1_000)
    assert seals.first_attempt_ms(b"acme", b'{"a":1}', headers) == 1_000
    assert seals.first_attempt_ms(b"acm", b'e{"a":1}', headers) is None


def test_a_headers_last_digit_moved_into_the_time_does_not_make_it_older() -> None:
    seals = FirstAttemptSeals(MasterKeyring(MasterKey.generate()))
    # "content-type" sorts last of the command's headers: its value ends right before
    # the time in the sealed message.
    headers = _sealed(seals, b"acme", b"{}", {"ce_id": b"c1", "content-type": b"v1"}, 17)
    forged = {**headers, "content-type": b"v11", FIRST_ATTEMPT_HEADER: b"7"}
    assert seals.first_attempt_ms(b"acme", b"{}", forged) is None
