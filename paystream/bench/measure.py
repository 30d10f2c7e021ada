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
    cut_cpu(result, cpu)
    return result


def cut_cpu(result: PhaseResult, cpu: CpuSampler) -> None:
    """Each sampled process's CPU seconds within the phase's timed window."""
    if result.window is not None:
        first, last = result.window
        for proc in cpu.pids:
            secs = cpu.between(proc, first, last)
            if secs is not None:
                result.cpu_seconds[proc] = secs
