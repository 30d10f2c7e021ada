"""Append-only audit trail with a per-tenant keyed hash chain, and its verifier.

Each row's hash is an HMAC-SHA256 of the previous row's hash and the row, under a key
derived from the master key current when it was written (``key_id`` names which). The
database never sees that key, so whoever can write the tables (a DBA, a stolen owner or
application credential, an edited backup) cannot write a row that verifies: an edited
row recomputed, or one inserted, has no key (or a key the keyring does not hold), and
:func:`verify_audit` reports every such row, wherever it sits in the chain.

Rotation: rows under a retired key still verify with it (keep it where verification
runs). ``paystream keys rotate`` appends a seal entry under the new key naming the keys
it retires; a row under one of those after that seal is reported (a leaked retired key
cannot extend the chain). Rows at the chain's end under a retired key not yet sealed
(workers still on the old key) are reported until a row under the current key follows
them, or :func:`seal_chain` ends the chain (``paystream audit seal``).

Rows without a key (written before migration 0004) are reported too: nothing tells them
from a forgery. An operator who knows the chain began before keying may accept unkeyed
rows *before the first keyed one* (``allow_unkeyed_prefix``); never after it.
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


async def verify_audit(
    engine: AsyncEngine,
    tenant_id: str,
    keyring: MasterKeyring,
    *,
    allow_unkeyed_prefix: bool = False,
) -> VerifyResult:
    """Walk the tenant's chain: every seq present, each prev_hash linked, each hash
    recomputed under the key its row names (which ``keyring`` must hold), no row unkeyed
    (but for an accepted prefix) or under a key a seal retired before it."""
    problems: list[str] = []
    keys: dict[str, bytes | None] = {}  # key id → MAC key (None: not in the keyring)
    current = keyring.current.key_id
    unkeyed: list[int] = []
    keyed_yet = False
    retired: dict[str, int] = {}  # key id → seq of the seal that retired it
    # Rows after the last one under the current key, under keys not yet sealed out.
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
            row = {c: getattr(entry, c) for c in _HASHED}
            key: bytes | None = None
            if entry.key_id is None:
                if keyed_yet or not allow_unkeyed_prefix:
                    unkeyed.append(entry.seq)
                else:  # an accepted prefix: the first keyed row after it covers it
                    tail_from = entry.seq if tail_from is None else tail_from
                    tail_keys.add(None)
            else:
                keyed_yet = True
                if entry.key_id not in keys:
                    keys[entry.key_id] = _key_in(keyring, entry.key_id)
                key = keys[entry.key_id]
                if key is None:
                    problems.append(
                        f"seq {entry.seq}: keyed under master key {entry.key_id!r}, which is "
                        "not in the keyring (PAYSTREAM_RETIRED_MASTER_KEYS): not verifiable"
                    )
                elif entry.key_id in retired:
                    problems.append(
                        f"seq {entry.seq}: under master key {entry.key_id!r}, which the seal "
                        f"at seq {retired[entry.key_id]} retired"
                    )
                elif entry.key_id == current:
                    tail_from, tail_keys = None, set()
                else:
                    tail_from = entry.seq if tail_from is None else tail_from
                    tail_keys.add(entry.key_id)
            intact = chain_hash(bytes(entry.prev_hash), tenant_id, entry.seq, row, key) == bytes(
                entry.hash
            )
            if (entry.key_id is None or key is not None) and not intact:
                problems.append(f"seq {entry.seq}: contents do not match its hash (altered)")
            elif key is not None and entry.action == SEAL_ACTION:
                for old in (entry.after or {}).get("retires") or ():
                    # (Never the current key: a seal under a leaked old key naming it
                    # would otherwise condemn every genuine row after it.)
                    if old not in (entry.key_id, current):
                        retired.setdefault(str(old), entry.seq)
            expected_seq, prev = entry.seq + 1, bytes(entry.hash)
        # Events stored but no chain at all: the whole of it was deleted.
        wiped = not checked and (await session.execute(select(Event.event_id).limit(1))).first()
    last_seq = expected_seq - 1
    if wiped:
        problems.append("events are recorded for this tenant but its audit chain is empty")
    if unkeyed:
        shown = ", ".join(map(str, unkeyed[:5])) + (", ..." if len(unkeyed) > 5 else "")
        problems.append(
            f"{len(unkeyed)} row(s) not keyed (seq {shown}): written before keyed chains "
            "(migration 0004) or by someone without the key; nothing tells them apart"
        )
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
        held = sorted("no key (accepted prefix)" if k is None else k for k in tail_keys)
        unsealed = (
            f"seq {tail_from}..{last_seq}, the end of the chain, are not under the current "
            f"master key but {', '.join(held)}: a row under the current key (the next "
            "event, `paystream audit seal`, or `paystream keys rotate` after a rotation) "
            "ends it"
        )
        problems.append(unsealed)
    return VerifyResult(tenant_id, checked, problems, unsealed)


# The row's fields the hash covers (with its tenant and seq).
_HASHED = ("occurred_at", "actor", "action", "entity_type", "entity_id", "before", "after")


SEAL_ACTION = "com.paystream.audit.sealed"


async def seal_chain(session: AsyncSession, tenant_id: str, keyring: MasterKeyring) -> bool:
    """End the tenant's chain under the current master key with a seal entry naming the
    keys retired by now, unless its last row already is and a seal already names them;
    False then, or when the tenant has no chain. Inside the caller's tenant transaction.
    It vouches for the rows under retired keys at the chain's end as they stand (verify
    first); unkeyed or unknown-key rows stay reported whatever follows them."""
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
    current = keyring.current.key_id
    retiring = {k.key_id for k in keyring.retired}
    latest_seal = (
        await session.execute(
            select(AuditLog.after)
            .where(AuditLog.action == SEAL_ACTION, AuditLog.key_id == current)
            .order_by(AuditLog.seq.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    retired_before = set((latest_seal or {}).get("retires") or ())
    if last_key == current and retiring <= retired_before:
        return False
    entry = AuditEntry(
        actor="system:audit-seal",
        action=SEAL_ACTION,
        entity_type="audit",
        entity_id=tenant_id,
        before={"seq": head.seq, "key_id": last_key},
        # The keys retired by now: a row under one of them after this seal is reported.
        after={
            "key_id": keyring.current.key_id,
            "retires": sorted(k.key_id for k in keyring.retired),
        },
        occurred_at=datetime.now(UTC),
    )
    await append_audit(session, tenant_id, [entry], keyring=keyring)
    return True


def _key_in(keyring: MasterKeyring, key_id: str) -> bytes | None:
    try:
        return audit_key(keyring.get(key_id))
    except CryptoError:
        return None
