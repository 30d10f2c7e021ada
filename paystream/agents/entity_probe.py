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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from paystream.agents.handlers import HANDLERS, AlreadyApplied, HandlerContext, Rejection, Tables
from paystream.gateways import base as gw
from paystream.streams.outcomes import CommandRef

__all__ = ["READ_ONLY", "NoProvider", "applied_by_entity", "first_provider_key"]

# Commands that change no entity: nothing to find, and their handler runs to the end
# without a provider call (an export scans tables), so they are not asked.
READ_ONLY = frozenset({"customer.export"})


@dataclass(frozen=True, slots=True)
class NoProvider:
    """Stands in for a tenant's gateway where none may be called: a handler gets as far
    as its first provider call, which raises ``refusal``."""

    provider: str  # what the handler compares its entities' provider with
    refusal: Rejection

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> NoReturn:
        raise self.refusal

    def context(self, cmd: CommandRef, tables: Tables, request_hash: str) -> HandlerContext:
        return HandlerContext(
            cmd=cmd,
            gateway=cast(gw.PaymentGateway, self),
            tables=tables,
            call=self.call,
            request_hash=request_hash,
        )


async def applied_by_entity(
    tables: Tables, cmd: CommandRef, data: Any, request_hash: str, stand_in: NoProvider
) -> AlreadyApplied | None:
    """What the command's handler finds if this command already changed an entity
    (``cmd.command_id`` recorded in it, for the same request): its outcome and the salt
    of the record that made it; None if nothing."""
    if cmd.command_type in READ_ONLY:
        return None
    try:
        await HANDLERS[cmd.command_type](stand_in.context(cmd, tables, request_hash), data)
    except AlreadyApplied as done:
        return done
    except Exception:  # refused, not found, a conflict: not known to have applied
        return None
    return None


class _FirstCall(Exception):
    def __init__(self, idempotency_key: str) -> None:
        super().__init__(idempotency_key)
        self.idempotency_key = idempotency_key


@dataclass(frozen=True, slots=True)
class _KeyProbe:
    """Stands in for a tenant's gateway to learn the idempotency key of the handler's
    first provider call: every gateway operation raises ``_FirstCall`` with it."""

    provider: str

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await fn()

    def __getattr__(self, operation: str) -> Callable[..., Awaitable[NoReturn]]:
        if operation.startswith("_"):
            raise AttributeError(operation)

        async def first_call(req: Any, *, idempotency_key: str) -> NoReturn:
            raise _FirstCall(idempotency_key)

        return first_call


async def first_provider_key(
    tables: Tables, cmd: CommandRef, data: Any, request_hash: str, provider: str
) -> str | None:
    """The provider idempotency key the command's handler would send its first provider
    call under (keys derive from the command, never from time or chance), as a first
    run of it would; None when it would make none (refused first, or already applied)."""
    if cmd.command_type in READ_ONLY:
        return None
    probe = _KeyProbe(provider)
    context = HandlerContext(
        cmd=cmd,
        gateway=cast(gw.PaymentGateway, probe),
        tables=tables,
        call=probe.call,
        request_hash=request_hash,
    )
    try:
        await HANDLERS[cmd.command_type](context, data)
    except _FirstCall as first:
        return first.idempotency_key
    except Exception:  # refused, not found, applied: no provider call to ask about
        return None
    return None
