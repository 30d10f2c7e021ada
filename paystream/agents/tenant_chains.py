"""One tenant's commands in a batch, split into chains that may run side by side.

A tenant's commands run one at a time, in order, so that each sees the state the one
before left: on a provider answering in 300-400 ms (Stripe) that is 2-3 commands a
second for the tenant, and a batch waits for its longest run. Commands that touch
disjoint state need not wait for each other: two captures of different payments read
and write nothing in common. This module groups a run's commands into chains (commands
sharing any conflict key: an entity they name, their command id or idempotency key, in
one namespace) that the agent runs concurrently, each chain in order, at most
``PAYSTREAM_TENANT_CONCURRENCY`` at a time.

Only where the outcome cannot depend on the order (review h69a, the design audit):
* payment.create / capture / cancel / refresh and refund.create, with the entity ids they
  name as plain strings; any other command (customer.*, payment_method.*, dispute.*,
  exports, erasure) is a barrier: the whole run stays serial.
* An active tenant. Its limits decide by admission order (the rate bucket, the day, the
  daily volume's holds), and a crash's redelivery must decide as the first run did (a
  payment the provider charged refused `quota_exceeded` when it came again in another
  order): so the chains take their admissions in the run's order, and a payment the
  daily volume would refuse while earlier ones still hold waits for them to be answered
  (agents/admission_order.py).
* A command none of whose keys the idempotency table knows yet (no record under its key
  or id, no pointer for its id) and that is no re-drive: a retry may be moved onto
  another key through those records, which another chain could be writing.
* Records keyed by their tenant (keyless records come from any partition).

Each chain runs as a task of its own: the current event (for the changelog partition)
and the command's read time are context variables, one per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from paystream import metrics
from paystream.agents.admission_order import ADMISSION_TURN, AdmissionOrder, Slot, Turn
from paystream.agents.card_data import key_str
from paystream.agents.handlers import entity_key
from paystream.agents.pipeline import UNANSWERED_REFUSAL_HEADER, CommandProcessor, Inbound
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.ids import derived_id
from paystream.streams.codec import UndecodableRecord, ce_text, decode_record
from paystream.streams.commands import COMMAND_PREFIX
from paystream.tables.commands_view import command_id_key
from paystream.tenancy.models import TenantStatus

__all__ = ["ChainKeys", "chain_keys", "chains_of", "run_in_chains", "run_tenant"]

T = TypeVar("T")
R = TypeVar("R")

ChainKeys = frozenset[str]

# The commands that may run beside others of their tenant, and the data fields naming
# the entities each touches (read or written): one payment, its refund, and for a create
# the customer and saved payment method it reads (the provider locks a customer while it
# charges them). A provider token names no state of ours: one-off tokens are single-use,
# and a test token (`pm_card_visa`) is shared by every test payment.
_ENTITY_FIELDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "payment.create": (
        ("payment_id", "p"),
        ("customer_id", "c"),
        ("payment_method_id", "m"),
    ),
    "payment.capture": (("payment_id", "p"),),
    "payment.cancel": (("payment_id", "p"),),
    "payment.refresh": (("payment_id", "p"),),
    "refund.create": (("payment_id", "p"), ("refund_id", "r")),
}
# A larger record is a barrier rather than decoded twice (a bench command is ~400 bytes).
_DECODED_MAX_BYTES = 16 * 1024
# Without these a command cannot name what it touches (a create makes its payment's id
# from its command id, which is a key already).
_REQUIRED: Mapping[str, str] = {
    "payment.capture": "payment_id",
    "payment.cancel": "payment_id",
    "payment.refresh": "payment_id",
    "refund.create": "payment_id",
}


def chain_keys(processor: CommandProcessor, rec: Inbound) -> ChainKeys | None:
    """The conflict keys of one command record, or None: a barrier (the tenant's whole
    run stays serial). Cheap and synchronous; reads the tables, writes nothing."""
    headers = rec.headers
    if (
        rec.key is None
        or len(rec.value or b"") > _DECODED_MAX_BYTES
        or FIRST_ATTEMPT_HEADER in headers
        or UNANSWERED_REFUSAL_HEADER in headers
    ):
        return None
    # The tenant first (its record key): one with limits is decided before any decode.
    tenant_id = key_str(rec.key)
    tenant = processor.registered(tenant_id)
    if tenant is None or tenant.status is not TenantStatus.ACTIVE:
        return None
    try:
        event = decode_record(rec.key, rec.value, headers)
    except (UndecodableRecord, ValueError, TypeError):
        return None
    attrs = event.get_attributes()
    command_type = str(attrs.get("type", "")).removeprefix(COMMAND_PREFIX)
    fields = _ENTITY_FIELDS.get(command_type)
    data = event.get_data()
    if fields is None or not isinstance(data, dict) or attrs.get("tenantid") != tenant_id:
        return None
    idempotency = processor.idempotency
    command_id = str(attrs.get("id") or "")
    idem_key = ce_text(attrs.get("idempotencykey")) or command_id
    if not command_id or (
        idempotency.get(f"{tenant_id}:{idem_key}") is not None
        or idempotency.get(f"{tenant_id}:{command_id}") is not None
        or idempotency.get(command_id_key(tenant_id, command_id)) is not None
    ):
        return None
    required = _REQUIRED.get(command_type)
    if required is not None and not isinstance(data.get(required), str):
        return None
    # Ids and keys share one namespace: a command's id may be another's key.
    keys = {f"i:{command_id}", f"i:{idem_key}"}
    for field, kind in fields:
        named = data.get(field)
        if named is None:
            continue
        if not isinstance(named, str):
            return None  # refused as it stands, but not worth reasoning about
        # As the command's model has it (str_strip_whitespace): "p1 " is payment p1.
        # (Python strips a few more characters than pydantic: more keys merge, never fewer.)
        keys.add(f"{kind}:{named.strip()}")
    if command_type == "payment.create" and data.get("payment_id") is None:
        # Its payment's id is derived from its command id: a capture may name it.
        keys.add(f"p:{derived_id('pay', tenant_id, command_id)}")
    if command_type == "refund.create" and data.get("refund_id") is None:
        # So is a refund's: another refund may name it.
        keys.add(f"r:{derived_id('re', tenant_id, command_id)}")
    pm_id = data.get("payment_method_id")
    if isinstance(pm_id, str):
        # A saved card's create also reads (and charges) its customer.
        pm = processor.tables.payment_methods.get(entity_key(tenant_id, pm_id.strip()))
        owner = pm.get("customer_id") if isinstance(pm, dict) else None
        if owner is not None:
            keys.add(f"c:{owner}")
    return frozenset(keys)


def chains_of(keys: Sequence[ChainKeys | None]) -> list[list[int]] | None:
    """The indexes of ``keys`` grouped into chains (union of commands sharing a key), each
    in order, chains ordered by their first command; None if any is a barrier or all
    make one chain."""
    if any(k is None for k in keys):
        return None
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, ks in enumerate(keys):
        assert ks is not None
        for k in ks:
            j = owner.setdefault(k, i)
            if j != i:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    grouped: dict[int, list[int]] = {}
    for i in range(len(keys)):
        grouped.setdefault(root(i), []).append(i)
    return list(grouped.values()) if len(grouped) > 1 else None


async def run_in_chains(
    items: Sequence[T],
    chains: list[list[int]],
    run: Callable[[T], Awaitable[R]],
    concurrency: int,
) -> list[R]:
    """``run`` over ``items``, each chain in order, at most ``concurrency`` chains at a time
    (each a task of its own); the results in ``items``' order."""
    results: list[Any] = [None] * len(items)
    slots = asyncio.Semaphore(concurrency)
    order = AdmissionOrder(len(items))

    async def chain(indexes: list[int]) -> None:
        slot = Slot(slots)
        await slot.take()
        try:
            for i in indexes:
                ADMISSION_TURN.set(Turn(order, i, slot))
                try:
                    results[i] = await run(items[i])
                finally:
                    order.finished(i)  # (if it was never admitted, later ones may be)
        finally:
            slot.give_up()
            # (Ended early, by an exception out of ``run``: its later commands never run,
            # and must not hold the other chains' admissions for ever; review h70a.)
            for i in indexes:
                order.finished(i)

    await asyncio.gather(*(chain(c) for c in chains))
    return results


async def run_tenant(
    processor: CommandProcessor,
    records: Sequence[Inbound],
    run: Callable[[int], Awaitable[R]],
    concurrency: int,
) -> list[R]:
    """``run(i)`` for each of one tenant's ``records``, results in their order: in order,
    one at a time, unless they split into chains (then side by side, see above)."""
    chains = None
    if concurrency > 1 and len(records) > 1:
        keys: list[ChainKeys | None] = []
        for rec in records:
            keys.append(chain_keys(processor, rec))
            if keys[-1] is None:
                break  # a barrier: no need to key the rest
        chains = chains_of(keys) if len(keys) == len(records) else None
    if chains is None:
        if len(records) > 1:
            _SERIAL.inc()
        return [await run(i) for i in range(len(records))]
    _CHAINED.inc()
    return await run_in_chains(range(len(records)), chains, run, concurrency)


_SERIAL = metrics.TENANT_RUNS.labels("serial")
_CHAINED = metrics.TENANT_RUNS.labels("chains")
