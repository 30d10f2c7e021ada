"""Append-only audit trail with a per-tenant keyed hash chain, and its verifier.

Each row's hash is an HMAC-SHA256 of the previous row's hash and the row, under a key
derived from the master key current when it was written (``key_id`` names which). The
database never sees that key: whoever can write the tables (a DBA, a stolen owner
credential, an edited backup) can no longer rewrite a row and recompute the chain
after it, which a plain hash allowed.

A row under the current master key vouches for every row before it (its MAC covers
their hashes). Rows *after* the last one under the current key (written unkeyed, before
migration 0004, or under a key since retired, which may have leaked) could be rewritten
by whoever holds their key: :func:`verify_audit` reports such a tail, and
:func:`seal_chain` (``paystream audit seal``; ``paystream keys rotate`` runs it for every
tenant) ends the chain under the current key with a seal entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.models import AuditHead, AuditLog, Event
from paystream.ledger.session import tenant_session
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "VerifyResult",
    "append_audit",
    "audit_key",
    "chain_hash",
    "lock_tenant",
    "seal_chain",
    "verify_audit",
]

GENESIS_HASH = bytes(32)


@dataclass(frozen=True)
class AuditEntry:
    """Who (actor) did what (action) to which entity, with before/after summaries (no PII)."""

    actor: str
    action: str
    entity_type: str
    entity_id: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    occurred_at: datetime


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_audit`; ``problems`` names each bad or missing row."""

    tenant_id: str
    checked: int
    problems: list[str] = field(default_factory=list)
    # The chain's end not under the current master key (one of ``problems``): sealing
    # it is the remedy, once the rest verifies.
    unsealed: str | None = None

    @property
    def ok(self) -> bool:
        """True when the chain is complete and every row hashes to what it says."""
        return not self.problems


def _json_normal(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Hash exactly what JSONB will give back: plain JSON types, str keys.
    return None if value is None else json.loads(json.dumps(value, default=str))


def _canonical(tenant_id: str, seq: int, row: Mapping[str, Any]) -> bytes:
    occurred_at: datetime = row["occurred_at"]
    doc = {
        "tenant_id": tenant_id,
        "seq": seq,
        "occurred_at": occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row["actor"],
        "action": row["action"],
        "entity_type": row["entity_type"],
        "entity_id": row["entity_id"],
        "before": row["before"],
        "after": row["after"],
    }
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def audit_key(master: MasterKey) -> bytes:
    """The chain's MAC key under ``master``: derived, so the master key itself is only
    ever used to wrap keys."""
    return hmac.new(master.key, b"paystream/audit-chain/v1", hashlib.sha256).digest()


def chain_hash(
    prev_hash: bytes, tenant_id: str, seq: int, row: Mapping[str, Any], key: bytes | None
) -> bytes:
    """HMAC-SHA256(key, prev_hash || canonical JSON of the row); sha256 of the same for
    an unkeyed row (``key`` None: written before chains were keyed)."""
    message = prev_hash + _canonical(tenant_id, seq, row)
    if key is None:
        return hashlib.sha256(message).digest()
    return hmac.new(key, message, hashlib.sha256).digest()


async def lock_tenant(session: AsyncSession, tenant_id: str) -> tuple[int, bytes]:
    """Lock the tenant's audit head row (creating it) and return its (seq, hash).

    Every ledger write for a tenant takes this lock first, which serialises audit
    appends (so the chain never forks) and erasure against concurrent sink writes.
    """
    await session.execute(
        pg_insert(AuditHead)
        .values(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)
        .on_conflict_do_nothing()
    )
    head = (
        await session.execute(
            select(AuditHead.seq, AuditHead.hash)
            .where(AuditHead.tenant_id == tenant_id)
            .with_for_update()
        )
    ).one()
    return int(head.seq), bytes(head.hash)


async def append_audit(
    session: AsyncSession,
    tenant_id: str,
    entries: Sequence[AuditEntry],
    *,
    keyring: MasterKeyring,
) -> None:
    """Append entries to the tenant's chain inside the caller's tenant transaction,
    keyed under the keyring's current master key."""
    if not entries:
        return
    master = keyring.current
    key = audit_key(master)
    seq, prev = await lock_tenant(session, tenant_id)
    rows = []
    for entry in entries:
        if entry.occurred_at.tzinfo is None:
            raise ValueError("audit occurred_at must be timezone-aware")
        seq += 1
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            "seq": seq,
            "occurred_at": entry.occurred_at,
            "actor": entry.actor,
            "action": entry.action,
            "entity_type": entry.entity_type,
            "entity_id": entry.entity_id,
            "before": _json_normal(entry.before),
            "after": _json_normal(entry.after),
            "prev_hash": prev,
            "key_id": master.key_id,
        }
        row["hash"] = prev = chain_hash(prev, tenant_id, seq, row, key)
        rows.append(row)
    for start in range(0, len(rows), 1000):
        await session.execute(pg_insert(AuditLog).values(rows[start : start + 1000]))
    await session.execute(
        update(AuditHead).where(AuditHead.tenant_id == tenant_id).values(seq=seq, hash=prev)
    )


async def verify_audit(engine: AsyncEngine, tenant_id: str, keyring: MasterKeyring) -> VerifyResult:
    """Walk the tenant's chain: every seq present, each prev_hash linked, each hash
    recomputed under the key its row names (which ``keyring`` must hold)."""
    problems: list[str] = []
    keys: dict[str, bytes | None] = {}  # key id → MAC key (None: not in the keyring)
    current = keyring.current.key_id
    # Rows after the last one under the current key: (first seq, key ids) of that tail.
    tail_from: int | None = None
    tail_keys: set[str | None] = set()
    expected_seq, prev, checked = 1, GENESIS_HASH, 0
    # One snapshot for the head and the rows: a batch committed between the two reads
    # would otherwise look like a head out of step with its chain (tampering).
    async with tenant_session(engine, tenant_id, snapshot=True) as session:
        head = (await session.execute(select(AuditHead.seq, AuditHead.hash))).one_or_none()
        stream = await session.stream(
            select(AuditLog).order_by(AuditLog.seq).execution_options(yield_per=1000)
        )
        async for (entry,) in stream:
            checked += 1
            if entry.seq != expected_seq:
                problems.append(f"rows {expected_seq}..{entry.seq - 1} are missing")
            if bytes(entry.prev_hash) != prev:
                problems.append(f"seq {entry.seq}: prev_hash does not link to the previous row")
            row = {
                c: getattr(entry, c)
                for c in (
                    "occurred_at",
                    "actor",
                    "action",
                    "entity_type",
                    "entity_id",
                    "before",
                    "after",
                )
            }
            if entry.key_id == current:
                tail_from, tail_keys = None, set()
            else:
                tail_from = entry.seq if tail_from is None else tail_from
                tail_keys.add(entry.key_id)
            if entry.key_id is None:
                key = None
            else:
                if entry.key_id not in keys:
                    keys[entry.key_id] = _key_in(keyring, entry.key_id)
                key = keys[entry.key_id]
                if key is None:
                    problems.append(
                        f"seq {entry.seq}: keyed under master key {entry.key_id!r}, which is "
                        "not in the keyring (PAYSTREAM_RETIRED_MASTER_KEYS): not verifiable"
                    )
            if (entry.key_id is None or key is not None) and chain_hash(
                bytes(entry.prev_hash), tenant_id, entry.seq, row, key
            ) != bytes(entry.hash):
                problems.append(f"seq {entry.seq}: contents do not match its hash (altered)")
            expected_seq, prev = entry.seq + 1, bytes(entry.hash)
        # Events stored but no chain at all: the whole of it was deleted.
        wiped = not checked and (await session.execute(select(Event.event_id).limit(1))).first()
    last_seq = expected_seq - 1
    if wiped:
        problems.append("events are recorded for this tenant but its audit chain is empty")
    if head is None:
        if checked:
            problems.append("audit head is missing")
    elif head.seq != last_seq or bytes(head.hash) != prev:
        if head.seq > last_seq:
            problems.append(f"rows {last_seq + 1}..{head.seq} are missing (head is at {head.seq})")
        else:
            problems.append(f"head (seq {head.seq}) does not match the last row (seq {last_seq})")
    unsealed = None
    if tail_from is not None:
        held = sorted("no key (written before keyed chains)" if k is None else k for k in tail_keys)
        unsealed = (
            f"seq {tail_from}..{last_seq}, the end of the chain, are not under the current "
            f"master key but {', '.join(held)}: whoever holds that could rewrite them; "
            "`paystream audit seal` (after a rotation, `paystream keys rotate`) ends the "
            "chain under the current key"
        )
        problems.append(unsealed)
    return VerifyResult(tenant_id, checked, problems, unsealed)


SEAL_ACTION = "com.paystream.audit.sealed"


async def seal_chain(session: AsyncSession, tenant_id: str, keyring: MasterKeyring) -> bool:
    """End the tenant's chain under the current master key (a seal entry), unless its last
    row already is; False then, or when the tenant has no chain. Inside the caller's
    tenant transaction. Sealing vouches for the chain as it stands: verify it first."""
    head = (
        await session.execute(
            select(AuditHead.seq).where(AuditHead.tenant_id == tenant_id).with_for_update()
        )
    ).one_or_none()
    if head is None or head.seq == 0:
        return False
    last_key = (
        await session.execute(select(AuditLog.key_id).where(AuditLog.seq == head.seq))
    ).scalar_one_or_none()
    if last_key == keyring.current.key_id:
        return False
    entry = AuditEntry(
        actor="system:audit-seal",
        action=SEAL_ACTION,
        entity_type="audit",
        entity_id=tenant_id,
        before={"seq": head.seq, "key_id": last_key},
        after={"key_id": keyring.current.key_id},
        occurred_at=datetime.now(UTC),
    )
    await append_audit(session, tenant_id, [entry], keyring=keyring)
    return True


def _key_in(keyring: MasterKeyring, key_id: str) -> bytes | None:
    try:
        return audit_key(keyring.get(key_id))
    except CryptoError:
        return None
