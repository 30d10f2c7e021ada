"""Requests that got no answer counted as the HTTP phase's throughput once they were kept in
its latency (review h68af): an ingress refusing every connection read as the offered
rate."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from paystream.bench.load import generate_commands
from paystream.bench.probe import CpuSampler


class _NothingSeen:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    async def wait_for(self, ids: Any, *, idle_timeout: float, progress: Any = None) -> int:
        return 0

    def seen(self, ids: Any) -> int:
        return 0

    def outcome_types(self, ids: Any) -> dict[str, int]:
        return {}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_requests_refused_are_no_throughput() -> None:
    from paystream.bench.http_phases import HttpPhases

    paced = generate_commands(10, ["bench-x-t000"], prefix="hf-", seed=1)

    async def run() -> Any:
        phases = HttpPhases(
            f"http://127.0.0.1:{_closed_port()}/",
            "token",
            _NothingSeen(),  # type: ignore[arg-type]
            CpuSampler({}),
            idle_timeout=1,
            say=lambda _m: None,
            notes=[],
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            return await phases.at_rate(session, paced, rate=50)

    result = asyncio.run(run())
    assert sum(result.answers.values()) == 10
    assert all(k.startswith("error:") for k in result.answers), result.answers
    # Nothing was answered: the phase has no throughput to show.
    assert result.throughput == 0, (result.throughput, result.answers)
