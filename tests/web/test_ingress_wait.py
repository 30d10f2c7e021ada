"""`Prefer: wait=N` (RFC 7240) as the HTTP ingress reads it."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.web.ingress import MAX_WAIT_SECONDS, _preferred_wait


@pytest.mark.parametrize(
    ("prefer", "wait"),
    [
        ("", None),
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("WAIT = 3", 3.0),
        ('wait="7"', 7.0),
        ("wait=7; x=y", 7.0),
        ("handling=lenient, wait=2, return=minimal", 2.0),
        ("wait=0", None),
        ("wait=3600", MAX_WAIT_SECONDS),
        ("wait=-1", None),
        ("wait=1.5", None),  # delta-seconds are whole
        ("nowait=5", None),
        ("wait", None),
        ("wait=\uff13", None),  # a fullwidth 3: ASCII digits only
        ("wait=\u0663", None),  # an Arabic-Indic 3
        ("wait=99999999999999999999", MAX_WAIT_SECONDS),  # any length, capped
    ],
)
def test_the_wait_preference(prefer: str, wait: float | None) -> None:
    assert _preferred_wait(prefer) == wait


def _ingress(reader: object) -> tuple[object, list[object]]:
    """A CommandIngress whose outcome reader is ``reader`` and whose produce is a no-op."""
    from paystream.settings import load_settings
    from paystream.tenancy.mirror import RegistryMirror
    from paystream.web.ingress import CommandIngress

    settings = load_settings(kafka_broker_url="kafka://127.0.0.1:9")
    produced: list[object] = []

    async def produce(rec: object, tenant: str) -> None:
        produced.append(rec)

    class Waits:
        closed = False

        async def reader(self, within: float) -> object:
            return reader

    return CommandIngress(settings, RegistryMirror(settings), produce, Waits()), produced


async def test_one_tenant_holds_at_most_its_share_of_the_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its share, a tenant's senders are answered 202 at once (others still wait);
    a wait let go (its sender hung up: the handler cancelled) frees its place."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from paystream.client import build_command
    from paystream.streams.codec import KafkaRecord
    from paystream.web import ingress as ingress_mod

    monkeypatch.setattr(ingress_mod, "MAX_WAITING_PER_TENANT", 2)
    futures: list[asyncio.Future[object]] = []

    class Reader:
        awaited = 0

        def expect(self, tenant: str, command_id: str, request: str) -> object:
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            futures.append(future)
            return future

    ingress, produced = _ingress(Reader())
    request = make_mocked_request("POST", "/v1/commands", headers={"Prefer": "wait=30"})

    def send(tenant: str) -> asyncio.Task[object]:
        event = build_command("customer.create", tenant, {})
        rec = KafkaRecord(tenant.encode(), b"{}", ())
        return asyncio.ensure_future(
            ingress._produced(request, tenant, str(event.get_id()), event, rec, tenant)
        )

    held = [send("loud"), send("loud")]
    await _until(lambda: ingress._waiting["loud"] == 2)
    assert not any(t.done() for t in held)
    past = await asyncio.wait_for(send("loud"), 1)  # beyond its share: no wait
    assert past.status == 202
    other = send("quiet")  # another tenant still waits
    await _until(lambda: ingress._waiting["quiet"] == 1)
    assert not other.done()
    for task in held:  # both senders hang up
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert "loud" not in ingress._waiting
    again = send("loud")
    await _until(lambda: ingress._waiting["loud"] == 1)
    assert not again.done()
    for task in (other, again):
        task.cancel()
    await asyncio.gather(other, again, return_exceptions=True)
    assert not ingress._waiting and len(produced) == 5


async def test_a_sender_that_hangs_up_is_let_go_within_a_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its wait ends (its place freed) once its connection is seen gone, not at the end
    of the wait it asked for."""
    import asyncio
    import time

    from aiohttp.test_utils import make_mocked_request

    from paystream.client import build_command
    from paystream.streams.codec import KafkaRecord
    from paystream.web import ingress as ingress_mod

    monkeypatch.setattr(ingress_mod, "CONNECTION_CHECK_SECONDS", 0.05)

    class Reader:
        awaited = 0

        def expect(self, tenant: str, command_id: str, request: str) -> object:
            return asyncio.get_running_loop().create_future()  # (never answered)

    class Transport:
        closing = False

        def is_closing(self) -> bool:
            return self.closing

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    transport = Transport()
    ingress, _ = _ingress(Reader())
    request = make_mocked_request(
        "POST", "/v1/commands", headers={"Prefer": "wait=30"}, transport=transport
    )
    event = build_command("customer.create", "shop", {})
    task = asyncio.ensure_future(
        ingress._produced(
            request, "shop", str(event.get_id()), event, KafkaRecord(b"shop", b"{}", ()), "shop"
        )
    )
    await _until(lambda: ingress._waiting["shop"] == 1)
    await asyncio.sleep(0.2)  # (four connection checks: still connected, still waiting)
    assert not task.done() and ingress._waiting["shop"] == 1
    started = time.monotonic()
    transport.closing = True  # the sender hung up
    answer = await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1
    assert answer.status == 202 and not ingress._waiting


async def _until(condition: Any, timeout: float = 5.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_a_tenant_s_rate_limit_is_paced_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flood guard's bucket: full at the start, refilled at the rate, a changed limit
    keeps what was spent, a removed one paces nothing."""
    from paystream.tenancy.limits import TenantLimits
    from paystream.web import ingress as ingress_module

    ingress, _ = _ingress(None)
    now_ms = [1_000_000]
    monkeypatch.setattr(ingress_module.time, "monotonic_ns", lambda: now_ms[0] * 1_000_000)
    paced = ingress._paced  # type: ignore[attr-defined]
    two = TenantLimits(commands_per_second=2, burst=3)

    def refused_after() -> int | None:
        try:
            paced("acme", two)
        except ingress_module._Refused as refused:
            assert (refused.status, refused.result) == (429, "rate_limited")
            return int(refused.extra["retry_after_ms"])
        return None

    assert [refused_after() for _ in range(4)] == [None, None, None, 500]
    now_ms[0] += 499
    assert refused_after() == 1  # 998 milli-tokens: 1 ms short
    now_ms[0] += 1
    assert refused_after() is None
    paced("globex", two)  # another tenant has a bucket of its own
    # Raised to 10/s: the tokens spent stay spent (none now), refilled at the new rate.
    ten = TenantLimits(commands_per_second=10, burst=3)
    with pytest.raises(ingress_module._Refused):
        paced("acme", ten)
    now_ms[0] += 100
    paced("acme", ten)
    # No limit: nothing paced, and the bucket forgotten.
    for _ in range(50):
        paced("acme", TenantLimits())
    assert "acme" not in ingress._buckets  # type: ignore[attr-defined]
