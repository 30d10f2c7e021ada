"""Per-tenant rate limits and payment quotas, enforced by the command agent.

A tenant's registry record may carry :class:`TenantLimits`:

* ``commands_per_second`` / ``burst``: a token bucket over the tenant's commands. Over
  it, a command is rejected ``rate_limited`` with ``retry_after_ms`` (as a provider
  answers HTTP 429); nothing is remembered under its idempotency key, so the same
  command sent again later goes through.
* ``max_payment_amount``: the largest single ``payment.create`` per currency.
* ``daily_payment_volume``: per currency and UTC day, the sum of payments that were
  authorised, captured or are awaiting authentication. Over either, the command is
  rejected ``quota_exceeded`` (``limit`` names which).

**Time** is the command record's Kafka timestamp, not the worker's clock: a worker that
catches up on a backlog must not reject commands that were sent at an allowed pace.
Timestamps are taken as non-decreasing per tenant (an older one refills nothing) and
capped at the worker's clock plus :data:`MAX_FUTURE_SKEW_MS` (a future one would refill
the bucket). Token arithmetic is in integer milli-tokens: no floats.

**Replays.** The state (one record per tenant in the ``limits`` table, on the tenant's
changelog partition) remembers the last command offset it counted and the rejections of
recent offsets. A command redelivered after a crash (its offset already counted) gets
the same decision again: its stored rejection, or admission without being counted
twice, so a replay yields a byte-identical outcome. All of a tenant's commands are on
one partition, so offsets order them.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from paystream.money import MAX_MINOR_AMOUNT, normalise_currency

__all__ = [
    "MAX_FUTURE_SKEW_MS",
    "VOLUME_OUTCOMES",
    "Admission",
    "LimitGate",
    "LimitRejection",
    "TenantLimits",
]

# How far past the worker's clock a record timestamp is believed.
MAX_FUTURE_SKEW_MS = 60_000
# Rejections remembered for replays: offsets this far behind the last counted one are
# committed long since (a batch is at most 500 commands) and are dropped.
REPLAY_WINDOW_OFFSETS = 10_000
REPLAY_MEMORY = 1_000
# Outcomes of payment.create that count toward the daily volume.
VOLUME_OUTCOMES = frozenset({"payment.authorized", "payment.succeeded", "payment.requires_action"})

_MILLI = 1000  # milli-tokens per command


class TenantLimits(BaseModel):
    """Limits on one tenant's traffic and money movement; unset means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands_per_second: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    burst: StrictInt | None = Field(default=None, ge=1, le=10_000_000)
    max_payment_amount: dict[str, StrictInt] = {}
    daily_payment_volume: dict[str, StrictInt] = {}

    @field_validator("max_payment_amount", "daily_payment_volume")
    @classmethod
    def _per_currency(cls, value: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for currency, amount in value.items():
            if not 0 <= amount <= MAX_MINOR_AMOUNT * 1000:
                raise ValueError(f"{currency}: amount must be a non-negative minor-unit integer")
            out[normalise_currency(currency)] = amount
        return out

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantLimits:
        if self.burst is not None and self.commands_per_second is None:
            raise ValueError("burst needs commands_per_second")
        return self

    @property
    def enforced(self) -> bool:
        return bool(
            self.commands_per_second or self.max_payment_amount or self.daily_payment_volume
        )


@dataclass(frozen=True, slots=True)
class LimitRejection:
    """A command over a limit: the rejection reason and its outcome data."""

    reason: str  # "rate_limited" | "quota_exceeded"
    message: str
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Admission:
    """A command let through; :meth:`LimitGate.settle` counts its payment volume."""

    tenant_id: str
    day: str
    currency: str | None = None
    amount: int = 0
    replay: bool = False  # counted before a crash: count nothing again


class LimitGate:
    """Applies a tenant's limits to its commands, keeping the state in ``table``."""

    def __init__(self, table: MutableMapping[str, Any], clock_ms: Any = None) -> None:
        self.table = table
        self._clock_ms = clock_ms or (lambda: int(datetime.now(UTC).timestamp() * 1000))

    @staticmethod
    def key(tenant_id: str) -> str:
        return f"{tenant_id}:limits"

    def admit(
        self,
        tenant_id: str,
        limits: TenantLimits,
        *,
        offset: int,
        timestamp_ms: int,
        command_type: str,
        data: Any,
    ) -> Admission | LimitRejection:
        """Decide on one command (offset -1: not from Kafka, never a replay)."""
        key = self.key(tenant_id)
        state = dict(self.table.get(key) or _fresh())
        if 0 <= offset <= int(state["through"]):
            stored = (state.get("rejected") or {}).get(str(offset))
            if stored is not None:
                return LimitRejection(stored["reason"], stored["message"], stored["extra"])
            return Admission(tenant_id, str(state.get("day") or ""), replay=True)
        at_ms = max(int(state["at_ms"]), min(timestamp_ms, self._clock_ms() + MAX_FUTURE_SKEW_MS))
        day = datetime.fromtimestamp(at_ms / 1000, tz=UTC).date().isoformat()
        decision = _rate(state, limits, at_ms) or _quota(state, limits, day, command_type, data)
        state["at_ms"] = at_ms
        if offset >= 0:
            state["through"] = offset
        if isinstance(decision, LimitRejection):
            if offset >= 0:
                state["rejected"] = _remember(state.get("rejected") or {}, offset, decision)
            self.table[key] = state
            return decision
        self.table[key] = state
        currency = amount = None
        if command_type == "payment.create" and limits.daily_payment_volume:
            currency, amount = str(data.currency), int(data.amount)
        return Admission(tenant_id, day, currency, amount or 0)

    def settle(self, admission: Admission, outcome_type: str) -> None:
        """Count an admitted payment's amount once its outcome says money moved."""
        if admission.replay or admission.currency is None or outcome_type not in VOLUME_OUTCOMES:
            return
        key = self.key(admission.tenant_id)
        state = dict(self.table.get(key) or _fresh())
        volume = dict(state["volume"]) if state.get("day") == admission.day else {}
        volume[admission.currency] = volume.get(admission.currency, 0) + admission.amount
        state["day"], state["volume"] = admission.day, volume
        self.table[key] = state


def _fresh() -> dict[str, Any]:
    return {"through": -1, "at_ms": 0, "tokens": None, "day": "", "volume": {}, "rejected": {}}


def _rate(state: dict[str, Any], limits: TenantLimits, at_ms: int) -> LimitRejection | None:
    """Token bucket in milli-tokens; takes one command's worth from ``state`` if it can."""
    rate = limits.commands_per_second
    if rate is None:
        return None
    capacity = (limits.burst or rate) * _MILLI
    tokens = state.get("tokens")
    if tokens is None:  # first command under this limit: a full bucket
        tokens = capacity
    else:
        # ``rate`` commands a second is ``rate`` milli-tokens a millisecond.
        elapsed = max(0, at_ms - int(state["at_ms"]))
        tokens = min(capacity, int(tokens) + elapsed * rate)
    if tokens >= _MILLI:
        state["tokens"] = tokens - _MILLI
        return None
    state["tokens"] = tokens
    retry_after_ms = -(-(_MILLI - tokens) // rate)  # ceiling division
    return LimitRejection(
        "rate_limited",
        f"tenant over its rate limit of {rate} commands/s (burst {capacity // _MILLI}); "
        f"retry after {retry_after_ms} ms",
        {"limit": "commands_per_second", "retry_after_ms": retry_after_ms},
    )


def _quota(
    state: dict[str, Any], limits: TenantLimits, day: str, command_type: str, data: Any
) -> LimitRejection | None:
    if command_type != "payment.create":
        return None
    currency, amount = str(data.currency), int(data.amount)
    cap = limits.max_payment_amount.get(currency)
    if cap is not None and amount > cap:
        return LimitRejection(
            "quota_exceeded",
            f"amount {amount} {currency} is over the tenant's per-payment limit of {cap}",
            {"limit": "max_payment_amount", "currency": currency, "allowed": cap},
        )
    daily = limits.daily_payment_volume.get(currency)
    if daily is None:
        return None
    used = int((state.get("volume") or {}).get(currency, 0)) if state.get("day") == day else 0
    if used + amount > daily:
        return LimitRejection(
            "quota_exceeded",
            f"amount {amount} {currency} would take the tenant's volume on {day} to "
            f"{used + amount}, over its daily limit of {daily}",
            {
                "limit": "daily_payment_volume",
                "currency": currency,
                "allowed": daily,
                "used": used,
                "day": day,
            },
        )
    return None


def _remember(
    rejected: dict[str, Any], offset: int, decision: LimitRejection
) -> dict[str, dict[str, Any]]:
    kept = {k: v for k, v in rejected.items() if int(k) > offset - REPLAY_WINDOW_OFFSETS}
    kept[str(offset)] = {
        "reason": decision.reason,
        "message": decision.message,
        "extra": decision.extra,
    }
    while len(kept) > REPLAY_MEMORY:
        kept.pop(next(iter(kept)))
    return kept
