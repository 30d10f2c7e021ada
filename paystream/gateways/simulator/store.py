"""The simulator's provider-side state in Redis: idempotency records, objects, effect ledger.

State lives in Redis rather than the worker so that it outlives a worker crash, as a
real provider's does. A call first *claims* its idempotency key atomically (Lua), then
computes its writes and commits them with one Lua script that re-checks the claim and
every value the call read, so two concurrent calls with one key can never both apply an
effect, and two calls with different keys touching one object (two refunds racing for
the same balance) are serialised: the loser recomputes from fresh state. Commands go
through the client's auto-pipeline, so concurrent tenants share round trips.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator.autopipeline import autopipeline_for

__all__ = ["Claim", "Effect", "SimulatorStore", "Tx", "request_fingerprint"]

PROVIDER = "simulator"

# Claim atomically: return the existing record, or store ours and return nil.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Drop a claim only if it is still ours (it may have expired and been re-claimed).
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_MAX_CONFLICT_RETRIES = 64

# Claim tokens only tell our own attempts apart: a seeded PRNG is enough, and avoids a
# getrandom() system call per provider call.
_TOKENS = random.Random(int.from_bytes(os.urandom(16), "big"))


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# Marks "the object did not exist" among read values (a JSON object never equals it).
_ABSENT = "\x00absent"

# KEYS: idem, effects, read keys..., write keys...
# ARGV: token, done record, record ttl, n reads, read values..., n writes, write values...,
#       effects...
_COMMIT = """
local claim = redis.call('GET', KEYS[1])
if not claim or cjson.decode(claim)['token'] ~= ARGV[1] then return 'claim_lost' end
local n_reads = tonumber(ARGV[4])
for i = 1, n_reads do
  local current = redis.call('GET', KEYS[2 + i])
  if not current then current = '\0absent' end
  if current ~= ARGV[4 + i] then return 'conflict' end
end
local n_writes = tonumber(ARGV[5 + n_reads])
for i = 1, n_writes do
  redis.call('SET', KEYS[2 + n_reads + i], ARGV[5 + n_reads + i])
end
for i = 6 + n_reads + n_writes, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 'ok'
"""


@dataclass(frozen=True)
class Effect:
    """One provider-side effect, recorded exactly once per idempotency key."""

    kind: str  # charge, authorization, capture, void, refund, customer.created, ...
    idempotency_key: str
    object_id: str
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: ours to execute, or a stored response to replay."""

    token: str | None
    replay: dict[str, Any] | None = None


def request_fingerprint(operation: str, params: dict[str, Any]) -> str:
    """What Stripe compares on reuse of a key: the endpoint and its parameters."""
    body = json.dumps([operation, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Tx:
    """Reads and buffered writes of one simulator call (optimistic: checked at commit)."""

    def __init__(self, store: SimulatorStore) -> None:
        self._store = store
        self.reads: dict[str, str | None] = {}  # object key → raw value as read
        self.writes: dict[str, dict[str, Any]] = {}
        self.effects: list[Effect] = []

    async def get(self, object_id: str) -> dict[str, Any] | None:
        """An object as this transaction sees it; the commit fails if it changes meanwhile."""
        if object_id in self.writes:
            return self.writes[object_id]
        key = self._store.object_key(object_id)
        if key not in self.reads:
            self.reads[key] = _text(await self._store._io.get(key))
        raw = self.reads[key]
        return None if raw is None else dict(json.loads(raw))

    def put(self, obj: dict[str, Any]) -> None:
        self.writes[str(obj["id"])] = obj

    def effect(self, effect: Effect) -> None:
        self.effects.append(effect)


TxFn = Callable[[Tx], Awaitable[dict[str, Any]]]


class SimulatorStore:
    """One tenant's slice of the simulated provider (all keys share a cluster hash tag)."""

    def __init__(
        self, redis: Any, tenant_id: str, *, claim_ttl_ms: int, record_ttl_seconds: int
    ) -> None:
        if not tenant_id or any(c in tenant_id for c in "{}:"):
            raise ValueError(f"tenant id {tenant_id!r} cannot namespace simulator keys")
        self._redis = redis
        self._io = autopipeline_for(redis)
        self._prefix = f"sim:{{{tenant_id}}}:"
        self._claim_ttl_ms = claim_ttl_ms
        self._record_ttl = record_ttl_seconds
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._commit = redis.register_script(_COMMIT)

    def object_key(self, object_id: str) -> str:
        return f"{self._prefix}obj:{object_id}"

    def _idem_key(self, idempotency_key: str) -> str:
        return f"{self._prefix}idem:{idempotency_key}"

    @property
    def _effects_key(self) -> str:
        return f"{self._prefix}effects"

    async def claim(self, idempotency_key: str, fingerprint: str) -> Claim:
        """Claim a key for execution, or get the stored response to replay (Stripe's rules)."""
        token = f"{_TOKENS.getrandbits(128):032x}"
        mine = _dumps({"state": "claimed", "fp": fingerprint, "token": token})
        raw = _text(
            await self._io.run_script(
                self._claim, [self._idem_key(idempotency_key)], [mine, self._claim_ttl_ms]
            )
        )
        if raw is None:
            return Claim(token=token)
        record = json.loads(raw)
        if record["fp"] != fingerprint:
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR,
                f"idempotency key {idempotency_key!r} was already used with different "
                "parameters or for another operation",
                provider=PROVIDER,
                http_status=400,
            )
        if record["state"] != "done":
            # Stripe answers 409 idempotency_key_in_use; trying again later is right.
            remaining_ms = await self._redis.pttl(self._idem_key(idempotency_key))
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR,
                f"a request with idempotency key {idempotency_key!r} is still in progress",
                provider=PROVIDER,
                retryable=True,
                http_status=409,
                retry_after=max(remaining_ms, 50) / 1000,
            )
        return Claim(token=None, replay=record["response"])

    async def release(self, idempotency_key: str, token: str) -> None:
        """Give a key back after a failure that changed nothing, so a retry executes afresh."""
        await self._io.run_script(self._release, [self._idem_key(idempotency_key)], [token])

    async def transact(
        self, idempotency_key: str, token: str, fingerprint: str, fn: TxFn
    ) -> dict[str, Any]:
        """Run ``fn`` and commit its writes, effects and the response atomically.

        One Lua script checks that we still hold the claim and that nothing ``fn`` read
        has changed, then applies everything: a single round trip instead of
        WATCH/GET/MULTI/EXEC, with the same all-or-nothing guarantee.
        """
        idem = self._idem_key(idempotency_key)
        for _ in range(_MAX_CONFLICT_RETRIES):
            tx = Tx(self)
            response = await fn(tx)
            record = {"state": "done", "fp": fingerprint, "response": response}
            read_keys = list(tx.reads)
            write_keys = [self.object_key(object_id) for object_id in tx.writes]
            args: list[Any] = [
                token,
                _dumps(record),
                self._record_ttl,
                len(read_keys),
                *(tx.reads[k] if tx.reads[k] is not None else _ABSENT for k in read_keys),
                len(write_keys),
                *(_dumps(obj) for obj in tx.writes.values()),
                *(_dumps(asdict(effect)) for effect in tx.effects),
            ]
            outcome = _text(
                await self._io.run_script(
                    self._commit, [idem, self._effects_key, *read_keys, *write_keys], args
                )
            )
            if outcome == "ok":
                return response
            if outcome == "claim_lost":
                raise GatewayError(
                    ErrorCode.IDEMPOTENCY_ERROR,
                    f"claim on idempotency key {idempotency_key!r} expired mid-request",
                    provider=PROVIDER,
                    retryable=True,
                )
            # "conflict": an object we read changed under us; recompute from fresh state
        raise GatewayError(
            ErrorCode.PROCESSING_ERROR,
            "too much contention on the simulated objects",
            provider=PROVIDER,
        )

    async def read(self, object_id: str) -> dict[str, Any] | None:
        """An object outside any transaction (test helpers, inspection)."""
        raw = _text(await self._redis.get(self.object_key(object_id)))
        return None if raw is None else dict(json.loads(raw))

    async def effects(self) -> list[Effect]:
        """The tenant's effect ledger, oldest first."""
        rows = await self._redis.lrange(self._effects_key, 0, -1)
        return [Effect(**json.loads(_text(row) or "{}")) for row in rows]

    async def count_attempt(self, idempotency_key: str) -> int:
        """How many times this key has been tried (failure injection counts these)."""
        key = f"{self._prefix}attempts:{idempotency_key}"
        n = int(await self._redis.incr(key))
        await self._redis.expire(key, self._record_ttl)
        return n
