"""Append-only audit trail with a per-tenant hash chain, and its verifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.models import AuditHead, AuditLog
from paystream.ledger.session import tenant_session

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "VerifyResult",
    "append_audit",
    "lock_tenant",
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


def chain_hash(prev_hash: bytes, tenant_id: str, seq: int, row: Mapping[str, Any]) -> bytes:
    """sha256(prev_hash || canonical JSON of the row)."""
    return hashlib.sha256(prev_hash + _canonical(tenant_id, seq, row)).digest()


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
    session: AsyncSession, tenant_id: str, entries: Sequence[AuditEntry]
) -> None:
    """Append entries to the tenant's chain inside the caller's tenant transaction."""
    if not entries:
        return
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
        }
        row["hash"] = prev = chain_hash(prev, tenant_id, seq, row)
        rows.append(row)
    for start in range(0, len(rows), 1000):
        await session.execute(pg_insert(AuditLog).values(rows[start : start + 1000]))
    await session.execute(
        update(AuditHead).where(AuditHead.tenant_id == tenant_id).values(seq=seq, hash=prev)
    )


async def verify_audit(engine: AsyncEngine, tenant_id: str) -> VerifyResult:
    """Walk the tenant's chain: every seq present, each prev_hash linked, each hash recomputed."""
    problems: list[str] = []
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
            if chain_hash(bytes(entry.prev_hash), tenant_id, entry.seq, row) != bytes(entry.hash):
                problems.append(f"seq {entry.seq}: contents do not match its hash (altered)")
            expected_seq, prev = entry.seq + 1, bytes(entry.hash)
    last_seq = expected_seq - 1
    if head is None:
        if checked:
            problems.append("audit head is missing")
    elif head.seq != last_seq or bytes(head.hash) != prev:
        if head.seq > last_seq:
            problems.append(f"rows {last_seq + 1}..{head.seq} are missing (head is at {head.seq})")
        else:
            problems.append(f"head (seq {head.seq}) does not match the last row (seq {last_seq})")
    return VerifyResult(tenant_id, checked, problems)
