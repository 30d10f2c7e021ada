"""Customers' data keys against their rows, for ``audit verify``.

The application role has full DML on ``data_keys`` (the writer makes keys, an erasure
deletes one), and nothing audits a key: deleting one outside an erasure shreds that
customer's PII with every row still verifying, and a damaged one parks the customer's
events (review finding). Each customer not erased must have a key that unwraps and
opens every sealed event of theirs: the writer makes a missing key afresh (the ledger
goes on recording the customer), and one made again after the first was lost does not
open what that one sealed (review h60k: verify was clean then).
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from paystream.ledger.events import PII_FIELDS
from paystream.ledger.keys import SqlKeyStore
from paystream.ledger.models import Customer, DataKey, Event
from paystream.ledger.pii import open_event_data
from paystream.tenancy.crypto import (
    CryptoError,
    MasterKeyring,
    UnknownMasterKeyError,
    customer_key_ref,
    unwrap_data_key,
)

__all__ = ["KeyProblems", "customers_keys_checked"]

_PAGE = 500
# Erased customers with a key left, listed at most (one is already one too many).
_LEFT_MAX = 10_000


class KeyProblems:
    """Customer ids by what is wrong with their key."""

    def __init__(self) -> None:
        self.missing: list[str] = []  # no key, not erased: shredded outside an erasure
        self.damaged: list[str] = []  # does not unwrap under the master key it names
        self.unknown_master: list[str] = []  # under a master key the keyring lacks
        self.left_after_erasure: list[str] = []  # erased, and their key still there
        self.remade: list[str] = []  # their key does not open a sealed event of theirs

    def __bool__(self) -> bool:
        return bool(
            self.missing
            or self.damaged
            or self.unknown_master
            or self.left_after_erasure
            or self.remade
        )


async def customers_keys_checked(
    session: AsyncSession, keyring: MasterKeyring, tenant_id: str
) -> KeyProblems:
    """Page through the tenant's customers holding ciphertext (memory stays flat), and
    find erased customers whose key is still there: their sealed events still open
    (a row marked erased by something that was no erasure; review finding)."""
    found = KeyProblems()
    left = (
        select(Customer.customer_id)
        .join(
            DataKey,
            (DataKey.tenant_id == Customer.tenant_id)
            & (DataKey.key_ref == func.concat(customer_key_ref(""), Customer.customer_id)),
        )
        .where(Customer.erased_at.is_not(None))
        .order_by(Customer.customer_id)
        .limit(_LEFT_MAX)
    )
    found.left_after_erasure = list((await session.scalars(left)).all())
    store = SqlKeyStore(session)
    # Every customer not erased: each has had a key since its first row, sealing its
    # columns and its events' fields alike (description, metadata and phone are sealed in
    # events only: a key sealing just those was never checked; review h60k).
    after: str | None = None
    while True:
        page = (
            select(Customer.customer_id)
            .where(Customer.tenant_id == tenant_id, Customer.erased_at.is_(None))
            .order_by(Customer.customer_id)
            .limit(_PAGE)
        )
        if after is not None:
            page = page.where(Customer.customer_id > after)
        ids = list((await session.scalars(page)).all())
        if not ids:
            return found
        after = ids[-1]
        refs = {customer_key_ref(c): c for c in ids}
        wrapped = await store.get_many(tenant_id, refs)
        opened: dict[str, bytes] = {}
        for ref, customer_id in refs.items():
            key = wrapped.get(ref)
            if key is None:
                found.missing.append(customer_id)
                continue
            try:
                opened[customer_id] = unwrap_data_key(keyring, key, tenant_id, ref)
            except UnknownMasterKeyError:
                found.unknown_master.append(customer_id)
            except CryptoError:
                found.damaged.append(customer_id)
        found.remade += await _sealed_events_unopened(session, tenant_id, opened)


async def _sealed_events_unopened(
    session: AsyncSession, tenant_id: str, keys: dict[str, bytes]
) -> list[str]:
    """Those customers (of ``keys``, their unwrapped keys) with a sealed event their key
    does not open: it was made again after the one before was deleted or replaced
    outside an erasure (the writer makes a missing key afresh), or the event was
    altered. Every sealed event of theirs is opened, one decryption a field, trusting
    nothing the application role writes to pick one (a version, a timestamp, a row
    inserted to look sealed: reviews h60l, h60n)."""
    if not keys:
        return []
    maybe_sealed = or_(
        *(
            (func.jsonb_typeof(Event.data[name]) == "object") & Event.data[name].has_key("sealed")
            for name in PII_FIELDS
        )
    )
    events = select(Event.entity_id, Event.event_id, Event.data).where(
        Event.tenant_id == tenant_id,
        Event.entity_type == "customer",
        Event.entity_id.in_(list(keys)),
        maybe_sealed,
    )
    unopened: set[str] = set()
    for customer_id, event_id, data in (await session.execute(events)).tuples():
        if customer_id in unopened:
            continue
        try:
            # (As export opens it: a value shaped as no version seals is an alteration.)
            open_event_data(keys[customer_id], tenant_id, event_id, data)
        except CryptoError:
            unopened.add(customer_id)
    return sorted(unopened)
