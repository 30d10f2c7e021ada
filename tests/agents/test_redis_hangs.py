"""A Redis that hangs (SIGSTOP: its connections open, its requests taken by the kernel, no
answer ever) under the simulator's commands, on a client built as the worker's (no
socket timeout: agents/commands.py). The call policy bounds each attempt, so every
command ends within its attempts' deadlines: answered, or parked for re-drive as for a
Redis that is down; a command needing no provider call is answered meanwhile; thawed,
commands are answered again, the parked ones re-driven, and each payment's effect is at
the provider once (requests the hang held run when it thaws: under their keys)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.gateways.simulator.resp import use_hiredis_packing
from paystream.settings import load_settings
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.fixtures.frozen_redis import frozen, own_redis

TIMEOUT = 1.0  # each provider call's (PAYSTREAM_GATEWAY_TIMEOUT_SECONDS)
ATTEMPTS = 2
RESET = 1.0  # the breaker's open → half-open delay
FROZEN_FOR = 6.0
# Most a command may take while Redis hangs: its attempts' deadlines (each may overrun
# by a tick of CallDeadlines), their backoff, and slack for a loaded host.
BOUND = ATTEMPTS * (TIMEOUT + 0.1) + 1.5


async def test_a_hung_redis_parks_simulator_commands_in_bounded_time(tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis") as rd:
        client = use_hiredis_packing(aioredis.from_url(rd.url, socket_timeout=None))
        settings = load_settings(
            redis_url=rd.url,
            gateway_timeout_seconds=TIMEOUT,
            gateway_max_attempts=ATTEMPTS,
            gateway_backoff_base_ms=1,
            breaker_reset_seconds=RESET,
            entity_retention_seconds=0,
            park_late_commands=False,
        )
        h = Harness(settings=settings, redis=client)
        tenants = [h.add_tenant() for _ in range(3)]
        sent: list[tuple[CloudEvent, float, float, str]] = []  # (command, sent, took, end)
        thawed_at: list[float] = []

        async def traffic(tenant: str) -> None:
            i = 0
            while not thawed_at or time.monotonic() < thawed_at[0] + RESET + 2.0:
                cmd = build_command(
                    "payment.create", tenant,
                    {"payment_id": f"pay_{i}", "amount": 1000 + i, "currency": "USD",
                     "payment_method_token": "pm_card_visa"},
                )  # fmt: skip
                i += 1
                started = time.monotonic()
                emits, out = await h.send_event(cmd)
                took = time.monotonic() - started
                topics = [e.topic for e in emits]
                end = (
                    kind(out) if out is not None else "parked" * (topics == [settings.retry_topic])
                )
                sent.append((cmd, started, took, end or repr(topics)))
                await asyncio.sleep(0.05)

        try:
            running = asyncio.gather(*(traffic(t) for t in tenants))
            await asyncio.sleep(1.0)  # (answered: connections open, then it hangs)
            with frozen(rd):
                frozen_at = time.monotonic()
                await asyncio.sleep(FROZEN_FOR / 2)
                # Served meanwhile: a command answered from paystream's own tables.
                started = time.monotonic()
                nowhere = await h.send("payment.capture", tenants[0], {"payment_id": "pay_none"})
                unfrozen_answer = time.monotonic() - started
                await asyncio.sleep(FROZEN_FOR / 2)
            thawed_at.append(time.monotonic())
            await asyncio.wait_for(running, 60)
            parked = [cmd for cmd, _, _, end in sent if end == "parked"]
            # Re-driven (as `dlq replay` sends a parked record again): answered.
            redriven = [kind(o) for o in [(await h.send_event(c))[1] for c in parked] if o]
            effects = {t: await simulator_of(h, t).effects() for t in tenants}
        finally:
            await h.pool.aclose()
            await client.aclose()
    ends = Counter(end for _, _, _, end in sent)
    assert set(ends) == {"payment.succeeded", "parked"}, ends
    # Those sent while it hung were parked (those it thawed under went on). (Sent, not
    # ended: one sent just before the freeze may have had its answers from Redis and end
    # just after it, succeeded: the rehearsal of session 79 met three at ~3 ms.)
    during = [
        (end, took) for _, at, took, end in sent if frozen_at <= at and at + took < thawed_at[0]
    ]
    assert during and all(end == "parked" for end, _ in during), during
    slowest = max(took for _, _, took, _ in sent)
    assert slowest < BOUND, f"a command took {slowest:.1f} s while Redis hung"
    assert kind(nowhere) == "command.rejected" and unfrozen_answer < 0.5, unfrozen_answer
    assert data(nowhere)["reason"] == "not_found"
    # Answered again once thawed (past the breaker's reset: its probe closes it).
    late = [end for _, at, _, end in sent if at > thawed_at[0] + RESET + 0.5]
    assert late and all(end == "payment.succeeded" for end in late), late
    assert redriven == ["payment.succeeded"] * len(parked), redriven
    # Each payment charged once, every one of them.
    for tenant in tenants:
        made = Counter(e.amount or 0 for e in effects[tenant] if e.kind == "charge")
        wanted = Counter(
            int(data(cmd)["amount"])
            for cmd, _, _, _ in sent
            if cmd.get_extension("tenantid") == tenant
        )
        assert made == wanted, (tenant, made - wanted, wanted - made)
