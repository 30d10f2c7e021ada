"""`paystream bench` measurement defects (review h68ab): the bare Faust forwarder was not
tuned like the worker (16 KiB producer batches, unbounded polls, Faust environment
overrides), HTTP latency dropped requests that got no answer, achieved_rate divided N
sends by N-1 intervals, non-finite rates were taken, --in-process cut batches unlike the
agent, and console tracing broke --in-process --json."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from paystream.bench.load import generate_commands
from paystream.bench.probe import CpuSampler, send_paced
from paystream.bench.runner import BenchOptions


class _InstantProducer:
    """An aiokafka producer stand-in whose sends are acknowledged at once."""

    async def send(self, topic: str, value: bytes, *, key: Any = None, headers: Any = None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_achieved_rate_of_an_on_time_sender_is_the_offered_rate() -> None:
    # 10 commands at 20/s, every one sent on time: due at 0, 50, ..., 450 ms. The
    # sender kept the offered rate exactly, but SendLog.rate divides 10 sends by the
    # 450 ms between the first and the last: 22.2/s, "sent at 22.2/s" for 20 offered.
    commands = generate_commands(10, ["bench-x-t000"], prefix="ar-", seed=1)
    log = asyncio.run(send_paced(_InstantProducer(), "t", commands, rate=20))  # type: ignore[arg-type]
    assert log.max_send_lag < 0.02  # (it really was on time)
    assert log.rate == pytest.approx(20, rel=0.03)


@pytest.mark.parametrize(
    "bad",
    [
        {"rate": math.inf},
        {"rate": math.nan},
        {"rate_seconds": math.inf},
        {"rate_seconds": math.nan},
    ],
)
def test_bench_options_refuse_non_finite_rates(bad: dict[str, float]) -> None:
    # --rate inf / --rate-seconds inf crash with OverflowError (int(inf)) after the
    # services and the worker have started; --rate nan skips the rate phase silently
    # (nan > 0 is False) and reports offered_rate 0; --rate-seconds nan crashes with
    # ValueError. --broker-drift already refuses them (f1e19f3).
    with pytest.raises(ValueError):
        BenchOptions(**bad)  # type: ignore[arg-type]


class _StubWatcher:
    """What HttpPhases.at_rate asks of the OutputWatcher: every outcome already seen."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    async def wait_for(self, ids: Any, *, idle_timeout: float, progress: Any = None) -> int:
        return len(ids)

    def seen(self, ids: Any) -> int:
        return len(ids)

    def outcome_types(self, ids: Any) -> dict[str, int]:
        return {"payment.succeeded": len(ids)}


def test_http_rate_percentiles_keep_a_request_that_got_no_answer() -> None:
    # The at_rate phase says every request counts in the percentiles ("the slowest would
    # otherwise drop out"), but a request that ends in a client error (the session's
    # timeout, a reset connection) never gets an answered_at: it drops out, and with it
    # the slowest wait of the phase. Here 1 of 4 hangs past the client's timeout: the
    # phase's p99 is that of the 3 fast ones.
    from paystream.bench.http_phases import HttpPhases

    paced = generate_commands(4, ["bench-x-t000"], prefix="hr-", seed=1)
    slow_id = paced[1].command_id

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("ce-id") == slow_id:
            await asyncio.Event().wait()  # (never answered: the client times out)
        return web.json_response({"type": "com.paystream.payment.succeeded"})

    async def run() -> Any:
        app = web.Application()
        app.router.add_post("/v1/commands", handler)
        server = TestServer(app)
        await server.start_server()
        try:
            phases = HttpPhases(
                str(server.make_url("/")),
                "token",
                _StubWatcher(),  # type: ignore[arg-type]
                CpuSampler({}),
                idle_timeout=1,
                say=lambda _m: None,
                notes=[],
            )
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                return await phases.at_rate(session, paced, rate=50)
        finally:
            await server.close()

    result = asyncio.run(run())
    assert result.answers.get("error:TimeoutError") == 1  # (the slow one did time out)
    assert len(result.latencies_ms) == len(paced)
    assert result.pct(99) >= 500


def test_faust_forwarder_has_the_worker_s_producer_and_poll_settings() -> None:
    # The forwarder's docstring says it mirrors the worker's transport settings; two that
    # shape throughput differ: the worker's producer batches are 512 KiB (Faust's 16 KiB
    # default for the forwarder, which aiokafka drains one batch per partition per
    # request), and the worker's polls are capped at 500 records (the forwarder's are
    # unbounded: a pre-filled topic is handed over in whole fetches).
    from paystream.app import app as worker_app

    fwd = importlib.import_module("paystream.bench.faust_forwarder")
    for name in ("producer_max_batch_size", "broker_max_poll_records", "stream_buffer_maxsize"):
        assert getattr(fwd.app.conf, name) == getattr(worker_app.conf, name), name


def test_faust_forwarder_ignores_faust_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker's app ignores Faust's generic environment variables (env={}); the
    # forwarder, started with the bench's whole environment, does not: PRODUCER_ACKS,
    # BROKER_MAX_POLL_RECORDS, ... in the environment change the baseline alone.
    monkeypatch.setenv("PRODUCER_ACKS", "1")
    monkeypatch.setenv("PRODUCER_LINGER_MS", "50")
    fwd = importlib.reload(importlib.import_module("paystream.bench.faust_forwarder"))
    assert fwd.app.conf.producer_acks == -1
    assert fwd.app.conf.producer_linger == pytest.approx(0.001)


def test_in_process_batches_are_cut_per_tenant_as_the_agent_cuts_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Since 67e5f9a the agent ends a batch before a tenant's 33rd command
    # (PAYSTREAM_BATCH_TENANT_MAX, 32); --in-process, which says it runs the commands
    # "batch by batch and tenant-concurrently as the agent does", still runs 500 a batch,
    # ~250 of one tenant's in a row with 2 tenants.
    from paystream.bench import in_process
    from paystream.settings import load_settings

    cap = load_settings().batch_tenant_max
    seen: list[int] = []
    real = in_process._one_batch

    async def spy(processor: Any, batch: list[Any], *args: Any) -> Any:
        per_tenant: dict[Any, int] = {}
        for rec in batch:
            per_tenant[rec.key] = per_tenant.get(rec.key, 0) + 1
        seen.append(max(per_tenant.values()))
        return await real(processor, batch, *args)

    monkeypatch.setattr(in_process, "_one_batch", spy)
    in_process.run_in_process(
        commands=200, tenants=2, rounds=1, seed=7, redis_url=redis_url, say=lambda _m: None
    )
    assert seen and max(seen) <= cap, seen


def test_in_process_json_is_the_only_thing_on_stdout_with_console_tracing(
    redis_url: str,
) -> None:
    # --in-process sets tracing up as the worker would have it; with
    # PAYSTREAM_OTEL_EXPORTER=console the spans are written on stdout beside the --json
    # object, which no longer parses.
    from paystream.bench.cli import bench_command

    result = CliRunner().invoke(
        bench_command,
        ["--in-process", "-n", "20", "-t", "2", "--rounds", "1", "--json", "-q"],
        env={"REDIS_URL": redis_url, "PAYSTREAM_OTEL_EXPORTER": "console"},
    )
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_in_process_with_a_provider_latency_and_no_limits_reports_them(redis_url: str) -> None:
    # `--provider-latency-ms` and `--no-limits` (what running a tenant's commands side by
    # side saves on a provider that takes its time): the same outcomes as without them,
    # and the report says how it ran.
    from paystream.bench import in_process

    kw: dict[str, Any] = {
        "commands": 40, "tenants": 2, "rounds": 1, "seed": 7, "redis_url": redis_url,
        "say": lambda _m: None,
    }  # fmt: skip
    slow = in_process.run_in_process(**kw, provider_latency_ms=5, limits="none")
    plain = in_process.run_in_process(**kw)
    assert slow.outcomes == plain.outcomes
    report = slow.as_json()
    assert report["provider_latency_ms"] == 5 and report["tenant_limits"] == "none"
    assert report["in_process_wall_commands_per_second"] > 0
    assert "provider latency 5 ms" in slow.render()


@pytest.mark.parametrize(
    ("lost_in", "status"), [(None, 0), ("raw", 3), ("faust", 3), ("floor", 3), ("pipeline", 3)]
)
def test_a_record_lost_by_any_phase_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, lost_in: str | None, status: int
) -> None:
    # Only the pipeline's and the HTTP phases' losses reached the exit status: a baseline
    # that lost records reported a figure over fewer records than it was sent, and the
    # ratio against it flattered the pipeline, with the run passing (review h68ab).
    from click.testing import CliRunner

    from paystream.bench import runner as bench_runner
    from paystream.bench.cli import bench_command
    from paystream.bench.stats import BenchReport, PhaseResult

    def phase(name: str) -> PhaseResult:
        return PhaseResult(
            name=name, records=10, received=9 if name == lost_in else 10, seconds=1.0,
            throughput=10.0,
        )  # fmt: skip

    report = BenchReport(
        commands=10, tenants=1, broker="tansu", pipeline=phase("pipeline"),
        raw=phase("raw"), faust=phase("faust"), floor=phase("floor"), duplicate_outcomes=2,
    )  # fmt: skip
    monkeypatch.setattr(bench_runner, "run_bench", lambda options: report)
    result = CliRunner().invoke(bench_command, ["-q", "--json", "--skip-ledger"])
    assert result.exit_code == status, result.output
    out = json.loads(result.output)
    assert out["duplicate_outcomes"] == 2
    assert out["baseline_missing_records"] == (1 if lost_in in ("raw", "faust", "floor") else 0)


def test_in_process_limits_rate_keeps_the_rate_and_per_payment_limits_alone(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--limits rate`: every other tenant keeps its rate and per-payment limits, and none
    # has a daily volume (near which a payment waits for the earlier ones' answers).
    from paystream.bench import in_process
    from paystream.tenancy.limits import TenantLimits

    registries: list[dict[str, Any]] = []
    real = in_process.CommandProcessor

    def processor(settings: Any, tables: Any, idem: Any, registry: Any, *a: Any, **kw: Any) -> Any:
        registries.append(registry)
        return real(settings, tables, idem, registry, *a, **kw)

    monkeypatch.setattr(in_process, "CommandProcessor", processor)
    kw: dict[str, Any] = {
        "commands": 20, "tenants": 4, "rounds": 1, "seed": 7, "redis_url": redis_url,
        "say": lambda _m: None,
    }  # fmt: skip
    report = in_process.run_in_process(**kw, limits="rate")
    assert report.as_json()["tenant_limits"] == "rate"
    limits = [TenantLimits(**t["limits"]) for t in registries[0].values()]
    assert sum(1 for x in limits if x.enforced) == 2
    assert all(x.commands_per_second and x.max_payment_amount for x in limits if x.enforced)
    assert not any(x.daily_payment_volume for x in limits)
    with pytest.raises(ValueError, match="limits must be one of"):
        in_process.run_in_process(**kw, limits="some")
