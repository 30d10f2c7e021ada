"""The simulator's provider-side state in Redis: idempotency records, objects, effect ledger.

State lives in Redis rather than the worker so that it outlives a worker crash, as a
real provider's does. A call computes its writes from what it read, then commits with
one Lua script that, atomically: answers with the stored record if the idempotency key
was already used (the caller replays it, or refuses other parameters); re-checks every
value the call read; and applies the writes, the effects and the key's record. So two
calls with one key can never both apply an effect, and two calls with different keys
touching one object (two refunds racing for the same balance) are serialised: the loser
recomputes from fresh state. A call costs its reads plus one round trip, and commands
go through the client's auto-pipeline, so concurrent tenants share round trips.

A call the provider ran and refused (a `Refusal`: no such object, or not in a state
that allows it) is committed the same way, with its reads checked but no writes and no
effects, and its answer is stored under the key: Stripe keeps the first answer of a
request whose endpoint started executing, errors included. Refusals of the parameters
themselves (plain `GatewayError`s raised before any read) are not stored.

Nothing here lives for ever (a development stack runs for weeks): idempotency records
expire with the idempotency window, objects some time after the last call that read or
wrote them, and the effect ledger keeps its newest entries only (see `SimulatorStore`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from paystream.built import frozen_record
from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator.autopipeline import autopipeline_for
from paystream.money import Money

__all__ = [
    "PLAIN_REQUESTS",
    "SETTLEMENT_DELAY_SECONDS",
    "Effect",
    "Refusal",
    "SimulatorStore",
    "Tx",
    "model_fingerprint",
    "request_fingerprint",
]

PROVIDER = "simulator"

_MAX_CONFLICT_RETRIES = 64

# Past every window in which paystream may still act on an object it holds the id of, as
# a provider would let it: refunds (Stripe: up to 180 days after the charge, longer for
# some methods), disputes (opened up to 120 days after the charge, then days to answer),
# customers deleted or erased at any time. Every commit that reads or writes an object
# extends it. What a stack left running for months accumulates is bounded by this.
STATE_TTL_SECONDS = 400 * 24 * 3600
# The effect ledger is for tests and inspection; a tenant's newest entries are kept.
EFFECTS_CAP = 100_000
# How long captured money stays pending before it is available (Stripe's US accounts:
# two business days); the tenant's `settlement_delay_days` option sets it.
SETTLEMENT_DELAY_SECONDS = 2 * 24 * 3600


# Marks "the object did not exist" among read values (a JSON object never equals it).
_ABSENT = "\x00absent"

# The balance (see ``Tx.settle_later``): one hash per tenant, fields "a:<CUR>" (available,
# minor units: may be negative) and "p:<CUR>:<unix seconds>" (pending, available from
# then, on the tenant's clock). `fold` moves what has become available (its time come)
# into "a:<CUR>" and answers the available amount.
_BALANCE_LUA = """
local function clock_now(clock_key)
  local clock = redis.call('GET', clock_key)
  local offset = 0
  if clock then offset = tonumber(cjson.decode(clock)['offset']) or 0 end
  return tonumber(redis.call('TIME')[1]) + offset
end
local function fold(bal_key, only, now)
  local all = redis.call('HGETALL', bal_key)
  for i = 1, #all, 2 do
    local cur, on = string.match(all[i], '^p:([^:]+):(%-?%d+)$')
    if cur and (only == nil or cur == only) and tonumber(on) <= now then
      redis.call('HINCRBY', bal_key, 'a:' .. cur, all[i + 1])
      redis.call('HDEL', bal_key, all[i])
    end
  end
  if only == nil then return 0 end
  return tonumber(redis.call('HGET', bal_key, 'a:' .. only) or '0')
end
"""

# KEYS: idem, effects, read keys..., write keys... [, balance, clock: when n balance > 0]
# ARGV: done record ('' = keyless call: no record read or written), record ttl, state ttl,
# effects cap, n reads, read values..., n writes, write values..., n balance [, settlement
# delay seconds, (kind, currency, amount, at) per balance change], effects...
_COMMIT = (
    _BALANCE_LUA
    + """
local keyed = ARGV[1] ~= ''
if keyed then
  local used = redis.call('GET', KEYS[1])
  if used then return {'used', used} end
end
local state_ttl = tonumber(ARGV[3])
local n_reads = tonumber(ARGV[5])
for i = 1, n_reads do
  local current = redis.call('GET', KEYS[2 + i])
  if not current then current = '\\0absent' end
  if current ~= ARGV[5 + i] then return {'conflict'} end
end
local n_writes = tonumber(ARGV[6 + n_reads])
local nb_at = 7 + n_reads + n_writes
local n_bal = tonumber(ARGV[nb_at])
local first_effect = nb_at + 1
local bal_key, now, delay
if n_bal > 0 then
  bal_key = KEYS[3 + n_reads + n_writes]
  delay = tonumber(ARGV[nb_at + 1])
  first_effect = nb_at + 2 + 4 * n_bal
  -- the guards first: nothing is written when one fails; the tenant's clock read (before
  -- the writes, one of which may be the clock's) only when a change takes the commit's now
  for i = 0, n_bal - 1 do
    local o = nb_at + 2 + 4 * i
    if not now and ARGV[o] == 'p' and ARGV[o + 3] == '' then
      now = clock_now(KEYS[4 + n_reads + n_writes])
    end
    if ARGV[o] == 'g' then
      if fold(bal_key, ARGV[o + 1], tonumber(ARGV[o + 3])) < tonumber(ARGV[o + 2]) then
        return {'short'}
      end
    end
  end
end
for i = 1, n_reads do
  redis.call('EXPIRE', KEYS[2 + i], state_ttl)  -- in use: lives on (a no-op if absent)
end
for i = 1, n_writes do
  redis.call('SET', KEYS[2 + n_reads + i], ARGV[6 + n_reads + i], 'EX', state_ttl)
end
if n_bal > 0 then
  for i = 0, n_bal - 1 do
    local o = nb_at + 2 + 4 * i
    local kind, cur = ARGV[o], ARGV[o + 1]
    if kind == 'p' then
      local at = now
      if ARGV[o + 3] ~= '' then at = tonumber(ARGV[o + 3]) end
      local on = math.floor((at + delay) / 3600) * 3600
      redis.call('HINCRBY', bal_key, 'p:' .. cur .. ':' .. string.format('%d', on), ARGV[o + 2])
    elseif kind == 'a' then
      redis.call('HINCRBY', bal_key, 'a:' .. cur, ARGV[o + 2])
    end
  end
  redis.call('EXPIRE', bal_key, state_ttl)
end
if first_effect <= #ARGV then
  for i = first_effect, #ARGV do
    redis.call('RPUSH', KEYS[2], ARGV[i])
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  redis.call('EXPIRE', KEYS[2], state_ttl)
end
if keyed then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
end
return {'ok'}
"""
)

# KEYS: balance, clock; ARGV: state ttl. Folds what has settled by the tenant's clock
# now; answers the clock's now and the hash's fields and values. Both keys are in use:
# they live on, as the objects a commit reads do (a tenant that only reads its balance
# kept it only until the state ttl after money last moved: review h74g).
_READ_BALANCE = (
    _BALANCE_LUA
    + """
local now = clock_now(KEYS[2])
fold(KEYS[1], nil, now)
local state_ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], state_ttl)  -- (a no-op if absent)
redis.call('EXPIRE', KEYS[2], state_ttl)
return {string.format('%d', now), redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: counter; ARGV: ttl. One atomic round trip (through the auto-pipeline).
_COUNT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return n
"""


@dataclass(frozen=True)
class Effect:
    """One provider-side effect, recorded exactly once per idempotency key."""

    kind: str  # charge, authorization, capture, void, refund, customer.created, ...
    idempotency_key: str
    object_id: str
    amount: int | None = None
    currency: str | None = None

    @classmethod
    def of(
        cls,
        kind: str,
        idempotency_key: str,
        object_id: str,
        amount: int | None = None,
        currency: str | None = None,
    ) -> Effect:
        """``Effect(...)``, made at a third of the cost (see ``frozen_record``)."""
        return frozen_record(
            cls,
            {
                "kind": kind,
                "idempotency_key": idempotency_key,
                "object_id": object_id,
                "amount": amount,
                "currency": currency,
            },
        )

    def as_dict(self) -> dict[str, Any]:
        # dataclasses.asdict recurses and deep-copies; these fields are all scalars.
        return {
            "kind": self.kind,
            "idempotency_key": self.idempotency_key,
            "object_id": self.object_id,
            "amount": self.amount,
            "currency": self.currency,
        }


class Refusal(GatewayError):
    """The provider ran the call and refused it from what it found (no such object, a
    state that forbids it): an answer, stored under the key and replayed like any."""

    def __init__(self, code: ErrorCode, message: str, *, http_status: int) -> None:
        super().__init__(code, message, provider=PROVIDER, http_status=http_status)

    def as_response(self) -> dict[str, Any]:
        """The stored answer, in the shape the gateway turns back into this error."""
        error = {"code": self.code.value, "message": self.message}
        return {"error": {**error, "http_status": self.http_status}}


def request_fingerprint(operation: str, params: dict[str, Any]) -> str:
    """What Stripe compares on reuse of a key: the endpoint and its parameters."""
    body = orjson.dumps([operation, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


# Request models whose fields orjson writes exactly as ``model_dump(mode="json")`` does:
# str, int, bool, None, dict[str, str], StrEnum members (written as their values), these
# same models (Money) and tuples of them (a subscription's TaxRateRefs: orjson writes a
# tuple as the list the dump has). Their field dicts are serialised as they stand, with no
# intermediate dump; tests/gateways/simulator/test_fast_paths.py holds every class here
# to that (its field types, and equal fingerprints).
PLAIN_REQUESTS: frozenset[type[BaseModel]] = frozenset(
    {
        Money,
        gw.CreateCustomer,
        gw.UpdateCustomer,
        gw.DeleteCustomer,
        gw.AttachPaymentMethod,
        gw.DetachPaymentMethod,
        gw.CreatePayment,
        gw.CapturePayment,
        gw.CancelPayment,
        gw.RetrieveCustomer,
        gw.RetrievePayment,
        gw.RetrieveRefund,
        gw.CreateRefund,
        gw.SubmitDisputeEvidence,
        gw.AcceptDispute,
        gw.CreateSubscription,
        gw.CancelSubscription,
        gw.UpdateSubscription,
        gw.RetrieveSubscription,
        gw.CreatePayout,
        gw.CancelPayout,
        gw.RetrievePayout,
        gw.RetrieveBalance,
        gw.TaxRateRef,
        gw.CreateTaxRate,
        gw.ArchiveTaxRate,
        gw.InvoiceLine,
        gw.CreateInvoice,
        gw.UpdateInvoice,
        gw.FinalizeInvoice,
        gw.PayInvoice,
        gw.VoidInvoice,
        gw.MarkInvoiceUncollectible,
        gw.RetrieveInvoice,
        gw.CreateConnectedAccount,
        gw.CreateAccountLink,
        gw.RetrieveConnectedAccount,
        gw.CreateTransfer,
        gw.ReverseTransfer,
        gw.RetrieveTransfer,
        gw.PauseSubscription,
        gw.ResumeSubscription,
    }
)


def _model_fields(obj: Any) -> Any:
    """orjson's hook for what it cannot write itself: a request model's fields."""
    if type(obj) in PLAIN_REQUESTS:
        return obj.__dict__  # (a model's __dict__ holds its fields and nothing else)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def model_fingerprint(operation: str, req: BaseModel) -> str:
    """``request_fingerprint(operation, req.model_dump(mode="json"))`` (less the fields
    of ``FINGERPRINT_OMITS_NONE`` that are None), the same bytes hashed, in about half the
    time: orjson writes the model's fields as it goes (sorting the keys of every dict, the
    fields' dicts included) instead of a dump being built and then written."""
    params = req.__dict__ if type(req) in PLAIN_REQUESTS else req  # (one hook call fewer)
    omits: tuple[str, ...] = getattr(req, "FINGERPRINT_OMITS_NONE", ())
    if omits:
        # Fields added since the request's first release, left out while None: a key
        # the release before used matches (gw._Req.FINGERPRINT_OMITS_NONE). (A copy made
        # only when one is there to leave out.)
        fields = req.__dict__
        for name in omits:
            if fields.get(name, 0) is None:
                params = {k: v for k, v in fields.items() if k not in omits or v is not None}
                break
    body = orjson.dumps([operation, params], default=_model_fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def _loads(raw: str) -> Any:
    """A stored object or record, parsed: what ``json.loads`` gives, four times faster.

    The two read alike all but integers beyond 64 bits (orjson: floats) and the NaN and
    Infinity literals (orjson: an error), and nothing stored holds either: objects and
    records are written with ``orjson.dumps``, which refuses such integers and writes
    no such literals (and have only ever held strings, integers within bounds far below
    2**63, booleans, nulls, lists and dicts)."""
    return orjson.loads(raw)


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
        # Balance changes, applied with the commit: (kind, currency, amount, at).
        self.balance: list[tuple[str, str, int, int | None]] = []

    async def get(self, object_id: str) -> dict[str, Any] | None:
        """An object as this transaction sees it; the commit fails if it changes meanwhile."""
        if object_id in self.writes:
            return self.writes[object_id]
        key = self._store.object_key(object_id)
        if key not in self.reads:
            self.reads[key] = _text(await self._store._io.get(key))
        raw = self.reads[key]
        if raw is None:
            return None
        obj = _loads(raw)
        # A fresh dict each time (parsed anew, held by no one else): no copy of it needed.
        return obj if type(obj) is dict else dict(obj)

    def put(self, obj: dict[str, Any]) -> None:
        self.writes[str(obj["id"])] = obj

    def effect(self, effect: Effect) -> None:
        self.effects.append(effect)

    def settle_later(self, currency: str, amount: int, at: int | None = None) -> None:
        """Money captured: pending, available once the tenant's settlement delay has
        passed since ``at`` (unix seconds on its clock; None: the commit's now). Written
        by the commit without a read, so captures never contend on the balance."""
        self.balance.append(("p", currency, amount, at))

    def adjust_available(self, currency: str, delta: int) -> None:
        """Available balance moved by ``delta`` (a refund, or a dispute opening with its
        fee: negative, and it may go below zero; a payout canceled or failed, a dispute
        won: its amount back)."""
        self.balance.append(("a", currency, delta, None))

    def require_available(self, currency: str, amount: int, now: int) -> None:
        """The commit applies nothing unless ``amount`` is available in ``currency`` at
        ``now`` (then the call is run again: two payouts racing for one balance)."""
        self.balance.append(("g", currency, amount, now))

    async def read_balance(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """The tenant's clock now and its balance: currency → (available, pending)."""
        return await self._store.read_balance()


TxFn = Callable[[Tx], Awaitable[dict[str, Any]]]


class SimulatorStore:
    """One tenant's slice of the simulated provider (all keys share a cluster hash tag)."""

    def __init__(
        self,
        redis: Any,
        tenant_id: str,
        *,
        record_ttl_seconds: int,
        state_ttl_seconds: int = STATE_TTL_SECONDS,
        effects_cap: int = EFFECTS_CAP,
        settlement_delay_seconds: int = SETTLEMENT_DELAY_SECONDS,
    ) -> None:
        if not tenant_id or any(c in tenant_id for c in "{}:"):
            raise ValueError(f"tenant id {tenant_id!r} cannot namespace simulator keys")
        self._redis = redis
        self._io = autopipeline_for(redis)
        self._prefix = f"sim:{{{tenant_id}}}:"
        self._effects_list = f"{self._prefix}effects"
        self._balance_key = f"{self._prefix}balance"
        self._clock_key = self.object_key("clock")
        self._settlement_delay = settlement_delay_seconds
        self._record_ttl = record_ttl_seconds
        # An object outlives every idempotency record that names it (a replayed create
        # answers with an id that must still mean something).
        self._state_ttl = max(state_ttl_seconds, record_ttl_seconds)
        self._effects_cap = effects_cap
        self._commit = redis.register_script(_COMMIT)
        self._count = redis.register_script(_COUNT)
        self._read_balance = redis.register_script(_READ_BALANCE)

    def object_key(self, object_id: str) -> str:
        return f"{self._prefix}obj:{object_id}"

    def _idem_key(self, idempotency_key: str) -> str:
        return f"{self._prefix}idem:{idempotency_key}"

    @property
    def _effects_key(self) -> str:
        return self._effects_list

    async def execute(
        self, idempotency_key: str, fingerprint: str, fn: TxFn, *, keyed: bool = True
    ) -> dict[str, Any]:
        """Run ``fn`` and commit its writes, effects and response atomically, once per key.

        A key used before answers with its stored response (same parameters) or an
        idempotency error (other parameters), as Stripe does; ``fn``'s work is dropped.
        A `Refusal` is committed and stored like any response. ``keyed=False`` is a call
        the provider takes no key for (Stripe's DELETE): every call runs afresh, its
        refusals are answered but not stored, and only the read checks keep its effect
        to one.
        """
        idem = self._idem_key(idempotency_key)
        for _ in range(_MAX_CONFLICT_RETRIES):
            tx = Tx(self)
            try:
                response = await fn(tx)
            except Refusal as refusal:
                if not keyed:
                    return refusal.as_response()  # answered, with no key to keep it under
                # Stored with the reads it was decided on (a payment captured meanwhile
                # makes the refund's refusal a conflict, recomputed), nothing else.
                response = refusal.as_response()
                tx.writes.clear()
                tx.effects.clear()
                tx.balance.clear()
            except GatewayError:
                # The parameters were refused before anything was looked up: nothing is
                # stored. A key used before still answers as before (same parameters:
                # its response; other parameters: the idempotency error).
                stored = _text(await self._io.get(idem)) if keyed else None
                if stored is not None:
                    return _replay(_loads(stored), fingerprint, idempotency_key)
                raise
            record = {"state": "done", "fp": fingerprint, "response": response} if keyed else None
            answer = await self._io.run_script(self._commit, *self._commit_call(idem, record, tx))
            reply = answer[0]
            # `_text` without its call for the bytes a reply is (decoded alike).
            status = reply.decode() if type(reply) is bytes else _text(reply)
            if status == "ok":
                return response
            if status == "used":
                return _replay(_loads(_text(answer[1]) or "{}"), fingerprint, idempotency_key)
            # "conflict": an object we read changed under us; "short": a balance it
            # required is no longer there (another payout took it). Recompute afresh.
        raise GatewayError(
            ErrorCode.PROCESSING_ERROR,
            "too much contention on the simulated objects",
            provider=PROVIDER,
        )

    def _commit_call(
        self, idem: str, record: dict[str, Any] | None, tx: Tx
    ) -> tuple[list[str], list[Any]]:
        """The commit script's keys and arguments (see ``_COMMIT``) for ``tx``.

        JSON goes as orjson's bytes: the str it used to be decoded into was encoded back
        to the same UTF-8 bytes when the command was packed."""
        reads = tx.reads
        keys = [idem, self._effects_list, *reads]
        args: list[Any] = [
            b"" if record is None else orjson.dumps(record),
            self._record_ttl,
            self._state_ttl,
            self._effects_cap,
            len(reads),
        ]
        if reads:  # (most calls read nothing: no generator made for none)
            args.extend([_ABSENT if raw is None else raw for raw in reads.values()])
        args.append(len(tx.writes))
        for object_id, obj in tx.writes.items():
            keys.append(self.object_key(object_id))
            args.append(orjson.dumps(obj))
        balance = tx.balance
        args.append(len(balance))
        if balance:
            keys.append(self._balance_key)
            keys.append(self._clock_key)
            args.append(self._settlement_delay)
            for kind, currency, amount, at in balance:
                args.extend((kind, currency, amount, b"" if at is None else at))
        # orjson writes a dataclass as `as_dict` does (its fields, in definition order).
        args.extend(map(orjson.dumps, tx.effects))
        return keys, args

    async def read(self, object_id: str) -> dict[str, Any] | None:
        """An object outside any transaction (test helpers, inspection)."""
        raw = _text(await self._redis.get(self.object_key(object_id)))
        return None if raw is None else dict(json.loads(raw))

    async def finished(self, idempotency_key: str, fingerprint: str, *, kept_ms: int) -> bool:
        """Is there a finished record of this very request (its parameters' fingerprint)
        under the key, answered or refused, kept for at least ``kept_ms`` more? Another
        request's record is not this one; one about to expire may be gone when asked."""
        idem = self._idem_key(idempotency_key)
        stored = _text(await self._redis.get(idem))
        if stored is None:
            return False
        record = json.loads(stored)
        if record.get("state") != "done" or record.get("fp") != fingerprint:
            return False
        left = int(await self._redis.pttl(idem))
        return left == -1 or left >= kept_ms  # (-1: kept for good; -2: gone meanwhile)

    async def read_balance(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """The tenant's clock now and its balance, currency → (available, pending),
        what has settled by now folded into available first."""
        now_raw, flat = await self._read_balance(
            keys=[self._balance_key, self._clock_key], args=[self._state_ttl]
        )
        found: dict[str, list[int]] = {}
        for i in range(0, len(flat), 2):
            field, value = _text(flat[i]) or "", int(flat[i + 1])
            kind, _, rest = field.partition(":")
            currency = rest.split(":", 1)[0]
            pair = found.setdefault(currency, [0, 0])
            pair[0 if kind == "a" else 1] += value
        balance = {cur: (a, p) for cur, (a, p) in found.items()}
        return int(now_raw), balance

    async def effects(self) -> list[Effect]:
        """The tenant's effect ledger, oldest first."""
        rows = await self._redis.lrange(self._effects_key, 0, -1)
        return [Effect(**json.loads(_text(row) or "{}")) for row in rows]

    async def count_attempt(self, idempotency_key: str, counter: str = "attempts") -> int:
        """How many times this key has been counted by ``counter`` (failure injection
        keeps one counter per knob: a call failed before the store never had a response
        to lose)."""
        key = f"{self._prefix}{counter}:{idempotency_key}"
        return int(await self._io.run_script(self._count, [key], [self._record_ttl]))


def _replay(record: dict[str, Any], fingerprint: str, idempotency_key: str) -> dict[str, Any]:
    """The stored response of a used key, or Stripe's error for reuse with other parameters."""
    if record.get("fp") != fingerprint:
        raise GatewayError(
            ErrorCode.IDEMPOTENCY_ERROR,
            f"idempotency key {idempotency_key!r} was already used with different "
            "parameters or for another operation",
            provider=PROVIDER,
            http_status=400,
        )
    if record.get("state") != "done":  # written by an older simulator that claimed first
        raise GatewayError(
            ErrorCode.IDEMPOTENCY_ERROR,
            f"a request with idempotency key {idempotency_key!r} is still in progress",
            provider=PROVIDER,
            retryable=True,
            http_status=409,
        )
    return dict(record["response"])
