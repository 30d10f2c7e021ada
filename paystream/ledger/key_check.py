"""Customers' data keys against their rows, for ``audit verify``.

The application role has full DML on ``data_keys`` (the writer makes keys, an erasure
deletes one), and nothing audits a key: deleting one outside an erasure shreds that
customer's PII with every row still verifying, and a damaged one parks the customer's
events (review finding). Each customer row that still holds ciphertext and is not
erased must have a key that unwraps.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from paystream.ledger.keys import SqlKeyStore
from paystream.ledger.models import Customer
from paystream.tenancy.crypto import (
    CryptoError,
    MasterKeyring,
    UnknownMasterKeyError,
    customer_key_ref,
    unwrap_data_key,
)

__all__ = ["KeyProblems", "customers_keys_checked"]

_PAGE = 500


class KeyProblems:
    """Customer ids by what is wrong with their key."""

    def __init__(self) -> None:
        self.missing: list[str] = []  # no key, not erased: shredded outside an erasure
        self.damaged: list[str] = []  # does not unwrap under the master key it names
        self.unknown_master: list[str] = []  # under a master key the keyring lacks

    def __bool__(self) -> bool:
        return bool(self.missing or self.damaged or self.unknown_master)


async def customers_keys_checked(
    session: AsyncSession, keyring: MasterKeyring, tenant_id: str
) -> KeyProblems:
    """Page through the tenant's customers holding ciphertext (memory stays flat)."""
    found = KeyProblems()
    store = SqlKeyStore(session)
    sealed = or_(
        Customer.email_ciphertext.is_not(None),
        Customer.name_ciphertext.is_not(None),
        Customer.address_ciphertext.is_not(None),
    )
    after: str | None = None
    while True:
        page = (
            select(Customer.customer_id)
            .where(sealed, Customer.erased_at.is_(None))
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
        for ref, customer_id in refs.items():
            key = wrapped.get(ref)
            if key is None:
                found.missing.append(customer_id)
                continue
            try:
                unwrap_data_key(keyring, key, tenant_id, ref)
            except UnknownMasterKeyError:
                found.unknown_master.append(customer_id)
            except CryptoError:
                found.damaged.append(customer_id)
