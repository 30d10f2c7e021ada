"""Append-only audit trail with a per-tenant keyed hash chain, and its verifier.

Each row's hash is an HMAC-SHA256 of the previous row's hash and the row, under a key
derived from the master key current when it was written (``key_id`` names which). The
database never sees that key, so whoever writes through the application role (a stolen
credential, an injected statement) cannot write a row that verifies: an edited row
recomputed, or one inserted, has no key or a key the keyring does not hold, and
:func:`verify_audit` reports it wherever it sits, whatever is written after it.

Two kinds of row are accepted on records only the owner writes (so the owner, who can
also disable the triggers, is trusted with the chain's history; see the ledger README):

* unkeyed rows in the ranges the version before keyed chains wrote, which migration
  0004 recorded in ``audit_legacy`` (with the hash of each range's last row);
* rows under a *retired* master key up to where ``paystream keys rotate`` recorded its
  retirement for the tenant (``audit_key_retirements``, as the owner; 0 for a tenant
  first seen after it): a leaked old key cannot extend a chain past its retirement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from paystream.ledger.chunks import execute_in_chunks
from paystream.ledger.event_check import chain_wiped, events_ahead_of_their_rows
from paystream.ledger.key_check import KeyProblems, customers_keys_checked
from paystream.ledger.models import (
    AuditHead,
    AuditKeyRetirement,
    AuditLegacy,
    AuditLog,
    MasterKeySeen,
    table_of,
)
from paystream.ledger.session import tenant_session
from paystream.tenancy.crypto import CryptoError, MasterKey, MasterKeyring, UnknownMasterKeyError

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "VerifyResult",
    "append_audit",
    "audit_key",
    "chain_hash",
    "lock_tenant",
    "record_retirements",
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
    await _chain_key_held(session, tenant_id, seq, keyring)
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
    # In order: each row's predecessor is in before it (0009's trigger checks the link).
    await execute_in_chunks(session, pg_insert(table_of(AuditLog)), rows)
    await session.execute(
        update(AuditHead).where(AuditHead.tenant_id == tenant_id).values(seq=seq, hash=prev)
    )


async def _chain_key_held(
    session: AsyncSession, tenant_id: str, seq: int, keyring: MasterKeyring
) -> None:
    """Refuse to extend a chain whose newest row is under a master key this keyring
    lacks and no rotation retired (review h67l: a worker on the wrong key); to extend one
    past a key `keys rotate` retired, or begin one (or extend one ending in an unkeyed
    row, which names no key), with a keyring of which the ledger has recorded no key
    (migration 0012; a chain begun on a ledger that has seen no key takes the first)."""
    key_id = None
    if seq > 0:
        key_id = await session.scalar(
            select(AuditLog.key_id).where(AuditLog.tenant_id == tenant_id, AuditLog.seq == seq)
        )
    if key_id is None:
        await _refuse_unless_ledger_has_seen(session, tenant_id, keyring, may_be_first=True)
        return
    if _key_in(keyring, key_id) is not None:
        return
    retired = await session.scalar(
        select(func.count())
        .select_from(AuditKeyRetirement)
        .where(AuditKeyRetirement.key_id == key_id)
    )
    if not retired:
        raise UnknownMasterKeyError(
            f"tenant {tenant_id}'s audit chain ends under master key {key_id!r}, which is "
            "neither in the keyring nor retired by `paystream keys rotate`: is "
            "PAYSTREAM_MASTER_KEY the right key?"
        )
    # Past a retired key the chain names no key this keyring holds: extended only by a
    # keyring the ledger knows (`keys rotate` recorded the key it made current), else a
    # wrong key's first write here made it one the ledger "has seen" (review h71i); never
    # as a first key (a one-tenant ledger rotated before 0012 has no other's: h71k).
    await _refuse_unless_ledger_has_seen(session, tenant_id, keyring, may_be_first=False)


async def _refuse_unless_ledger_has_seen(
    session: AsyncSession, tenant_id: str, keyring: MasterKeyring, *, may_be_first: bool
) -> None:
    """Refuse a keyring holding no master key the ledger has seen (another tenant's audit
    rows or data keys, or made current by `keys rotate`); ``may_be_first``: a chain
    begun, on a ledger that has seen no key, takes this one. Row-level security hides
    other tenants' rows, so the owner's function answers (migration 0012), from other
    tenants' rows (the tenant's own data keys, made in this transaction, vouch for
    nothing). Else a worker started with another environment's or a mistyped key began
    new tenants' chains, and wrapped their customers' data keys, under it, and nothing
    said so until `audit verify`."""
    held = sorted({keyring.current.key_id, *(k.key_id for k in keyring.retired)})
    known = await session.scalar(
        text("SELECT ledger_master_key_known(:tenant, CAST(:ids AS text[]), :first)"),
        {"tenant": tenant_id, "ids": held, "first": may_be_first},
    )
    if not known:
        where = "names no master key yet" if may_be_first else "ends under a retired key"
        raise UnknownMasterKeyError(
            f"tenant {tenant_id}'s audit chain {where}, and the ledger has seen none of "
            f"this keyring's keys ({', '.join(held)}): is PAYSTREAM_MASTER_KEY the right "
            "key? (After a rotation, the old key in PAYSTREAM_RETIRED_MASTER_KEYS, or "
            "`paystream keys rotate` run again, makes the new one known.)"
        )


async def verify_audit(engine: AsyncEngine, tenant_id: str, keyring: MasterKeyring) -> VerifyResult:
    """Walk the tenant's chain: every seq present, each prev_hash linked, each hash
    recomputed under the key its row names (which ``keyring`` must hold); an unkeyed
    row, or one under a retired key, only where the records above accept it."""
    problems: list[str] = []
    keys: dict[str, bytes | None] = {}  # key id → MAC key (None: not in the keyring)
    current = keyring.current.key_id
    unkeyed: list[int] = []
    past_retirement: dict[str, list[int]] = {}  # retired key id → seqs beyond its record
    expected_seq, prev, checked = 1, GENESIS_HASH, 0
    # One snapshot for the head, the records and the rows: a batch committed between the
    # reads would otherwise look like a head out of step with its chain (tampering).
    async with tenant_session(engine, tenant_id, snapshot=True) as session:
        head = (await session.execute(select(AuditHead.seq, AuditHead.hash))).one_or_none()
        legacy = [
            (int(r.from_seq), int(r.seq), bytes(r.hash))
            for r in await session.execute(
                select(AuditLegacy.from_seq, AuditLegacy.seq, AuditLegacy.hash)
            )
        ]
        legacy_ends = {end: digest for _, end, digest in legacy}
        retired_through = {
            r.key_id: int(r.through_seq)
            for r in await session.execute(
                select(AuditKeyRetirement.key_id, AuditKeyRetirement.through_seq)
            )
        }
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
                if not any(start <= entry.seq <= end for start, end, _ in legacy):
                    unkeyed.append(entry.seq)
            else:
                if entry.key_id not in keys:
                    keys[entry.key_id] = _key_in(keyring, entry.key_id)
                key = keys[entry.key_id]
                if key is None:
                    problems.append(
                        f"seq {entry.seq}: keyed under master key {entry.key_id!r}, which is "
                        "not in the keyring (PAYSTREAM_RETIRED_MASTER_KEYS): not verifiable"
                    )
                elif entry.key_id != current and entry.seq > retired_through.get(entry.key_id, 0):
                    past_retirement.setdefault(entry.key_id, []).append(entry.seq)
            if (entry.key_id is None or key is not None) and chain_hash(
                bytes(entry.prev_hash), tenant_id, entry.seq, row, key
            ) != bytes(entry.hash):
                problems.append(f"seq {entry.seq}: contents do not match its hash (altered)")
            if entry.seq in legacy_ends and bytes(entry.hash) != legacy_ends[entry.seq]:
                problems.append(
                    f"seq {entry.seq}: not the row migration 0004 found there (older version's)"
                )
            expected_seq, prev = entry.seq + 1, bytes(entry.hash)
        # Events stored but no chain at all: the whole of it was deleted (but for the
        # events a migration listed for `paystream ledger backfill` while they wait for
        # it: chain_wiped).
        wiped = not checked and await chain_wiped(session, tenant_id)
        last_seq = expected_seq - 1
        head_ok = (head is None and not checked) or (
            head is not None and head.seq == last_seq and bytes(head.hash) == prev
        )
        # Rows against a chain that verified (a broken one is reported as such below).
        chain_ok = head_ok and not (problems or wiped or unkeyed or past_retirement)
        altered = await _rows_unlike_their_audit(session) if chain_ok else {}
        unlinked = await _entries_unlike_the_one_before(session) if chain_ok else {}
        data_keys = await customers_keys_checked(session, keyring, tenant_id)
        unapplied = await events_ahead_of_their_rows(session)
        backfill = await events_ahead_of_their_rows(session, awaiting_backfill=True)
        from paystream.ledger.tax_fill import rows_missing_tax_columns  # (loads 0015's text)

        untaxed = await rows_missing_tax_columns(session)
    if wiped:
        problems.append("events are recorded for this tenant but its audit chain is empty")
    for entity_type, ids in sorted(altered.items()):
        problems.append(
            f"{len(ids)} {entity_type} row(s) ({_some(ids)}) not as their last audit entry "
            "left them: changed without an audit entry (an events row alone vouches for "
            "nothing: the app role may insert one)"
        )
    for entity_type, seqs in sorted(unlinked.items()):
        problems.append(
            f"{len(seqs)} {entity_type} audit entr(ies) (seq {_some(seqs)}) found the row "
            "other than the entity's entry before left it: changed between them without an "
            "audit entry (a later genuine write does not make that good)"
        )
    problems += _key_problems(data_keys)
    for entity_type, (count, some) in sorted(unapplied.items()):
        problems.append(
            f"{count} stored {entity_type} event(s) ({_some(some)}) "
            "ahead of their entity row: never applied (an events row the app role inserted "
            "under an id not stored yet; the genuine outcome was skipped as its replay)"
        )
    from paystream.ledger.writer import BACKFILLED_TYPES  # (writer imports this)

    # (A wiped chain's listed events are not waiting: the backfill refuses to rebuild it.)
    for entity_type, (count, some) in [] if wiped else sorted(backfill.items()):
        problems.append(
            f"{count} {entity_type} event(s) ({_some(some)}) stored before migration "
            f"{BACKFILLED_TYPES.get(entity_type, '0013')} gave them a table have no row yet: "
            "run `paystream ledger backfill --tenant` for this tenant (they are not covered "
            "until then)"
        )
    for table, (count, some) in sorted(untaxed.items()):
        problems.append(
            f"{count} {table} row(s) ({_some(some)}) lack the tax columns (migration 0015) "
            "the event of their version carries: written by a worker of the release before "
            "0015 after it ran (a rolling upgrade); `ledger tax-report` leaves their tax out "
            "until `paystream ledger backfill --unlisted --tenant` fills them for this tenant "
            "(once every worker runs this release)"
        )
    if unkeyed:
        problems.append(
            f"{len(unkeyed)} row(s) not keyed (seq {_some(unkeyed)}), outside what the "
            "version before keyed chains wrote (as migration 0004 recorded): written by "
            "someone without the key"
        )
    for key_id, seqs in sorted(past_retirement.items()):
        through = retired_through.get(key_id)
        recorded = (
            f"past seq {through}, where `paystream keys rotate` recorded its retirement"
            if through is not None
            else "and `paystream keys rotate` has recorded none under it"
        )
        problems.append(
            f"{len(seqs)} row(s) under retired master key {key_id!r} (seq {_some(seqs)}) "
            f"{recorded} for this tenant: a worker still on that key after the rotation, "
            "or whoever holds it"
        )
    if head is None:
        if checked:
            problems.append("audit head is missing")
    elif head.seq != last_seq or bytes(head.hash) != prev:
        if head.seq > last_seq:
            problems.append(f"rows {last_seq + 1}..{head.seq} are missing (head is at {head.seq})")
        elif head.seq == last_seq:
            problems.append(f"head's hash does not match the last row's (seq {last_seq})")
        else:
            problems.append(f"head (seq {head.seq}) does not match the last row (seq {last_seq})")
    return VerifyResult(tenant_id, checked, problems)


async def _rows_unlike_their_audit(session: AsyncSession) -> dict[str, list[str]]:
    """Entity rows (by type, their ids) that differ from the state their last audit
    entry recorded, or have none: the app role may update a row (with a version ahead
    and an events row to match, which the forward-only trigger asks for), but it cannot
    write an audit entry under the key (review finding: an amount rewritten, and verify
    stayed green). Page by page (rows by id, each page's last entries through the
    entity index): memory stays flat however many entities a tenant has."""
    from paystream.ledger.writer import ENTITY_TABLES, summarise  # (writer imports this)

    altered: dict[str, list[str]] = {}
    for entity_type, (model, id_column) in ENTITY_TABLES.items():
        table = model.__table__
        ids_col = table.c[id_column]
        after: str | None = None
        while True:
            page = select(table).order_by(ids_col).limit(_PAGE)
            if after is not None:
                page = page.where(ids_col > after)
            rows = [dict(r) for r in (await session.execute(page)).mappings()]
            if not rows:
                break
            after = str(rows[-1][id_column])
            ids = [str(r[id_column]) for r in rows]
            last_entries = await session.execute(
                select(AuditLog.entity_id, AuditLog.after)
                .where(AuditLog.entity_type == entity_type.value, AuditLog.entity_id.in_(ids))
                .order_by(AuditLog.entity_id, AuditLog.seq.desc())
                .distinct(AuditLog.entity_id)
            )
            latest = {str(entity_id): entry for entity_id, entry in last_entries.tuples()}
            for row in rows:
                entity_id = str(row[id_column])
                if _unlike(summarise(row) or {}, latest.get(entity_id)):
                    altered.setdefault(entity_type.value, []).append(entity_id)
    return altered


_PAGE = 500


def _key_problems(keys: KeyProblems) -> list[str]:
    out = []
    if keys.missing:
        out.append(
            f"{len(keys.missing)} customer(s) ({_some(keys.missing)}) have no data key and "
            "were not erased: the key was deleted outside an erasure"
        )
    if keys.damaged:
        out.append(
            f"{len(keys.damaged)} customer(s) ({_some(keys.damaged)}): the data key does "
            "not unwrap under the master key it names (altered or damaged)"
        )
    if keys.unknown_master:
        out.append(
            f"{len(keys.unknown_master)} customer(s) ({_some(keys.unknown_master)}): the "
            "data key is wrapped under a master key not in the keyring "
            "(PAYSTREAM_RETIRED_MASTER_KEYS)"
        )
    if keys.remade:
        out.append(
            f"{len(keys.remade)} customer(s) ({_some(keys.remade)}): the data key does not "
            "open a sealed event of theirs: it was made again (the one before deleted or "
            "replaced outside an erasure), or the event was altered; what was sealed under "
            "the one before does not open any more"
        )
    if keys.left_after_erasure:
        out.append(
            f"{len(keys.left_after_erasure)} customer(s) ({_some(keys.left_after_erasure)}) "
            "are marked erased but their data key is still there: their sealed events can "
            "still be read (`paystream erase` them again)"
        )
    return out


async def _entries_unlike_the_one_before(session: AsyncSession) -> dict[str, list[int]]:
    """Audit entries (by entity type, their seqs) whose ``before`` is not the state the
    same entity's entry before them recorded as ``after``. Each write reads the row it
    moves on: a row altered without an audit entry, then written genuinely, passes the
    rows-against-their-last-entry check, and only this link shows it (review finding).
    Only the fields that earlier entry holds are compared (a column added since is new
    in ``before``). Streamed: memory stays flat however long the chain."""
    previous = func.lag(AuditLog.after).over(
        partition_by=(AuditLog.entity_type, AuditLog.entity_id), order_by=AuditLog.seq
    )
    query = select(AuditLog.seq, AuditLog.entity_type, AuditLog.before, previous).order_by(
        AuditLog.entity_type, AuditLog.entity_id, AuditLog.seq
    )
    unlinked: dict[str, list[int]] = {}
    stream = await session.stream(query.execution_options(yield_per=1000))
    async for seq, entity_type, before, left in stream.tuples():
        if left is None:
            continue  # the entity's first entry
        if before is None or any(before.get(k) != v for k, v in left.items()):
            unlinked.setdefault(str(entity_type), []).append(int(seq))
    for seqs in unlinked.values():
        seqs.sort()
    return unlinked


def _unlike(current: Mapping[str, Any], audited: Mapping[str, Any] | None) -> bool:
    """Does the row's state differ from what its last audit entry recorded? Every field
    the entry holds is compared (one missing from the row, an emptied ciphertext, is
    None); of the others only ``erased_at``, which no write sets but an erasure, audited
    (columns added since an entry was written are not in it)."""
    if audited is None:
        return True
    if any(current.get(key) != value for key, value in audited.items()):
        return True
    if "version" not in audited and current.get("version") != _TOMBSTONE_VERSION:
        # An erasure before any event of the customer audits its tombstone without
        # a version: later events audit theirs (review finding: one rewritten with a
        # forged event verified).
        return True
    return "erased_at" not in audited and current.get("erased_at") is not None


_TOMBSTONE_VERSION = -1  # privacy.TOMBSTONE_VERSION (privacy imports this module)


def _some(seqs: Sequence[object]) -> str:
    return ", ".join(map(str, seqs[:5])) + (", ..." if len(seqs) > 5 else "")


# The row's fields the hash covers (with its tenant and seq).
_HASHED = ("occurred_at", "actor", "action", "entity_type", "entity_id", "before", "after")


async def record_retirements(
    session: AsyncSession, tenant_ids: Sequence[str], keyring: MasterKeyring
) -> int:
    """As the owner: for each tenant and each key ``keyring`` retires, the last seq written
    under it. A key retired by this run (no earlier run marked it) is recorded at the
    tenant's head (0 for a chain not begun); one an earlier run retired, for a tenant it
    has no record for (first seen since), at 0: no genuine row was written under it
    there. One call per rotation, with every tenant: a second call is a later run. A
    record stays as first made (a row written under the old key since is for the
    operator to look at), but a key current again (a rollback) loses its records: it is
    live, and will be retired afresh. The current key is recorded as one the ledger has
    seen (``master_keys_seen``, tenant ``*``): a worker holding it alone begins new
    tenants' chains though no row or data key is under it yet (a ledger without
    customers). Returns how many tenant records were made."""
    current = keyring.current.key_id
    await session.execute(
        pg_insert(MasterKeySeen)
        .values(tenant_id=RETIRED_MARKER, key_id=current)
        .on_conflict_do_nothing()
    )
    await session.execute(delete(AuditKeyRetirement).where(AuditKeyRetirement.key_id == current))
    retiring = sorted(k.key_id for k in keyring.retired)
    if not retiring:
        return 0
    # Which keys an earlier run retired: its marker row (tenant "*", which no tenant id
    # can be), made even when no tenant had a chain yet.
    earlier = set(
        await session.scalars(
            select(AuditKeyRetirement.key_id).where(
                AuditKeyRetirement.tenant_id == RETIRED_MARKER,
                AuditKeyRetirement.key_id.in_(retiring),
            )
        )
    )
    await session.execute(
        pg_insert(AuditKeyRetirement)
        .values([{"tenant_id": RETIRED_MARKER, "key_id": k, "through_seq": 0} for k in retiring])
        .on_conflict_do_nothing()
    )
    tenants = sorted(set(tenant_ids) - {RETIRED_MARKER})
    heads: dict[str, int] = {}
    for start in range(0, len(tenants), _CHUNK):
        chunk = tenants[start : start + _CHUNK]
        found = await session.execute(
            select(AuditHead.tenant_id, AuditHead.seq).where(AuditHead.tenant_id.in_(chunk))
        )
        heads.update((str(t), int(seq)) for t, seq in found)
    rows = [
        {"tenant_id": t, "key_id": k, "through_seq": 0 if k in earlier else heads.get(t, 0)}
        for t in tenants
        for k in retiring
    ]
    recorded = 0
    for start in range(0, len(rows), _CHUNK):  # bind parameters are limited per statement
        done = await session.execute(
            pg_insert(AuditKeyRetirement)
            .values(rows[start : start + _CHUNK])
            .on_conflict_do_nothing()
            .returning(AuditKeyRetirement.key_id)
        )
        recorded += len(done.all())
    return recorded


_CHUNK = 1000
# The tenant id of the row marking a key retired at all (not a valid tenant id).
RETIRED_MARKER = "*"


def _key_in(keyring: MasterKeyring, key_id: str) -> bytes | None:
    try:
        return audit_key(keyring.get(key_id))
    except CryptoError:
        return None
