"""A CommandProcessor over plain dict tables with the real simulator (real Redis)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from paystream.agents.handlers import Tables
from paystream.agents.pipeline import CommandProcessor, Emit, Inbound
from paystream.client import build_command
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode, Settings
from paystream.streams.codec import decode_record, encode_event
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy


def new_tenant_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Harness:
    settings: Settings
    redis: Any
    tenants: dict[str, Any] = field(default_factory=dict)
    tables: Tables = field(default_factory=lambda: Tables({}, {}, {}, {}, {}))
    idempotency: dict[str, Any] = field(default_factory=dict)
    # The commands topic's committed offset per partition (None: never known).
    committed: Callable[[int], int] | None = None

    def __post_init__(self) -> None:
        pool = GatewayPool(
            GatewayDeps(settings=self.settings, redis=self.redis),
            call_policy=call_policy(self.settings),
        )
        self.pool = pool
        self.processor = CommandProcessor(
            self.settings, self.tables, self.idempotency, self.tenants, pool,
            committed=self.committed,
        )  # fmt: skip

    def add_tenant(self, tenant_id: str | None = None, **kw: Any) -> str:
        tid = tenant_id or new_tenant_id()
        self.tenants[tid] = Tenant(tenant_id=tid, **kw).model_dump(mode="json")
        return tid

    async def raw(self, inbound: Inbound) -> list[Emit]:
        return await self.processor.process(inbound)

    async def send_event(
        self,
        event: CloudEvent,
        *,
        key: bytes | None = None,
        mode: CloudEventsMode = CloudEventsMode.BINARY,
        timestamp_ms: int | None = None,
        offset: int = -1,  # >= 0: as read from Kafka (partition 0)
    ) -> tuple[list[Emit], CloudEvent | None]:
        tenant = str(event.get_extension("tenantid") or "")
        rec = encode_event(event, key if key is not None else tenant.encode(), mode)
        emits = await self.raw(
            Inbound(
                key=rec.key,
                value=rec.value,
                headers=dict(rec.headers),
                timestamp_ms=timestamp_ms or int(time.time() * 1000),
                topic=self.settings.commands_topic,
                partition=0 if offset >= 0 else -1,
                offset=offset,
            )
        )
        return emits, outcome_of(self.settings, emits)

    async def assert_redelivered_alike(self, event: CloudEvent, between: Any = None) -> None:
        """Deliver ``event`` twice (a redelivery after a crash): both answered, with
        byte-identical outcome records. ``between()`` runs after the first delivery."""
        first, out = await self.send_event(event)
        if between is not None:
            between()
        again, out_again = await self.send_event(event)
        assert out is not None and out_again is not None
        [sent] = [e.record for e in first if e.topic == self.settings.events_topic]
        [resent] = [e.record for e in again if e.topic == self.settings.events_topic]
        assert (resent.value, sorted(resent.headers)) == (sent.value, sorted(sent.headers))

    async def send(
        self, command_type: str, tenant: str, data: dict[str, Any], **kw: Any
    ) -> CloudEvent:
        mode = kw.pop("mode", CloudEventsMode.BINARY)
        key = kw.pop("key", None)
        timestamp_ms = kw.pop("timestamp_ms", None)  # the broker's (default: now)
        # Attributes the client would refuse (``attributes``: set after it built the rest).
        attributes = kw.pop("attributes", {})
        event = build_command(
            command_type, tenant if "tenantid" not in attributes else "t", data, **kw
        )
        event.get_attributes().update(attributes)
        _, outcome = await self.send_event(event, mode=mode, key=key, timestamp_ms=timestamp_ms)
        assert outcome is not None, "every command must yield an outcome"
        return outcome


class ThroughTheProcessor:
    """A client's `send`, answered by the harness's real command processor (no broker):
    the demo's flows run through it."""

    def __init__(self, harness: Harness) -> None:
        self._h = harness

    async def send(self, event: CloudEvent, *, timeout: float) -> CloudEvent:
        _, outcome = await self._h.send_event(event)
        assert outcome is not None
        return outcome


def simulator_of(h: Harness, tenant: str) -> SimulatorGateway:
    """The tenant's simulator gateway, from the harness's pool."""
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


def outcome_of(settings: Settings, emits: list[Emit]) -> CloudEvent | None:
    outs = [e for e in emits if e.topic == settings.events_topic]
    assert len(outs) <= 1, "at most one outcome per command"
    if not outs:
        return None
    rec = outs[0].record
    return decode_record(rec.key, rec.value, dict(rec.headers))


def binary_inbound(event: CloudEvent, tenant: str, offset: int) -> Inbound:
    """``event`` as the command agent takes it from the commands topic, in binary mode:
    partition 0 at ``offset``, taken now."""
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
        "paystream.commands", 0, offset,
    )  # fmt: skip


def kind(event: CloudEvent) -> str:
    return event.get_type().removeprefix("com.paystream.")


def data(event: CloudEvent) -> dict[str, Any]:
    body = event.get_data()
    assert isinstance(body, dict)
    return body


# The modules of the pipeline that read the clock as ``time.time()`` (each its own
# import of ``time``): a test moving the pipeline's clock moves all of theirs.
_CLOCK_READERS = (
    "paystream.agents.pipeline",
    "paystream.agents.provider_window",
    "paystream.agents.key_pointers",
)


def set_pipeline_clock(monkeypatch: Any, clock: Any) -> None:
    """``clock`` (anything with a ``time()``) as the pipeline's ``time`` module."""
    for module in _CLOCK_READERS:
        monkeypatch.setattr(f"{module}.time", clock)
