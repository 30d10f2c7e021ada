"""paystream's own commands, known by a seal under the master key (paystream/origin_seal.py)."""

from __future__ import annotations

import pytest

from paystream.origin_seal import ORIGIN_HEADER, OriginSeals
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring

_HEADERS = {"ce_id": b"whk_abc", "ce_type": b"com.paystream.command.payment.refresh"}
_VALUE = b'{"payment_id": "pay_a"}'


def _sealed(seals: OriginSeals, headers: dict[str, bytes] = _HEADERS) -> dict[str, bytes]:
    return {**headers, ORIGIN_HEADER: seals.seal(b"acme", _VALUE, headers)}


def test_a_sealed_command_is_ours_and_nothing_else_is() -> None:
    seals = OriginSeals(MasterKeyring(MasterKey.generate()))
    headers = _sealed(seals)
    assert seals.sealed(b"acme", _VALUE, headers)
    # Moved to another tenant, its data or an attribute changed, an attribute added.
    assert not seals.sealed(b"globex", _VALUE, headers)
    assert not seals.sealed(b"acme", b'{"payment_id": "pay_b"}', headers)
    assert not seals.sealed(b"acme", _VALUE, {**headers, "ce_id": b"whk_other"})
    assert not seals.sealed(b"acme", _VALUE, {**headers, "ce_idempotencykey": b"k"})
    # Other headers are not part of it (a tracing proxy may add some).
    assert seals.sealed(b"acme", _VALUE, {**headers, "x-trace": b"1"})
    for forged in (b"", b"nodot", b"mk-0.00", b"\xff.\xff", headers[ORIGIN_HEADER] + b"0"):
        assert not seals.sealed(b"acme", _VALUE, {**headers, ORIGIN_HEADER: forged})
    assert not seals.sealed(b"acme", _VALUE, _HEADERS)  # no seal at all


def test_another_master_key_opens_nothing_and_a_retired_one_still_does() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    headers = _sealed(OriginSeals(MasterKeyring(old)))
    assert not OriginSeals(MasterKeyring(new)).sealed(b"acme", _VALUE, headers)
    assert OriginSeals(MasterKeyring(new, (old,))).sealed(b"acme", _VALUE, headers)


def test_without_a_master_key_nothing_is_sealed_or_believed() -> None:
    headers = _sealed(OriginSeals(MasterKeyring(MasterKey.generate())))
    assert not OriginSeals(None).sealed(b"acme", _VALUE, headers)
    with pytest.raises(CryptoError):
        OriginSeals(None).seal(b"acme", _VALUE, _HEADERS)


def test_a_worker_given_the_new_key_as_retired_opens_what_a_restarted_one_seals() -> None:
    """Master-key rotation, step 0 (README): each worker first opens the new key, then
    seals with it. Without step 0, a worker not yet restarted read a restarted one's
    webhook refresh as the tenant's own (review h59h)."""

    old, new = MasterKey.generate(), MasterKey.generate()
    value = b'{"payment_id": "pay_1"}'
    headers = {"ce_id": b"whk_1", "ce_type": b"com.paystream.command.payment.refresh"}
    restarted = OriginSeals(MasterKeyring(new, (old,)))
    sealed = {**headers, ORIGIN_HEADER: restarted.seal(b"acme", value, headers)}
    assert OriginSeals(MasterKeyring(old, (new,))).sealed(b"acme", value, sealed)
    assert not OriginSeals(MasterKeyring(old)).sealed(b"acme", value, sealed)
