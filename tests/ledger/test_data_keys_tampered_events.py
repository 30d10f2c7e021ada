"""`audit verify`'s check that each customer's key opens their sealed events, as review
h60n probed it: every sealed event is opened, so a row the application role inserts
(shaped to look sealed, or at a lower version) hides nothing; a value shaped otherwise
in a field every version seals is reported, not a crash; description and metadata an
older version stored in clear are no sealed values; a replay stored under a remade
key does not hide older events sealed under the lost one. And what holds: a rotation
in progress, erased customers with late events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import (
    export_customer,
    pii,
    rotate_master_key,
    tenant_session,
    verify_audit,
    write_events,
)
from paystream.ledger.models import DataKey, Event
from paystream.ledger.privacy import erase_customer
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring


async def _shred_and_remake(
    engine: AsyncEngine, keyring: MasterKeyring, make_event: Any, t: str
) -> None:
    """cus_1's key deleted outside an erasure; the writer makes it again (v2)."""
    await write_events(engine, [make_event.customer(t, "cus_1", version=1)], keyring=keyring)
    async with tenant_session(engine, t) as s:
        await s.execute(delete(DataKey).where(DataKey.key_ref == "customer/cus_1"))
    await write_events(engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    before = await verify_audit(engine, t, keyring)
    assert any("does not open" in p for p in before.problems), before.problems  # good so far


async def _app_role_inserts_event(engine: AsyncEngine, t: str, version: int, data: dict) -> None:
    async with tenant_session(engine, t) as s:  # the app role: INSERT on events is granted
        await s.execute(
            pg_insert(Event).values(
                tenant_id=t,
                event_id=f"forged_{version}",
                type="com.paystream.customer.created",
                entity_type="customer",
                entity_id="cus_1",
                entity_version=version,
                time=datetime.now(UTC),
                data=data,
            )
        )


@pytest.mark.parametrize("placeholder", ["sealed", ["sealed"]], ids=["string", "array"])
async def test_a_non_object_sealed_field_inserted_by_the_app_role_hides_no_remade_key(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any, placeholder: Any
) -> None:
    """JSONB `?` matches a string scalar or array element too: {"email": "sealed"} is
    picked as the customer's earliest sealed event, and open_event_data skips it (not a
    Mapping): nothing to decrypt, so the shredded key is no longer reported. One INSERT,
    no master key needed."""
    t = "hn1" + ("s" if placeholder == "sealed" else "a")
    await _shred_and_remake(app_engine, keyring, make_event, t)
    await _app_role_inserts_event(app_engine, t, 0, {"email": placeholder})
    after = await verify_audit(app_engine, t, keyring)
    assert not after.ok, "shredded+remade key hidden by one inserted events row"


async def test_a_malformed_sealed_value_is_reported_not_a_crash(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """A {"sealed": <not base64 / not a string>} value raises binascii.Error/TypeError,
    not CryptoError: verify of the whole tenant dies with a traceback."""
    t = "hn2"
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=1)], keyring=keyring)
    await _app_role_inserts_event(app_engine, t, 0, {"email": {"sealed": "abc"}})
    result = await verify_audit(app_engine, t, keyring)  # raises here
    assert any("cus_1" in p for p in result.problems), result.problems


@pytest.mark.parametrize("flag", ["sure", "yes", True], ids=["b64ok", "badpad", "bool"])
async def test_older_version_plain_metadata_with_a_sealed_key(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
    flag: Any,
) -> None:
    """Before d079e5a the ledger sealed email/name/address/phone only: description and
    metadata were stored in events as given. A customer of that version whose metadata
    holds a "sealed" key is taken for ciphertext: a false "key made again" or a crash.
    Nothing is wrong with this customer's key."""
    t = {"sure": "hn3a", "yes": "hn3b", True: "hn3c"}[flag]
    monkeypatch.setattr(pii, "PII_FIELDS", ("email", "name", "address", "phone"))  # old writer
    await write_events(
        app_engine,
        [make_event.customer(t, "cus_1", version=1, metadata={"sealed": flag})],
        keyring=keyring,
    )
    monkeypatch.undo()
    result = await verify_audit(app_engine, t, keyring)
    assert result.ok, result.problems


async def test_a_lower_version_replayed_after_the_remake_hides_nothing(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    """An outcome stored after a later version (replayed from the ledger's dead letters:
    writer._move_created_back) is sealed under the key of its storing time. v2 sealed
    under K1; K1 deleted; v3 remakes K2; v1 replayed -> sealed under K2, and being the
    lowest version it is the one checked: v2's lost data goes unreported."""
    t = "hn4"
    v1 = make_event.customer(t, "cus_1", version=1)
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        await s.execute(delete(DataKey).where(DataKey.key_ref == "customer/cus_1"))
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=3)], keyring=keyring)
    assert not (await verify_audit(app_engine, t, keyring)).ok  # reported: good
    await write_events(app_engine, [v1], keyring=keyring)  # the dead letter replayed
    with pytest.raises(CryptoError):  # v2's sealed data is lost for good
        await export_customer(app_engine, keyring, t, "cus_1")
    after = await verify_audit(app_engine, t, keyring)
    assert not after.ok, "v2 (under the deleted key) no longer opens, unreported"


async def test_an_older_version_s_plain_metadata_is_exported_as_it_is(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = "hn5"
    monkeypatch.setattr(pii, "PII_FIELDS", ("email", "name", "address", "phone"))
    await write_events(
        app_engine, [make_event.customer(t, "cus_1", metadata={"sealed": "sure"})], keyring=keyring
    )
    monkeypatch.undo()
    exported = await export_customer(app_engine, keyring, t, "cus_1")
    assert exported["customer"]["email"] == "cus_1@example.com"


async def test_rotation_in_progress_and_retired_key_in_keyring(
    app_engine: AsyncEngine, make_event: Any
) -> None:
    old = MasterKeyring(MasterKey.generate())
    t = "hs1"
    await write_events(app_engine, [make_event.customer(t, "cus_1")], keyring=old)
    new = old.rotated_to(MasterKey.generate())
    await write_events(app_engine, [make_event.customer(t, "cus_2")], keyring=new)  # mixed
    r = await verify_audit(app_engine, t, new)
    assert not any("does not open" in p for p in r.problems), r.problems
    await rotate_master_key(app_engine, new, [t])
    r = await verify_audit(app_engine, t, new)
    assert not any("does not open" in p for p in r.problems), r.problems


async def test_erased_customer_with_late_events_and_related_customer_events(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: Any
) -> None:
    t = "hs2"
    await write_events(app_engine, [make_event.customer(t, "cus_1", version=2)], keyring=keyring)
    await erase_customer(app_engine, t, "cus_1", keyring=keyring)
    await write_events(
        app_engine,
        [make_event.customer(t, "cus_1", version=1), make_event.customer(t, "cus_1", version=3)],
        keyring=keyring,
    )
    # an erasure that overtook the customer's events (tombstone)
    await erase_customer(app_engine, t, "cus_9", keyring=keyring)
    await write_events(app_engine, [make_event.customer(t, "cus_9", version=1)], keyring=keyring)
    # a customer with no PII at all, then PII
    await write_events(
        app_engine,
        [make_event(t, "customer", "cus_3", 1, {"provider_customer_id": "x"})],
        keyring=keyring,
    )
    await write_events(app_engine, [make_event.customer(t, "cus_3", version=2)], keyring=keyring)
    r = await verify_audit(app_engine, t, keyring)
    assert r.ok, r.problems
