"""Prometheus metrics, registered once per process and served at the worker's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_SECONDS",
    "BATCH_SIZE",
    "BREAKER_OPEN",
    "COMMANDS",
    "COMMAND_LATENCY",
    "DEAD_LETTERS",
    "GATEWAY_CALLS",
    "LIMITED",
    "PARKED",
    "REPAIRS",
    "REPLAYS",
    "SKIPPED_RECORDS",
]

COMMANDS = Counter(
    "paystream_commands_total",
    "Commands processed, by tenant, command type and outcome type.",
    ["tenant", "command", "outcome"],
)
COMMAND_LATENCY = Histogram(
    "paystream_command_latency_seconds",
    "From the command's Kafka timestamp to its outcome being produced.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEAD_LETTERS = Counter(
    "paystream_dead_letters_total", "Records sent to the dead-letter topic.", ["reason"]
)
LIMITED = Counter(
    "paystream_limited_commands_total",
    "Commands rejected by a tenant limit, by tenant and limit "
    "(commands_per_second, max_payment_amount, daily_payment_volume).",
    ["tenant", "limit"],
)
PARKED = Counter(
    "paystream_parked_total",
    "Commands parked on the retry topic after exhausting retries.",
    ["tenant"],
)
REPLAYS = Counter(
    "paystream_replayed_commands_total",
    "Redelivered or repeated commands answered from stored outcomes (no gateway call).",
    ["tenant", "via"],
)
SKIPPED_RECORDS = Counter(
    "paystream_skipped_records_total",
    "Times Faust skipped command records (offset gap) and the partition was rewound.",
    ["topic", "partition"],
)
REPAIRS = Counter(
    "paystream_repaired_entities_total",
    "Entity writes lost in a crash and restored from the command's stored outcome.",
    ["tenant", "entity_type"],
)
GATEWAY_CALLS = Histogram(
    "paystream_gateway_call_seconds",
    "Provider call latency, by provider and result.",
    ["provider", "result"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_SECONDS = Histogram(
    "paystream_batch_seconds",
    "Time a command batch spends in each stage: running its commands (process) and "
    "producing its outcomes and table changes until the broker has them (publish).",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "paystream_batch_size",
    "Commands per processed batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
BREAKER_OPEN = Gauge(
    "paystream_circuit_open",
    "1 while a (tenant, provider) circuit is open.",
    ["tenant", "provider"],
)
