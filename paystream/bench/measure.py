"""A phase's figures from what the bench saw: outcomes' arrivals, send times, CPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from paystream.bench.load import BenchCommand
from paystream.bench.probe import CpuSampler, OutputWatcher
from paystream.bench.stats import PhaseResult

__all__ = ["Say", "cut_cpu", "phase_result", "progress_printer"]

Say = Callable[[str], None]


def progress_printer(say: Say, phase: str) -> Callable[[int, int, float], None]:
    """A ``Progress`` callback saying done/total, rate and time left."""

    def report(done: int, total: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        say(f"  {phase}: {done}/{total} ({rate:,.0f}/s, ETA {eta:.0f} s)")

    return report


def phase_result(
    name: str,
    commands: Sequence[BenchCommand],
    watcher: OutputWatcher,
    sent_at: dict[str, float] | None,
    cpu: CpuSampler,
    sut: str,
    started: float | None = None,
    **extra: float,
) -> PhaseResult:
    """``started``: when the phase began (default: its first send), to time it by if its
    output came back in one fetch."""
    ids = [c.command_id for c in commands]
    arrivals = [watcher.arrivals[i] for i in ids if i in watcher.arrivals]
    latencies = (
        [1000 * (watcher.arrivals[i] - sent_at[i]) for i in ids if i in watcher.arrivals]
        if sent_at is not None
        else []
    )
    types = watcher.outcome_types(ids) if sent_at is not None else {}
    if started is None and sent_at:
        started = min(sent_at.values())
    result = PhaseResult.from_arrivals(
        name, len(ids), arrivals, latencies, started, outcome_types=types, sut=sut, **extra
    )
    cut_cpu(result, cpu, began=started)
    return result


def cut_cpu(result: PhaseResult, cpu: CpuSampler, began: float | None = None) -> None:
    """Each sampled process's CPU seconds from ``began`` (when the process under test got
    its work: the first send, or a baseline's first record) to the last arrival, paying
    for every record received; without ``began``, within the timed window."""
    if result.window is None:
        return
    first, last = result.window
    if began is not None and began < last:
        result.cpu_window, result.cpu_records = (min(began, first), last), result.received
    else:
        result.cpu_window, result.cpu_records = (first, last), result.timed_records
    for proc in cpu.pids:
        secs = cpu.between(proc, *result.cpu_window)
        if secs is not None:
            result.cpu_seconds[proc] = secs
