"""Smoke test of `paystream bench`: a tiny real run, JSON shape and sanity, no timing asserts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from paystream.bench.cli import bench_command
from paystream.bench.first_record import read_first_record
from paystream.bench.load import generate_commands, tenant_ids
from paystream.bench.measure import cut_cpu
from paystream.bench.probe import CpuSampler
from paystream.bench.profiling import summarise
from paystream.bench.runner import batch_series, mean_batch
from paystream.bench.stats import BenchReport, PhaseResult, percentile, render_table

REQUIRED = {
    "throughput_cps",
    "raw_passthrough_cps",
    "faust_passthrough_cps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "offered_rate",
    "floor_p50_ms",
    "floor_p99_ms",
    "ledger_events_per_s",
    "ledger_db_statement_p95_ms",
}


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 95) == 7


def test_phase_throughput_from_first_to_last_arrival() -> None:
    phase = PhaseResult.from_arrivals("x", 5, [10.0, 10.5, 11.0, 11.5, 12.0])
    assert phase.throughput == pytest.approx(2.0)
    assert phase.missing == 0


def test_a_phase_answered_in_one_fetch_is_timed_from_its_first_send() -> None:
    # A short phase can come back in one fetch: every arrival shares one instant, and
    # first-to-last arrival is no window at all (CI once reported 0 commands/s).
    phase = PhaseResult.from_arrivals("x", 4, [12.0] * 4, started=10.0)
    assert (phase.seconds, phase.throughput) == (2.0, 2.0)
    assert phase.window == (10.0, 12.0)
    # Without a send time there is nothing to time it by: no figure rather than a wrong one.
    assert PhaseResult.from_arrivals("x", 4, [12.0] * 4).throughput == 0.0


def _sampled(times_cpu: list[tuple[float, float]]) -> CpuSampler:
    sampler = CpuSampler({})
    sampler.samples["faust"] = ([t for t, _ in times_cpu], [c for _, c in times_cpu])
    sampler.pids["faust"] = 0
    return sampler


def test_a_phase_s_cpu_counts_from_its_first_record_not_its_first_output() -> None:
    # CI's case: a forwarder did all its work (0.1 s of CPU) between its first record at
    # 10.0 and 10.2, then sat idle while the bench read its output in two fetches at
    # 10.25 and 10.3. The arrival window held no CPU at all: no figure, and the run's
    # headline ratio was null.
    cpu = _sampled([(9.9, 1.0), (10.0, 1.0), (10.2, 1.1), (10.4, 1.1)])
    phase = PhaseResult.from_arrivals("faust", 4, [10.25, 10.25, 10.3, 10.3], sut="faust")
    cut_cpu(phase, cpu, began=10.0)
    assert phase.cpu_window == (10.0, 10.3)
    assert phase.sut_us_per_record == pytest.approx(1e6 * 0.1 / 4)
    assert phase.sut_cpu_pct == pytest.approx(100 * 0.1 / 0.3)
    # A start before the process's first reading counts from that reading.
    early = PhaseResult.from_arrivals("faust", 4, [10.25, 10.25, 10.3, 10.3], sut="faust")
    cut_cpu(early, _sampled([(10.1, 1.0), (10.2, 1.1), (10.4, 1.1)]), began=10.0)
    assert early.sut_us_per_record == pytest.approx(1e6 * 0.1 / 4)
    # Without a start, the arrival window alone: here it saw nothing of the work.
    alone = PhaseResult.from_arrivals("faust", 4, [10.25, 10.25, 10.3, 10.3], sut="faust")
    cut_cpu(alone, cpu)
    assert alone.cpu_window == (10.25, 10.3) and not alone.sut_us_per_record


def test_report_sets_the_rate_phase_beside_the_broker_floor() -> None:
    def paced(name: str, latencies: list[float]) -> PhaseResult:
        n = len(latencies)
        return PhaseResult.from_arrivals(
            name, n, [float(i) for i in range(n)], latencies, offered_rate=500
        )

    full = PhaseResult.from_arrivals("pipeline", 3, [0.0, 1.0, 2.0])
    report = BenchReport(
        commands=3,
        tenants=1,
        broker="tansu",
        pipeline=full,
        rate=paced("rate", [40.0, 50.0, 90.0]),
        floor=paced("floor", [10.0, 20.0, 30.0]),
    )
    out = report.as_json()
    assert (out["p99_ms"], out["floor_p50_ms"], out["floor_p99_ms"]) == (90.0, 20.0, 30.0)
    assert out["phases"]["floor"]["offered_rate"] == 500
    text = render_table(report)
    assert "raw passthrough @ 500/s" in text
    assert "p99 at 500/s: pipeline 90.0 ms, broker floor" in text and "30.0 ms" in text


def test_command_mix_is_ordered_and_realistic() -> None:
    tenants = tenant_ids("abc", 3)
    cmds = generate_commands(400, tenants, prefix="p-", seed=1)
    assert len(cmds) == 400
    assert len({c.command_id for c in cmds}) == 400
    kinds = [c.command_type for c in cmds]
    assert kinds.count("payment.create") > 300
    assert "payment.capture" in kinds and "refund.create" in kinds
    # Every follow-up comes after the create it names, within the same tenant.
    created: set[tuple[str, bytes]] = set()
    for c in cmds:
        headers = dict(c.record.headers)
        assert headers["ce_tenantid"].decode() == c.tenant_id == c.record.key.decode()  # type: ignore[union-attr]
        body = json.loads(c.record.value)
        if c.command_type == "payment.create":
            created.add((c.tenant_id, body["payment_id"]))
        else:
            assert (c.tenant_id, body["payment_id"]) in created


def test_profile_summary_attributes_stages() -> None:
    raw = "\n".join(
        [
            "main (paystream/worker.py);CommandProcessor._run (paystream/agents/pipeline.py);"
            "SimulatorStore.claim (paystream/gateways/simulator/store.py) 30",
            "main (paystream/worker.py);CommandProcessor._apply (paystream/agents/pipeline.py);"
            "Table.on_key_set (faust/tables/table.py) 10",
            "_run_once (asyncio/base_events.py);EpollSelector.select (selectors.py) 50",
        ]
    )
    summary = summarise(raw, rate=100, commands=10)
    assert summary["samples"] == 40 and summary["idle_samples"] == 50
    stages = {row["name"]: row["samples"] for row in summary["stages"]}
    assert stages["gateway: simulator store (Redis round trips)"] == 30
    assert stages["table writes (Faust __setitem__ + changelog send)"] == 10


def test_worker_batch_figures_from_its_metrics() -> None:
    def exposition(size: tuple[float, int], process: float, publish: float) -> str:
        return "\n".join(
            [
                "# HELP paystream_batch_size Commands per processed batch.",
                "# TYPE paystream_batch_size histogram",
                'paystream_batch_size_bucket{le="1.0"} 0.0',
                f"paystream_batch_size_count {size[1]}",
                f"paystream_batch_size_sum {size[0]}",
                f'paystream_batch_seconds_count{{stage="process"}} {size[1]}',
                f'paystream_batch_seconds_sum{{stage="process"}} {process}',
                f'paystream_batch_seconds_count{{stage="publish"}} {size[1]}',
                f'paystream_batch_seconds_sum{{stage="publish"}} {publish}',
            ]
        )

    before = batch_series(exposition((100.0, 10), 1.0, 0.5))
    after = batch_series(exposition((400.0, 20), 1.5, 0.7))
    assert before == {"batch": (100.0, 10), "process": (1.0, 10), "publish": (0.5, 10)}
    # between the two readings: 10 batches of 30 commands, 50 ms and 20 ms each
    assert mean_batch(before, after) == (30.0, {"process": 50.0, "publish": 20.0})
    assert mean_batch(before, before) == (None, {})
    assert mean_batch(None, after) == (None, {})
    assert batch_series("# nothing here\nother_metric 1.0") is None


@pytest.mark.slow
def test_bench_smoke_run_json() -> None:
    """300 commands, 3 tenants, 100/s for 1 s, both baselines (300 records through Faust,
    1,200 through the raw passthrough), on a fresh embedded stack: sizes that make every
    phase run and measure, no more (no figure is compared)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KAFKA_BROKER_URL", "REDIS_URL", "DATABASE_URL"}
    }
    proc = subprocess.run(
        [
            sys.executable, "-m", "paystream", "bench",
            "-n", "300", "-t", "3", "--rate", "100", "--rate-seconds", "1",
            "--baseline-records", "300", "--raw-records", "1200", "--json",
        ],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out.keys() >= REQUIRED
    assert out["throughput_cps"] > 0
    assert out["raw_passthrough_cps"] > 0
    raw = out["phases"]["raw"]
    assert raw["received"] == raw["records"] == 1200
    assert out["faust_passthrough_cps"] > 0
    assert out["cpu_ratio_vs_faust"] > 0
    assert 0 < out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    assert out["offered_rate"] == 100
    # the broker's own floor: the same paced load through the raw aiokafka passthrough
    floor = out["phases"]["floor"]
    assert floor["received"] == floor["records"] == 100 and floor["offered_rate"] == 100
    assert 0 < out["floor_p50_ms"] <= out["floor_p95_ms"] <= out["floor_p99_ms"]
    assert out["latency_phase"] == "rate"
    assert out["missing_outcomes"] == 0
    # the worker's own account of its batches: size, and time running and producing them
    for phase in ("pipeline", "rate"):
        assert out["phases"][phase]["mean_batch"] >= 1
        assert out["phases"][phase]["batch_stage_ms"].keys() == {"process", "publish"}
        assert all(ms > 0 for ms in out["phases"][phase]["batch_stage_ms"].values())
    assert out["outcomes"] == 300 + 100
    assert sum(out["outcome_types"].values()) == 400
    assert "command.rejected" not in out["outcome_types"]
    assert "pipeline:" in proc.stderr
    # where rate-phase latency goes: before the worker produced the outcome, and after
    assert any("command due → outcome produced" in n for n in out["notes"]), out["notes"]
    # the same worker fed over its HTTP ingress: every request taken, every outcome out
    http, http_rate = out["phases"]["http"], out["phases"]["http_rate"]
    assert http["answers"] == {"202": 300} and http["received"] == 300
    assert http_rate["answers"] == {"200": 100} and http_rate["received"] == 100
    assert out["http_missing_outcomes"] == 0
    assert out["http_throughput_cps"] > 0 and out["http_answered_per_s"] > 0
    assert out["http_worker_cpu_ratio_vs_kafka"] > 0
    # (through a `paystream ingress` process of its own, whose CPU is counted apart)
    assert out["http_via"] == "ingress" and out["http_ingress_cpu_us_per_command"] > 0
    assert 0 < out["http_p50_ms"] <= out["http_p95_ms"] <= out["http_p99_ms"]
    assert sum(out["http_outcome_types"].values()) == 400
    assert "command.rejected" not in out["http_outcome_types"]
    assert any("request due → outcome read by the bench" in n for n in out["notes"]), out["notes"]
    assert "http rate:" in proc.stderr
    # the ledger sink phase drained every outcome into PostgreSQL
    ledger = out["ledger"]
    # (the bench also sends a few warm-up commands of its own)
    assert ledger["outcomes"] >= 400 and ledger["events_written"] >= 400
    assert out["ledger_events_per_s"] > 0
    assert 0 < ledger["db_statement_p50_ms"] <= out["ledger_db_statement_p95_ms"]


def test_cli_rejects_bad_options() -> None:
    result = CliRunner().invoke(bench_command, ["-n", "1"])
    assert result.exit_code != 0
    assert "at least 2" in result.output
    refused = CliRunner().invoke(bench_command, ["--raw-records", "0"])
    assert refused.exit_code == 2 and "--raw-records" in refused.output


def test_in_process_bench_runs_every_command_to_an_outcome(redis_url: str) -> None:
    from paystream.bench.in_process import run_in_process

    said: list[str] = []
    report = run_in_process(
        commands=150, tenants=3, rounds=2, seed=7, redis_url=redis_url, say=said.append
    )
    assert len(report.cpu_us) == len(report.wall_us) == 2 and min(report.cpu_us) > 0
    assert sum(report.outcomes.values()) == 300
    assert set(report.outcomes) <= {
        "payment.succeeded", "payment.authorized", "payment.failed", "refund.succeeded",
    }, report.outcomes  # fmt: skip
    assert len(said) == 2
    shown = report.as_json()
    assert shown["in_process_cpu_us_per_command"] == round(report.median_cpu_us, 1) > 0
    assert "median" in report.render()


def test_in_process_records_have_offsets_committed_a_batch_behind() -> None:
    """As the worker's records do: the pipeline keeps per-record bookkeeping (answers,
    limits, entity sources) only for records with an offset, until it is committed."""
    from paystream.agents.pipeline import Inbound
    from paystream.bench.in_process import _Offsets

    offsets = _Offsets(4)
    placed = [offsets.place(Inbound(key, b"v", {}, 0)) for key in (b"a", b"b", b"a", b"a")]
    assert placed[0].partition == placed[2].partition == placed[3].partition
    part = placed[0].partition
    here = [r.offset for r in placed if r.partition == part]
    assert here == list(range(len(here)))  # (b"b" may share it)
    assert offsets.committed(part) == -1
    offsets.batch_done()  # the first batch processed: not yet committed
    assert offsets.committed(part) == -1
    offsets.place(Inbound(b"a", b"v", {}, 0))
    offsets.batch_done()  # the second processed: the first's are committed
    assert offsets.committed(part) == len(here)


def test_in_process_bench_from_the_cli(redis_url: str) -> None:
    result = CliRunner().invoke(
        bench_command,
        ["--in-process", "-n", "40", "-t", "2", "--rounds", "1", "--json", "-q"],
        env={"REDIS_URL": redis_url},
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["commands"] == 40 and len(out["in_process_rounds_cpu_us"]) == 1
    bad = CliRunner().invoke(bench_command, ["--in-process", "--rounds", "0"])
    assert bad.exit_code != 0 and "at least 1" in bad.output


def test_a_baseline_marks_when_it_took_its_first_record(tmp_path: Path) -> None:
    # The baselines forward waiting records: a phase answered in one fetch is timed from
    # the child's own mark, on the one system-wide monotonic clock.
    log = tmp_path / "raw.log"
    before = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from paystream.bench.first_record import FirstRecordMark as M\n"
         "m = M(); m(); m()"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    log.write_text("some faust noise\n" + proc.stdout + "more\n")
    mark = read_first_record(log)
    assert mark is not None and before < mark < time.monotonic()
    assert proc.stdout.count("first record") == 1
    assert read_first_record(tmp_path / "absent.log") is None
    # Faust's worker logs a child's stdout through its logger: prefix and trailing space.
    log.write_text(f"[2026-12-01 08:37:52,846] [2544] [WARNING] {proc.stdout.strip()} \n")
    assert read_first_record(log) == mark


@pytest.mark.slow
def test_recovery_bench_times_a_real_recovery(stack: Any) -> None:
    """`paystream bench --recovery N`: a worker started on an empty data directory
    replays N payment records into its table, on the session's broker and Redis."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        **{k: v for k, v in stack.env().items() if k != "DATABASE_URL"},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "paystream", "bench", "--recovery", "500", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["recovery_records"] == 500 and out["table_store"] == "memory://"
    assert out["ready_s"] > 0 and out["baseline_ready_s"] > 0
    assert out["worker_cpu_s"] > 0 and out["recovery_records_per_s"] > 0


@pytest.mark.slow
def test_broker_drift_reads_every_record_back_window_by_window(stack: Any) -> None:
    """`paystream bench --broker-drift SECONDS`: one hop at --rate on the session's broker
    (KAFKA_BROKER_URL), every record read back, each 5 s window with its latency and
    what the topic held by its end; progress on stderr."""
    env = {**os.environ, **stack.env()}
    # (The refusal below, a run of its own, started beside the run it would slow down.)
    refusing = subprocess.Popen(
        [sys.executable, "-m", "paystream", "bench", "--broker-drift", "6", "--rate", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "paystream", "bench", "--broker-drift", "6", "--rate", "200",
             "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        _, refused_err = refusing.communicate(timeout=60)
    finally:
        if refusing.poll() is None:
            refusing.kill()
            refusing.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["broker_drift_rate"], out["broker_drift_seconds"], out["lost"]) == (200, 6, 0)
    assert [(w["start_s"], w["held"], w["records"]) for w in out["windows"]] == [
        (0, 1000, 1000),
        (5, 1200, 200),
    ]
    assert all(0 < w["p50_ms"] <= w["p99_ms"] for w in out["windows"])
    assert re.search(r"[\d,]+/1,200 sent; 0s window p50 [\d.]+ ms", proc.stderr), proc.stderr
    assert out["max_send_lag_ms"] >= 0
    assert refusing.returncode == 2 and "needs a finite --rate above 0" in refused_err
