"""The ingress phases: the pipeline fed over HTTP (``POST /v1/commands``) instead of Kafka,
on the same worker, just after the Kafka phases.

* **http, full speed**: the commands sent with ``concurrency`` requests in flight, each
  answered 202 once the broker has it. Throughput at the outcome topic, first to last,
  as for the Kafka-fed phase; the worker's CPU per command there, against the Kafka-fed
  phase's, is what the ingress costs the worker per request.
* **http at the offered rate**: the rate phase's load, paced open-loop, each request
  asking to wait for its outcome (``Prefer: wait``): latency is due time → the 200
  answer carrying the outcome, what a caller of the ingress sees end to end.
"""

from __future__ import annotations

import aiohttp

from paystream.bench.http_load import HttpLog, post_burst, post_paced
from paystream.bench.load import BenchCommand, generate_commands
from paystream.bench.measure import Say, cut_cpu, phase_result, progress_printer
from paystream.bench.probe import CpuSampler, OutputWatcher
from paystream.bench.stats import PhaseResult, percentiles_text

__all__ = ["CONCURRENCY", "WAIT_SECONDS", "HttpPhases", "http_loads"]

# Requests in flight at full speed: enough to keep the worker's ingress busy, few enough
# that the bench's own client (on the same two cores) is not the measurement.
CONCURRENCY = 32
# The wait each paced request asks for: far beyond any answer, so every one is a 200.
WAIT_SECONDS = 10


class HttpPhases:
    """The two ingress phases against one worker's web port."""

    def __init__(
        self,
        base_url: str,
        token: str,
        watcher: OutputWatcher,
        cpu: CpuSampler,
        *,
        idle_timeout: float,
        say: Say,
        notes: list[str],
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/commands"
        self.token = token
        self.watcher = watcher
        self.cpu = cpu
        self.idle_timeout = idle_timeout
        self.say = say
        self.notes = notes

    async def warm_up(self, session: aiohttp.ClientSession, warm: list[BenchCommand]) -> None:
        """A waited request per tenant: the ingress's outcome reader starts on the first."""
        log = await post_paced(
            session, self.url, self.token, warm, rate=50, wait_seconds=WAIT_SECONDS
        )
        if log.statuses.get("200", 0) < len(warm):
            raise RuntimeError(f"ingress warm-up answered {dict(log.statuses)}")

    async def full_speed(
        self, session: aiohttp.ClientSession, load: list[BenchCommand]
    ) -> PhaseResult:
        self.say(f"http: sending {len(load)} commands, {CONCURRENCY} requests in flight…")
        log = await post_burst(
            session,
            self.url,
            self.token,
            load,
            concurrency=CONCURRENCY,
            progress=progress_printer(self.say, "answered"),
        )
        self.say(f"  answered in {log.finished - log.started:.2f} s ({log.answered_rate:,.0f}/s)")
        await self.watcher.wait_for(
            [c.command_id for c in load],
            idle_timeout=self.idle_timeout,
            progress=progress_printer(self.say, "outcomes"),
        )
        self.cpu.sample()
        result = phase_result("http", load, self.watcher, log.sent_at, self.cpu, "worker")
        _answers(result, log)
        self._server_cpu(result, log)
        return result

    def _server_cpu(self, result: PhaseResult, log: HttpLog) -> None:
        """The ingress process's CPU per request over its own work: from the first
        request to the last answer (not the worker's outcome window)."""
        if not log.answered_at:
            return
        spent = self.cpu.between("ingress", log.started, max(log.answered_at.values()))
        if spent is not None:
            result.server_cpu_us_per_request = 1e6 * spent / len(log.answered_at)

    async def at_rate(
        self, session: aiohttp.ClientSession, paced: list[BenchCommand], rate: float
    ) -> PhaseResult:
        self.say(f"http rate: {len(paced)} commands at {rate:g}/s, each waiting for its outcome…")
        log = await post_paced(
            session,
            self.url,
            self.token,
            paced,
            rate,
            wait_seconds=WAIT_SECONDS,
            progress=progress_printer(self.say, "answered"),
        )
        self.cpu.sample()
        ids = [c.command_id for c in paced]
        await self.watcher.wait_for(ids, idle_timeout=self.idle_timeout)
        self.notes.append(_wait_split(log, self.watcher))
        # Timed by the answers, not the outcome topic: the answer is what the caller gets.
        # Every answer counts, a 202 after the whole wait or an error as much as a 200 (the
        # slowest would otherwise drop out of the percentiles); "received" is the outcomes
        # the events topic carried, whatever the answer was.
        # Throughput is of answers only: a request refused at once is no answer (an
        # ingress refusing every connection read as answering at the offered rate;
        # review h68af).
        ended = {**log.failed_at, **log.answered_at}
        result = PhaseResult.from_arrivals(
            "http_rate",
            len(paced),
            [log.answered_at[i] for i in ids if i in log.answered_at],
            [1000 * (ended[i] - log.sent_at[i]) for i in ids if i in ended],
            log.started,
            offered_rate=rate,
            achieved_rate=log.rate,
            sut="worker",
        )
        result.received = self.watcher.seen(ids)
        result.outcome_types = self.watcher.outcome_types(ids)
        cut_cpu(result, self.cpu, began=log.started)
        _answers(result, log)
        self._server_cpu(result, log)
        return result


def _wait_split(log: HttpLog, watcher: OutputWatcher) -> str:
    """Where a waited request's time goes: until the bench read its outcome on the events
    topic (the ingress producing the command, the pipeline, the outcome's produce), and
    from there to the ingress's answer (its outcome reader's fetch, the answer's trip)."""
    to_topic, to_answer = [], []
    for command_id, answered in log.answered_at.items():
        seen = watcher.arrivals.get(command_id)
        if seen is not None and command_id in log.outcomes:
            to_topic.append(1000 * (seen - log.sent_at[command_id]))
            to_answer.append(1000 * (answered - seen))

    if not to_topic:
        return "http rate latency split: no outcomes"
    return (
        f"http rate latency p50/p95/p99 ms: request due → outcome read by the bench "
        f"{percentiles_text(to_topic)}; outcome read by the bench → answer "
        f"{percentiles_text(to_answer)} (the two readers race: negative when the ingress "
        "read first)"
    )


def _answers(result: PhaseResult, log: HttpLog) -> None:
    result.answers = dict(sorted(log.statuses.items()))
    result.answered_rate = log.answered_rate


def http_loads(
    tag: str, tenants: list[str], commands: int, paced: int, seed: int
) -> tuple[list[BenchCommand], list[BenchCommand], list[BenchCommand]]:
    """Warm-up (one per tenant), full-speed and paced commands, ids of their own."""
    warm = [
        c
        for i, tenant in enumerate(tenants)
        for c in generate_commands(1, [tenant], prefix=f"{tag}-hw{i}-", seed=seed)
    ]
    load = generate_commands(commands, tenants, prefix=f"{tag}-h-", seed=seed + 2)
    rate = generate_commands(paced, tenants, prefix=f"{tag}-hr-", seed=seed + 3)
    return warm, load, rate
