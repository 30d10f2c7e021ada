"""The benchmark's command mix: realistic payment flows across tenants, encoded up front.

Most commands are auto-captured ``payment.create`` with ``pm_card_visa`` (a few other
test cards, including declines); some flows authorise with manual capture and capture
later; some pay and then refund part of it. The second command of a flow is placed a
little later in the stream, so it usually lands in a different batch than its first
command, as real traffic would. One tenant's commands share the record key (the tenant
id), so they stay ordered on one partition and a capture or refund always comes after
the payment it names.

Command and payment ids are UUIDs, as producers' ids usually are: their digit runs
are what the card-number scan has to tell apart from card numbers, so short synthetic
ids would flatter the pipeline's cost.

Records are built before any clock starts: generating load must not be measured.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import KafkaRecord, encode_event
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant

__all__ = ["BenchCommand", "CommandMix", "bench_tenants", "generate_commands", "tenant_ids"]

# Simulator tokens (Stripe test-card semantics), weighted toward success.
_CREATE_TOKENS: tuple[str, ...] = (
    *("pm_card_visa",) * 90,
    *("pm_card_mastercard",) * 6,
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedExpiredCard",
    "pm_card_visa",
)
_CURRENCIES: tuple[str, ...] = ("USD", "USD", "USD", "EUR", "GBP")


@dataclass(frozen=True)
class CommandMix:
    """Share of *flows* (not commands) of each kind; the rest are single creates."""

    manual_capture: float = 0.08  # create(capture=manual) + capture
    refund: float = 0.07  # create (pm_card_visa) + partial refund

    def __post_init__(self) -> None:
        if self.manual_capture < 0 or self.refund < 0 or self.manual_capture + self.refund > 1:
            raise ValueError("flow shares must be >= 0 and sum to at most 1")


@dataclass(frozen=True)
class BenchCommand:
    """One encoded command, ready to produce."""

    command_id: str
    tenant_id: str
    command_type: str
    record: KafkaRecord


def tenant_ids(tag: str, count: int) -> list[str]:
    """Tenant ids unique to one run (valid against the tenant id pattern)."""
    return [f"bench-{tag}-t{i:03d}" for i in range(count)]


# Limits as a platform gives its tenants, far above what the bench sends (nothing is
# rejected), so that their bookkeeping (token bucket, decisions kept for replays, daily
# volume and holds) is in what is measured.
_LIMITS = TenantLimits(
    commands_per_second=10_000,
    burst=10_000,
    max_payment_amount={"USD": 10_000_000, "EUR": 10_000_000, "GBP": 10_000_000},
    daily_payment_volume={"USD": 10**11, "EUR": 10**11, "GBP": 10**11},
)


def bench_tenants(ids: Sequence[str]) -> list[Tenant]:
    """The bench's tenants: every other one with limits, as on a platform where some
    tenants' plans carry them."""
    return [
        Tenant(tenant_id=tid, name=tid, limits=_LIMITS if i % 2 == 0 else TenantLimits())
        for i, tid in enumerate(ids)
    ]


def _uuid(ids: random.Random) -> str:
    return str(uuid.UUID(int=ids.getrandbits(128), version=4))


def _flows(
    rng: random.Random, ids: random.Random, index: int, mix: CommandMix
) -> list[tuple[str, dict[str, Any]]]:
    """One flow: one or two (command type, data) pairs."""
    amount = rng.randrange(500, 50_000)
    currency = rng.choice(_CURRENCIES)
    payment_id = _uuid(ids)
    roll = rng.random()
    create: dict[str, Any] = {
        "payment_id": payment_id,
        "amount": amount,
        "currency": currency,
        "description": f"order {index}",
        "metadata": {"order_id": f"ord-{index}", "channel": "web"},
    }
    if roll < mix.manual_capture:
        create |= {"payment_method_token": "pm_card_visa", "capture": "manual"}
        capture = {"payment_id": payment_id, "amount": amount - amount // 10}
        return [("payment.create", create), ("payment.capture", capture)]
    if roll < mix.manual_capture + mix.refund:
        create |= {"payment_method_token": "pm_card_visa"}
        refund = {
            "payment_id": payment_id,
            "amount": max(1, amount // 4),
            "reason": "requested_by_customer",
        }
        return [("payment.create", create), ("refund.create", refund)]
    create |= {"payment_method_token": rng.choice(_CREATE_TOKENS)}
    return [("payment.create", create)]


def _ordered(
    count: int, tenants: Sequence[str], rng: random.Random, ids: random.Random, mix: CommandMix
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``count`` (tenant, type, data) in send order; follow-ups come 5-60 slots later."""
    slots: list[tuple[float, int, str, str, dict[str, Any]]] = []
    position = 0
    flow = 0
    while position < count:
        tenant = rng.choice(tenants)
        steps = _flows(rng, ids, flow, mix)
        if position + len(steps) > count:  # no room for a follow-up: a lone create
            steps = steps[:1]
            steps[0][1].pop("capture", None)
        first = float(position)
        for n, (ctype, data) in enumerate(steps):
            at = first if n == 0 else first + rng.uniform(5, 60)
            slots.append((at, len(slots), tenant, ctype, data))
        position += len(steps)
        flow += 1
    slots.sort()
    for _at, _seq, tenant, ctype, data in slots:
        yield tenant, ctype, data


def generate_commands(
    count: int,
    tenants: Sequence[str],
    *,
    prefix: str,
    seed: int = 7,
    mix: CommandMix | None = None,
) -> list[BenchCommand]:
    """``count`` encoded commands (binary CloudEvents, key = tenant id) in send order.

    ``seed`` fixes the mix; ``prefix`` (unique to one phase of one run) seeds the ids
    with it, so two phases never share a command or payment id.
    """
    if not tenants:
        raise ValueError("at least one tenant is needed")
    rng = random.Random(seed)
    ids = random.Random(f"{prefix}:{seed}")
    out: list[BenchCommand] = []
    for tenant, ctype, data in _ordered(count, tenants, rng, ids, mix or CommandMix()):
        command_id = _uuid(ids)
        event = build_command(ctype, tenant, data, command_id=command_id, source="/paystream/bench")
        record = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
        out.append(BenchCommand(command_id, tenant, ctype, record))
    return out
