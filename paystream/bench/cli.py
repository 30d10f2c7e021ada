"""`paystream bench`: pipeline throughput and latency against Kafka-client and Faust baselines.

Exposed as ``bench_command``; the main CLI attaches it (``cli.add_command``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from paystream.errors import PaystreamError

__all__ = ["bench_command"]


@click.command("bench")
@click.option("-n", "--commands", default=5000, show_default=True, help="commands at full speed")
@click.option("-t", "--tenants", default=10, show_default=True, help="tenants (simulator gateway)")
@click.option(
    "--rate",
    default=500.0,
    show_default=True,
    help="offered commands/s for the latency phase (0 skips it)",
)
@click.option(
    "--rate-seconds", default=5.0, show_default=True, help="duration of the fixed-rate phase"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option(
    "--skip-baselines", is_flag=True, help="skip the raw aiokafka (and floor) and Faust baselines"
)
@click.option(
    "--skip-ledger",
    is_flag=True,
    help="skip the ledger sink phase (events/s into PostgreSQL, DB statement latency)",
)
@click.option(
    "--skip-http",
    is_flag=True,
    help="skip the ingress phases (the same worker fed over POST /v1/commands)",
)
@click.option(
    "--http-via",
    type=click.Choice(["ingress", "worker"]),
    default="ingress",
    show_default=True,
    help="the ingress phases through a `paystream ingress` process, or the worker's own route",
)
@click.option(
    "--http-commands",
    type=int,
    default=None,
    help="commands over HTTP at full speed [default: min(commands, 5000)]; the HTTP "
    "rate phase sends as many as the Kafka one",
)
@click.option(
    "--baseline-records",
    type=int,
    default=None,
    help="records through the Faust forwarder [default: max(commands, 5000)]; "
    "the raw passthrough gets 4x that, at least 20000",
)
@click.option(
    "--raw-records",
    type=click.IntRange(min=1),
    default=None,
    help="records through the raw passthrough [default: 4x --baseline-records, at least "
    "20000] (fewer: a quicker run, a noisier figure)",
)
@click.option(
    "--profile",
    is_flag=True,
    help="sample the worker with py-spy during the full-speed phase and print where CPU goes",
)
@click.option("--profile-rate", default=250, show_default=True, help="py-spy samples per second")
@click.option(
    "--profile-phase",
    type=click.Choice(["full", "rate"]),
    default="full",
    show_default=True,
    help="phase to profile: full speed (throughput) or the fixed --rate phase (latency)",
)
@click.option("--seed", default=7, show_default=True, help="command mix seed")
@click.option(
    "--keep-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="keep logs (worker, baselines, py-spy raw profile) in this directory",
)
@click.option(
    "--latency-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write each rate-phase command's send time and latency to this CSV",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="only the pipeline's own CPU per command: the commands through CommandProcessor "
    "in this process (simulator on Redis, no Kafka or Faust), --rounds times; steady "
    "enough to compare two checkouts",
)
@click.option("--rounds", default=5, show_default=True, help="rounds for --in-process")
@click.option(
    "--provider-latency-ms",
    type=click.IntRange(min=0, max=10_000),
    default=0,
    show_default=True,
    help="for --in-process: the simulator answers each call this late (a real provider's "
    "round trip), so the rounds' wall time shows what a tenant's commands running side by "
    "side save (compare with PAYSTREAM_TENANT_CONCURRENCY=1)",
)
@click.option(
    "--limits",
    "limits_kind",
    type=click.Choice(["full", "rate", "none"]),
    default="full",
    show_default=True,
    help="for --in-process: every other bench tenant's limits: all of them (rate, "
    "per-payment and daily volume; near its daily volume a tenant's payment waits for the "
    "earlier ones' answers), the rate and per-payment limits alone, or none",
)
@click.option("--no-limits", is_flag=True, hidden=True, help="--limits none (older name)")
@click.option(
    "--recovery",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="only table recovery: a worker started on an empty data directory replays N "
    "payment records (PAYSTREAM_TABLE_STORE's store); time to ready, and its CPU",
)
@click.option(
    "--broker-drift",
    type=click.FloatRange(min=1, max=3600),
    default=None,
    metavar="SECONDS",
    help="only the broker: one hop at --rate to a fresh topic for SECONDS, read back with "
    "the worker's fetch settings; latency per 5 s window beside what the topic held (the "
    "embedded Tansu slows as it fills)",
)
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def bench_command(
    commands: int,
    tenants: int,
    rate: float,
    rate_seconds: float,
    as_json: bool,
    skip_baselines: bool,
    skip_ledger: bool,
    skip_http: bool,
    http_via: str,
    http_commands: int | None,
    baseline_records: int | None,
    raw_records: int | None,
    profile: bool,
    profile_rate: int,
    profile_phase: str,
    seed: int,
    keep_dir: Path | None,
    latency_csv: Path | None,
    in_process: bool,
    rounds: int,
    provider_latency_ms: int,
    limits_kind: str,
    no_limits: bool,
    recovery: int | None,
    broker_drift: float | None,
    quiet: bool,
) -> None:
    """Send N commands across T tenants through a real worker and report commands/s and
    command→outcome latency (full speed and at --rate), next to a raw aiokafka
    passthrough (full speed, and at --rate: the broker's latency floor) and a bare Faust
    forwarder measured on the same broker; then the same worker fed over its HTTP
    ingress (full speed, and at --rate with each request waiting for its outcome).

    Uses KAFKA_BROKER_URL / REDIS_URL when set (with PAYSTREAM_BROKER_FLAVOR), otherwise
    starts an embedded Tansu broker and Redis. Topics and app id are unique per run.
    """
    from paystream.bench.profiling import find_py_spy, render_profile
    from paystream.bench.runner import BenchOptions, run_bench
    from paystream.bench.stats import render_table

    if profile and find_py_spy() is None:
        raise click.ClickException("--profile needs py-spy: pip install -e '.[profile]'")

    def say(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    if in_process:
        _in_process(
            commands, tenants, rounds, seed, as_json, say, provider_latency_ms,
            "none" if no_limits else limits_kind,
        )  # fmt: skip
        return
    if broker_drift is not None:
        from paystream.bench.broker_drift import run_drift

        if not (math.isfinite(rate) and rate > 0 and math.isfinite(broker_drift)):
            raise click.BadParameter(
                "--broker-drift needs a finite --rate above 0 (and finite seconds)",
                param_hint="--rate",
            )
        try:
            drift = run_drift(broker_drift, rate, say)
        except (PaystreamError, RuntimeError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(drift.as_json(), sort_keys=True) if as_json else drift.render())
        if drift.lost:
            sys.exit(3)
        return
    if recovery is not None:
        from paystream.bench.recovery import run_recovery

        try:
            found = run_recovery(recovery, say)
        except (PaystreamError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(found.as_json(), sort_keys=True) if as_json else found.render())
        return

    try:
        options = BenchOptions(
            commands=commands,
            tenants=tenants,
            rate=rate,
            rate_seconds=rate_seconds,
            baselines=not skip_baselines,
            ledger=not skip_ledger,
            http=not skip_http,
            http_via=http_via,
            http_commands=http_commands,
            baseline_records=baseline_records,
            raw_records=raw_records,
            profile=profile,
            profile_rate=profile_rate,
            profile_phase=profile_phase,
            seed=seed,
            keep_dir=keep_dir,
            latency_csv=latency_csv,
            say=say,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        report = run_bench(options)
    except (PaystreamError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.as_json(), sort_keys=True))
    else:
        click.echo(render_table(report))
        if report.profile is not None:
            click.echo("")
            click.echo(render_profile(report.profile))
    # Anything lost fails the run, a baseline's too (its figure would count fewer records
    # than it was sent, and a ratio against it would flatter the pipeline).
    phases = (report.pipeline, report.rate, report.http, report.http_rate, report.raw)
    missing = sum(p.missing for p in (*phases, report.floor, report.faust) if p)
    if missing:
        sys.exit(3)


def _in_process(
    commands: int,
    tenants: int,
    rounds: int,
    seed: int,
    as_json: bool,
    say: Any,
    provider_latency_ms: int = 0,
    limits: str = "full",
) -> None:
    from paystream.bench.in_process import run_in_process
    from paystream.settings import load_settings

    if commands < 1 or tenants < 1 or rounds < 1:
        raise click.BadParameter("--commands, --tenants and --rounds must be at least 1")
    try:
        redis_url = load_settings().redis_url
    except PaystreamError as exc:
        raise click.ClickException(str(exc)) from exc
    # Nothing but the report on stdout: console tracing (PAYSTREAM_OTEL_EXPORTER=console,
    # bound to sys.stdout when set up) writes its spans to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_in_process(
            commands=commands,
            tenants=tenants,
            rounds=rounds,
            seed=seed,
            redis_url=redis_url,
            say=say,
            provider_latency_ms=provider_latency_ms,
            limits=limits,
        )
    click.echo(json.dumps(report.as_json(), sort_keys=True) if as_json else report.render())
