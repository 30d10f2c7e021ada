"""Benchmark figures: percentiles, per-phase results, the JSON object and the text table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchReport", "PhaseResult", "percentile", "percentiles_text", "render_table"]


def percentiles_text(values: Sequence[float]) -> str:
    """p50/p95/p99 of ``values`` (any order), as "12.3/45.6/78.9"."""
    ordered = sorted(values)
    return "/".join(f"{percentile(ordered, p):,.1f}" for p in (50, 95, 99))


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (``pct`` in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= pct <= 100:
        raise ValueError("pct must be within 0..100")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass
class PhaseResult:
    """What one phase measured at its output topic."""

    name: str
    records: int  # records sent into the phase
    received: int  # distinct records seen at the output
    seconds: float  # first output → last output (or first send → last output, see window)
    throughput: float  # records per second over that window
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    offered_rate: float = 0.0  # 0: as fast as possible
    achieved_rate: float = 0.0  # what the load generator really sent at
    outcome_types: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None  # commands per worker batch (from its /metrics)
    # mean ms a worker batch spent running its commands ("process") and being produced
    # until the broker had it all ("publish"), from the worker's /metrics
    batch_stage_ms: dict[str, float] = field(default_factory=dict)
    redis_commands: int | None = None  # Redis commands the phase caused (INFO stats delta)
    sut: str = ""  # the process under test: "worker", "raw" or "faust"
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process, cpu_window
    window: tuple[float, float] | None = None  # monotonic (start, end) timed, if any
    # Where cpu_seconds were cut, and the records that CPU paid for: from when the process
    # under test got its first record (or the first send) to the last arrival, over every
    # record received. An arrival window alone can miss the work: a short phase's output
    # may be read in two fetches after the process has gone idle (CI once read 0 CPU).
    cpu_window: tuple[float, float] | None = None
    cpu_records: float = 0.0
    # Ingress phases: the HTTP answers by status ("202", "200", "error:…") and answers per
    # second from the first request to the last answer.
    answers: dict[str, int] = field(default_factory=dict)
    answered_rate: float = 0.0
    via: str = ""  # "ingress" (a `paystream ingress` process) or "worker" (its own route)
    # The ingress process's CPU per request, first request to last answer.
    server_cpu_us_per_request: float | None = None

    @property
    def sut_cpu_pct(self) -> float | None:
        cpu = self.cpu_seconds.get(self.sut)
        if cpu is None or self.cpu_window is None:
            return None
        seconds = self.cpu_window[1] - self.cpu_window[0]
        return None if seconds <= 0 else 100 * cpu / seconds

    @property
    def sut_us_per_record(self) -> float | None:
        cpu = self.cpu_seconds.get(self.sut)
        return None if cpu is None or self.cpu_records <= 0 else 1e6 * cpu / self.cpu_records

    @property
    def timed_records(self) -> float:
        """Records the window covers: the first arrival opens a first-to-last window."""
        return self.throughput * self.seconds

    @property
    def missing(self) -> int:
        return self.records - self.received

    def pct(self, p: float) -> float | None:
        return percentile(self.latencies_ms, p) if self.latencies_ms else None

    @staticmethod
    def from_arrivals(
        name: str,
        records: int,
        arrivals: Sequence[float],
        latencies_ms: Sequence[float] = (),
        started: float | None = None,
        **extra: Any,
    ) -> PhaseResult:
        """Throughput from first to last arrival (monotonic seconds).

        A phase whose output came back in one fetch has no such window (every arrival
        shares one instant); it is timed from ``started``, its first send, instead, which
        counts every record it received. Without ``started`` it gets no figure (0).
        """
        received = len(arrivals)
        window: tuple[float, float] | None = None
        throughput = 0.0
        if received:
            first, last = min(arrivals), max(arrivals)
            if last > first:
                window, throughput = (first, last), (received - 1) / (last - first)
            elif started is not None and last > started:
                window, throughput = (started, last), received / (last - started)
        return PhaseResult(
            name=name,
            records=records,
            received=received,
            seconds=window[1] - window[0] if window else 0.0,
            throughput=throughput,
            latencies_ms=sorted(latencies_ms),
            window=window,
            **extra,
        )


@dataclass
class BenchReport:
    """Everything one `paystream bench` run measured."""

    commands: int
    tenants: int
    broker: str  # "tansu" or "kafka"
    pipeline: PhaseResult
    rate: PhaseResult | None = None
    raw: PhaseResult | None = None
    faust: PhaseResult | None = None
    # The rate phase's load through the raw aiokafka passthrough: the broker's floor.
    floor: PhaseResult | None = None
    ledger: Any = None  # bench.ledger.LedgerResult (the sink phase), if it ran
    # The pipeline fed over HTTP (POST /v1/commands): full speed, and at the offered rate
    # with each request waiting for its outcome.
    http: PhaseResult | None = None
    http_rate: PhaseResult | None = None
    profile: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    duplicate_outcomes: int = 0  # outcomes the worker phases read twice (redeliveries)

    def latency_phase(self) -> PhaseResult:
        """The phase whose percentiles are the headline: the fixed-rate one if it ran."""
        return self.rate if self.rate is not None and self.rate.latencies_ms else self.pipeline

    def ratio(self, baseline: PhaseResult | None) -> float | None:
        if baseline is None or baseline.throughput <= 0:
            return None
        return self.pipeline.throughput / baseline.throughput

    def cpu_ratio(self, baseline: PhaseResult | None) -> float | None:
        """Baseline CPU per record / pipeline CPU per command: the throughput ratio two
        saturated single-core processes would reach, steadier on a shared host."""
        ours = self.pipeline.sut_us_per_record
        theirs = baseline.sut_us_per_record if baseline is not None else None
        if not ours or not theirs:
            return None
        return theirs / ours

    def as_json(self) -> dict[str, Any]:
        lat = self.latency_phase()
        rate = self.rate
        out: dict[str, Any] = {
            "commands": self.commands,
            "tenants": self.tenants,
            "broker": self.broker,
            "throughput_cps": _r(self.pipeline.throughput),
            "raw_passthrough_cps": _r(self.raw.throughput) if self.raw else None,
            "faust_passthrough_cps": _r(self.faust.throughput) if self.faust else None,
            "ratio_vs_faust": _r(self.ratio(self.faust), 3),
            "ratio_vs_raw": _r(self.ratio(self.raw), 4),
            "cpu_ratio_vs_faust": _r(self.cpu_ratio(self.faust), 3),
            "p50_ms": _r(lat.pct(50)),
            "p95_ms": _r(lat.pct(95)),
            "p99_ms": _r(lat.pct(99)),
            "latency_phase": lat.name,
            "offered_rate": rate.offered_rate if rate else 0,
            "achieved_rate": _r(rate.achieved_rate) if rate else None,
            "rate_commands": rate.records if rate else 0,
            "floor_p50_ms": _r(self.floor.pct(50)) if self.floor else None,
            "floor_p95_ms": _r(self.floor.pct(95)) if self.floor else None,
            "floor_p99_ms": _r(self.floor.pct(99)) if self.floor else None,
            "full_speed_p50_ms": _r(self.pipeline.pct(50)),
            "full_speed_p95_ms": _r(self.pipeline.pct(95)),
            "full_speed_p99_ms": _r(self.pipeline.pct(99)),
            "outcomes": self.pipeline.received + (rate.received if rate else 0),
            "missing_outcomes": self.pipeline.missing + (rate.missing if rate else 0),
            "duplicate_outcomes": self.duplicate_outcomes,
            "baseline_missing_records": sum(
                p.missing for p in (self.raw, self.floor, self.faust) if p
            ),
            "outcome_types": _merge(
                self.pipeline.outcome_types, rate.outcome_types if rate else {}
            ),
            **self._http_json(),
            "phases": {
                p.name: _phase_json(p)
                for p in (self.pipeline, rate, self.raw, self.floor, self.faust, *self._http())
                if p
            },
            "ledger_events_per_s": _r(self.ledger.events_per_second) if self.ledger else None,
            "ledger_db_statement_p95_ms": _r(self.ledger.statement_p95_ms) if self.ledger else None,
            "ledger": self.ledger.as_json() if self.ledger else None,
            "notes": self.notes,
        }
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    def _http(self) -> tuple[PhaseResult | None, PhaseResult | None]:
        return self.http, self.http_rate

    def http_cpu_ratio(self) -> float | None:
        """Worker CPU per command fed over HTTP / fed over Kafka (full speed)."""
        ours = self.http.sut_us_per_record if self.http is not None else None
        kafka = self.pipeline.sut_us_per_record
        return ours / kafka if ours and kafka else None

    def _http_json(self) -> dict[str, Any]:
        http, paced = self.http, self.http_rate
        return {
            "http_throughput_cps": _r(http.throughput) if http else None,
            "http_answered_per_s": _r(http.answered_rate) if http else None,
            "http_ratio_vs_kafka": _r(self.ratio_of(http), 3),
            "http_worker_cpu_ratio_vs_kafka": _r(self.http_cpu_ratio(), 3),
            "http_offered_rate": paced.offered_rate if paced else 0,
            "http_p50_ms": _r(paced.pct(50)) if paced else None,
            "http_p95_ms": _r(paced.pct(95)) if paced else None,
            "http_p99_ms": _r(paced.pct(99)) if paced else None,
            "http_via": http.via if http else None,
            "http_ingress_cpu_us_per_command": _r(http.server_cpu_us_per_request, 1)
            if http
            else None,
            "http_missing_outcomes": sum(p.missing for p in (http, paced) if p),
            "http_outcome_types": _merge(
                http.outcome_types if http else {}, paced.outcome_types if paced else {}
            ),
        }

    def ratio_of(self, phase: PhaseResult | None) -> float | None:
        """A phase's throughput over the Kafka-fed pipeline's."""
        if phase is None or self.pipeline.throughput <= 0:
            return None
        return phase.throughput / self.pipeline.throughput


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for k, v in b.items():
        merged[k] = merged.get(k, 0) + v
    return dict(sorted(merged.items()))


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _phase_json(p: PhaseResult) -> dict[str, Any]:
    d = {k: v for k, v in asdict(p).items() if k not in {"latencies_ms", "outcome_types", "window"}}
    d["throughput"] = _r(p.throughput)
    d["seconds"] = _r(p.seconds, 3)
    d["achieved_rate"] = _r(p.achieved_rate)
    d["mean_batch"] = _r(p.mean_batch, 1)
    d["redis_commands_per_record"] = (
        _r(p.redis_commands / p.records, 2) if p.redis_commands is not None and p.records else None
    )
    d["cpu_seconds"] = {k: _r(v, 3) for k, v in p.cpu_seconds.items()}
    d["sut_cpu_pct"] = _r(p.sut_cpu_pct, 1)
    d["sut_cpu_us_per_record"] = _r(p.sut_us_per_record, 1)
    d["missing"] = p.missing
    for q in (50, 95, 99):
        d[f"p{q}_ms"] = _r(p.pct(q))
    d["max_ms"] = _r(p.latencies_ms[-1]) if p.latencies_ms else None
    return d


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def render_table(report: BenchReport) -> str:
    """The human summary printed on stdout."""
    header = (
        f"{'phase':<26}{'records':>8}{'got':>8}{'secs':>8}{'rec/s':>11}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'CPU%':>7}{'CPU µs/rec':>12}"
    )
    lines = [
        f"paystream bench: {report.commands} commands, {report.tenants} tenants, "
        f"broker {report.broker}",
        "",
        header,
        "-" * len(header),
    ]
    labels = {
        "pipeline": "pipeline (full speed)",
        "rate": "pipeline @ {rate:g}/s",
        "raw": "raw aiokafka passthrough",
        "faust": "bare Faust forwarder",
        "floor": "raw passthrough @ {rate:g}/s",
        "http": "over HTTP (full speed)",
        "http_rate": "over HTTP @ {rate:g}/s, wait",
    }
    phases = (report.pipeline, report.rate, report.raw, report.floor, report.faust)
    for p in (*phases, report.http, report.http_rate):
        if p is None:
            continue
        label = labels[p.name].format(rate=p.offered_rate)
        lines.append(
            f"{label:<26}{p.records:>8}{p.received:>8}{p.seconds:>8.2f}{p.throughput:>11,.0f}"
            f"{_fmt(p.pct(50)):>9}{_fmt(p.pct(95)):>9}{_fmt(p.pct(99)):>9}"
            f"{_fmt(p.sut_cpu_pct):>7}{_fmt(p.sut_us_per_record):>12}"
        )
    lines.append("")
    if report.rate is not None:
        lines.append(
            f"offered {report.rate.offered_rate:g}/s, sent at {report.rate.achieved_rate:,.1f}/s"
        )
    if report.rate is not None and report.floor is not None:
        ours, floor = report.rate.pct(99), report.floor.pct(99)
        if ours is not None and floor is not None:
            lines.append(
                f"p99 at {report.rate.offered_rate:g}/s: pipeline {ours:,.1f} ms, broker floor "
                f"(raw aiokafka passthrough, same load) {floor:,.1f} ms"
            )
    for name, base in (("bare Faust forwarder", report.faust), ("raw aiokafka", report.raw)):
        ratio = report.ratio(base)
        if ratio is not None:
            lines.append(f"pipeline / {name}: {ratio:.3f}x")
    cpu_ratio = report.cpu_ratio(report.faust)
    if cpu_ratio is not None:
        lines.append(
            f"CPU per record, bare Faust forwarder / pipeline: {cpu_ratio:.3f}x "
            "(the throughput ratio if both had a core to themselves)"
        )
    lines.extend(_http_lines(report))
    for p in (report.pipeline, report.rate):
        if p is not None and p.mean_batch is not None:
            stages = ", ".join(f"{k} {v:.1f} ms" for k, v in p.batch_stage_ms.items())
            lines.append(
                f"{p.name}: mean worker batch {p.mean_batch:.1f} commands"
                + (f" ({stages} per batch)" if stages else "")
            )
        if p is not None and p.redis_commands is not None and p.records:
            lines.append(f"{p.name}: {p.redis_commands / p.records:.1f} Redis commands per command")
    mix = _merge(report.pipeline.outcome_types, report.rate.outcome_types if report.rate else {})
    if mix:
        lines.append("outcomes: " + ", ".join(f"{k}={v}" for k, v in mix.items()))
    missing = report.pipeline.missing + (report.rate.missing if report.rate else 0)
    if missing:
        lines.append(f"WARNING: {missing} command(s) got no outcome")
    lines.append(
        "CPU% / CPU µs/rec: the process under test (worker, passthrough or forwarder), "
        "all threads, from when it got its first record to its last output"
    )
    for p in (*phases, report.http, report.http_rate):
        if p is not None and p.cpu_seconds and p.cpu_window is not None:
            seconds = p.cpu_window[1] - p.cpu_window[0]
            shares = (
                ", ".join(f"{k} {100 * v / seconds:.0f}%" for k, v in sorted(p.cpu_seconds.items()))
                if seconds > 0
                else ""
            )
            lines.append(f"  {p.name} CPU by process: {shares}")
    if report.ledger is not None:
        led = report.ledger
        lines.append(
            f"ledger sink: {led.events_written} events written from {led.outcomes} outcomes in "
            f"{led.seconds:.2f}s = {led.events_per_second:,.0f} events/s; DB statement "
            f"p50/p95/p99 {_fmt(led.statement_p50_ms)}/{_fmt(led.statement_p95_ms)}/"
            f"{_fmt(led.statement_p99_ms)} ms over {led.statements} statements "
            f"(batch p95 {_fmt(led.batch_p95_ms)} ms)"
        )
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def _http_lines(report: BenchReport) -> list[str]:
    """The ingress phases against the Kafka-fed ones of the same run."""
    lines: list[str] = []
    http, paced = report.http, report.http_rate
    ratio, cpu = report.ratio_of(http), report.http_cpu_ratio()
    if http is not None and ratio is not None:
        via = {"ingress": " (through `paystream ingress`)", "worker": " (the worker's route)"}
        lines.append(
            f"over HTTP{via.get(http.via, '')}: {http.throughput:,.0f} commands/s = "
            f"{ratio:.3f}x the Kafka-fed pipeline; answered {http.answered_rate:,.0f} "
            "requests/s"
            + (f"; worker CPU per command {cpu:.2f}x Kafka-fed" if cpu is not None else "")
        )
        ingress_us = http.server_cpu_us_per_request
        if ingress_us is not None:
            lines.append(
                f"ingress process CPU per request: {ingress_us:,.0f} µs (first request to "
                "last answer)"
            )
    if paced is not None and report.rate is not None:
        ours, kafka = paced.pct(99), report.rate.pct(99)
        if ours is not None and kafka is not None:
            lines.append(
                f"p99 at {paced.offered_rate:g}/s: request → answer with its outcome over HTTP "
                f"{ours:,.1f} ms, command → outcome read over Kafka {kafka:,.1f} ms"
            )
    for p in (http, paced):
        if p is not None and set(p.answers) - {"200", "202"}:
            lines.append(f"WARNING: {p.name} answers {p.answers}")
        if p is not None and p.missing:
            lines.append(f"WARNING: {p.missing} {p.name} command(s) got no outcome")
    return lines
