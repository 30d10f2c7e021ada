"""A stored secret that is no sealed value is refused without quoting parts of it (review
h64e: the format and master key id segments of a hand-written value were quoted, and a
plaintext secret with dots in it would have had a part of it in the worker's log)."""

from __future__ import annotations

import pytest

from paystream.tenancy import crypto
from paystream.tenancy.secrets import _parts

SECRET = "sk_live_abcdefghijklmnop"


@pytest.mark.parametrize("stored", [f"{SECRET}.x.eA==.eA==", f"v2{SECRET}.mk-0.eA==.eA=="])
def test_an_unknown_format_is_not_quoted(stored: str) -> None:
    with pytest.raises(crypto.CryptoError) as refused:
        _parts("api_key", stored)
    assert "sk_live" not in str(refused.value), refused.value


def test_a_format_name_is_quoted() -> None:
    with pytest.raises(crypto.CryptoError, match="'v2'"):
        _parts("api_key", "v2.mk-0123456789abcdef.eA==.eA==")


def test_an_unknown_master_key_is_named_only_when_it_reads_as_a_key_id() -> None:
    ring = crypto.MasterKeyring(crypto.MasterKey.generate())
    with pytest.raises(crypto.UnknownMasterKeyError) as refused:
        ring.get(SECRET)
    assert "sk_live" not in str(refused.value)
    with pytest.raises(crypto.UnknownMasterKeyError, match="'mk-0123456789abcdef'"):
        ring.get("mk-0123456789abcdef")
