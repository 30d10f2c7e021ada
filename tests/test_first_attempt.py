"""The first-attempt seal on its own: what it binds, and which keys open it."""

from __future__ import annotations

from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.tenancy.crypto import MasterKey, MasterKeyring

_HEADERS = {"ce_id": b"c1", "ce_type": b"com.paystream.command.payment.create", "x-trace": b"1"}


def _sent(seals: FirstAttemptSeals, ms: int = 1_000) -> dict[str, bytes]:
    headers = {**_HEADERS, FIRST_ATTEMPT_HEADER: str(ms).encode()}
    seal = seals.seal(b"acme", b"{}", headers, ms)
    assert seal is not None
    return {**headers, SEAL_HEADER: seal}


def test_a_seal_opens_only_for_the_command_and_time_it_was_made_for() -> None:
    seals = FirstAttemptSeals(MasterKeyring(MasterKey.generate()))
    headers = _sent(seals)
    seal = headers[SEAL_HEADER]
    # One hex digit changed (not "0" for "0": one seal in 16 ends in it, and was "tampered"
    # into itself, a CI failure).
    tampered = seal[:-1] + (b"1" if seal.endswith(b"0") else b"0")
    assert seals.first_attempt_ms(b"acme", b"{}", headers) == 1_000
    # Headers that are not the command's (tracing and the like) may change on the way.
    assert seals.first_attempt_ms(b"acme", b"{}", {**headers, "x-trace": b"2"}) == 1_000
    for key, value, changed in [
        (b"other", b"{}", {}),
        (b"acme", b'{"a":1}', {}),
        (b"acme", b"{}", {"ce_id": b"c2"}),
        (b"acme", b"{}", {"CE_SOURCE": b"/elsewhere"}),
        (b"acme", b"{}", {FIRST_ATTEMPT_HEADER: b"999"}),
        (b"acme", b"{}", {SEAL_HEADER: tampered}),
    ]:
        assert seals.first_attempt_ms(key, value, {**headers, **changed}) is None, changed


def test_retired_keys_open_seals_and_dropped_ones_do_not() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    headers = _sent(FirstAttemptSeals(MasterKeyring(old)))
    rotated = FirstAttemptSeals(MasterKeyring(old).rotated_to(new))
    assert rotated.first_attempt_ms(b"acme", b"{}", headers) == 1_000
    assert rotated.seal(b"acme", b"{}", headers, 1_000) != headers[SEAL_HEADER]  # new key
    assert FirstAttemptSeals(MasterKeyring(new)).first_attempt_ms(b"acme", b"{}", headers) is None


def test_without_a_master_key_a_readable_time_is_believed_as_it_stands() -> None:
    keyless = FirstAttemptSeals(None)
    assert keyless.seal(b"acme", b"{}", _HEADERS, 5) is None
    assert keyless.first_attempt_ms(b"acme", b"{}", {FIRST_ATTEMPT_HEADER: b"5"}) == 5
    assert keyless.first_attempt_ms(b"acme", b"{}", {FIRST_ATTEMPT_HEADER: b"soon"}) is None
    assert keyless.first_attempt_ms(b"acme", b"{}", {}) is None
