"""Does an entity say a command already took effect, when no idempotency record does?

A crash can keep a batch's entity changelog writes and lose its idempotency and limits
writes (each table's changelog is produced on its own). The redelivered command is then
not known as let through, and whatever changed since (the tenant suspended or removed,
its provider key broken, its limits lowered) would refuse it with a final rejection,
though the provider charged it and its entity says so.

So before such a refusal the pipeline asks the command's own handler: run with a
stand-in gateway, a handler reads the entities it needs and, for a command that already
changed one of them, raises ``AlreadyApplied`` before its first provider call (every
handler checks its entities before calling out; none writes a table). The first provider
call ends the run: the stand-in refuses it. Asked only on those refusal paths, so the
common path pays nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from pydantic import BaseModel

from paystream.agents.handlers import (
    HANDLERS,
    AlreadyApplied,
    AnsweredByAnother,
    HandlerContext,
    Rejection,
    Tables,
)
from paystream.gateways import base as gw
from paystream.log_limits import ThrottledLog
from paystream.streams.outcomes import CommandRef

__all__ = [
    "ANSWERED_BY_ANOTHER",
    "EFFECT_RECORDED",
    "READ_ONLY",
    "NoProvider",
    "ProviderCall",
    "applied_by_entity",
    "first_provider_call",
]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# Commands that change no entity: nothing to find, and their handler runs to the end
# without a provider call (an export scans tables), so they are not asked.
READ_ONLY = frozenset({"customer.export"})


@dataclass(frozen=True, slots=True)
class NoProvider:
    """Stands in for a tenant's gateway where none may be called: a handler gets as far
    as its first provider call, which raises ``refusal``."""

    provider: str  # what the handler compares its entities' provider with
    refusal: Rejection
    # (What a create's request carries depends on them; none is sent from here.)
    capabilities: frozenset[gw.Capability] = frozenset()

    @property
    def offered(self) -> frozenset[gw.Capability]:
        return self.capabilities  # (an `unsupported` worded from here is never shown)

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> NoReturn:
        raise self.refusal

    def context(
        self, cmd: CommandRef, tables: Tables, request_hash: str, id_window_seconds: float
    ) -> HandlerContext:
        return HandlerContext(
            cmd=cmd,
            gateway=cast(gw.PaymentGateway, self),
            tables=tables,
            call=self.call,
            request_hash=request_hash,
            id_window_seconds=id_window_seconds,
        )


async def applied_by_entity(
    tables: Tables,
    cmd: CommandRef,
    data: Any,
    request_hash: str,
    stand_in: NoProvider,
    *,
    id_window_seconds: float,
) -> AlreadyApplied | None:
    """What the command's handler finds if this command already changed an entity
    (``cmd.command_id`` recorded in it, for the same request): its outcome and the salt
    of the record that made it; None if nothing. ``id_window_seconds``: the idempotency
    window the run uses (it decides which entity a create's id names: ``new_id``)."""
    if cmd.command_type in READ_ONLY:
        return None
    context = stand_in.context(cmd, tables, request_hash, id_window_seconds)
    try:
        await HANDLERS[cmd.command_type](context, data)
    except AlreadyApplied as done:
        return done
    except Exception:  # refused, not found, a conflict: not known to have applied
        return None
    return None


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """A gateway call as a handler would make it."""

    operation: str  # the PaymentGateway method
    request: BaseModel
    idempotency_key: str


class _FirstCall(Exception):
    def __init__(self, call: ProviderCall) -> None:
        super().__init__(call.operation)
        self.call = call


@dataclass(frozen=True, slots=True)
class _CallProbe:
    """Stands in for a tenant's gateway to learn the handler's first provider call:
    every operation of the protocol raises ``_FirstCall`` with it."""

    provider: str
    capabilities: frozenset[gw.Capability]  # the tenant's gateway's: its requests' shape

    @property
    def offered(self) -> frozenset[gw.Capability]:
        return self.capabilities  # (an `unsupported` worded from here is never shown)

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await fn()

    def __getattr__(self, operation: str) -> Callable[..., Awaitable[NoReturn]]:
        if operation not in gw.OPERATION_CAPABILITY:
            raise AttributeError(operation)

        async def first_call(req: BaseModel, *, idempotency_key: str) -> NoReturn:
            raise _FirstCall(ProviderCall(operation, req, idempotency_key))

        return first_call


# What first_provider_call answers for a command whose effect an entity records, and
# for one whose request another command of the same request made the entity of.
EFFECT_RECORDED = "effect recorded"
ANSWERED_BY_ANOTHER = "answered by another"


async def first_provider_call(
    tables: Tables,
    cmd: CommandRef,
    data: Any,
    request_hash: str,
    provider: str,
    *,
    id_window_seconds: float,
    capabilities: frozenset[gw.Capability] = frozenset(),
) -> ProviderCall | str | None:
    """The first provider call the command's handler makes when it finishes a command
    let through before (keys and requests derive from the command and the entities it
    names, never from time or chance); EFFECT_RECORDED when it finds its effect
    recorded, ANSWERED_BY_ANOTHER when another command of the same request made its
    entity; None when it makes none: it is refused first (not found, a state that
    forbids it)."""
    if cmd.command_type in READ_ONLY:
        return None
    probe = _CallProbe(provider, capabilities)
    context = HandlerContext(
        cmd=cmd,
        gateway=cast(gw.PaymentGateway, probe),
        tables=tables,
        call=probe.call,
        request_hash=request_hash,
        let_through=True,  # as the run that would finish it
        id_window_seconds=id_window_seconds,
    )
    try:
        await HANDLERS[cmd.command_type](context, data)
    except _FirstCall as first:
        return first.call
    except AlreadyApplied:
        return EFFECT_RECORDED
    except AnsweredByAnother:
        return ANSWERED_BY_ANOTHER
    except Rejection:
        return None
    except Exception as exc:  # a bug: refused as before, and said (at most once a minute)
        log.debug("probing the provider call of %s failed", cmd.command_type, exc_info=True)
        _throttled.warning(
            ("probe", cmd.command_type),
            "probing the provider call of %s failed: %r",
            cmd.command_type,
            exc,
        )
        return None
    log.debug("%s made no provider call", cmd.command_type)
    return None
