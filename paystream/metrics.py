"""Prometheus metrics, registered once per process and served at the worker's /metrics."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from paystream.tenancy.limits import LIMIT_NAMES

if TYPE_CHECKING:  # (named in strings: both modules import this one)
    import faust  # noqa: F401

    from paystream.agents.offsets import DurableOffsets  # noqa: F401
    from paystream.gateways.retry import RetryPolicy  # noqa: F401

T = TypeVar("T")

__all__ = [
    "BATCH_SECONDS",
    "BATCH_SIZE",
    "BREAKER_OPEN",
    "COMMANDS",
    "COMMAND_LATENCY",
    "DEAD_LETTERS",
    "ENTITIES_EXPIRED",
    "ENTITIES_MINIMIZED",
    "GATEWAY_CALLS",
    "HTTP_CONNECTIONS_REFUSED",
    "INGRESS",
    "LIMITED",
    "PARKED",
    "PROGRESS",
    "PUBLISH_FAILING",
    "PUBLISH_FAILURES",
    "REBALANCES",
    "REJECTIONS",
    "REPAIRS",
    "REPLAYS",
    "SKIPPED_RECORDS",
    "WEBHOOKS",
]

COMMANDS = Counter(
    "paystream_commands_total",
    "Commands processed, by tenant, command type and outcome type. A record a crash "
    "redelivers is counted once (its repeat in paystream_replayed_commands_total), except "
    "a rejection decided from the record alone (not a command, an unknown type or tenant, "
    "invalid data), counted at each delivery.",
    ["tenant", "command", "outcome"],
)
REJECTIONS = Counter(
    "paystream_command_rejections_total",
    "Commands answered command.rejected, by tenant, command type and reason (the outcome's "
    "data.reason: validation_error, unknown_tenant, quota_exceeded, ...); as "
    "paystream_commands_total, a rejection decided from the record alone is counted at "
    "each delivery of it.",
    ["tenant", "command", "reason"],
)
COMMAND_LATENCY = Histogram(
    "paystream_command_latency_seconds",
    "From the command's Kafka timestamp to its outcome being produced.",
    # Up to minutes: a backlog's commands wait that long, and a top bucket of 10 s showed
    # its p99 as 10 s (review h60d).
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WEBHOOKS = Counter(
    "paystream_webhooks_total",
    "Provider webhooks received, by provider, tenant and what came of them: refresh (a "
    "payment.refresh, refund.refresh or subscription.refresh sent), ignored (nothing "
    "paystream has not read), "
    "dropped (about a payment or refund not recorded here, too old to be sent again: its "
    "news is lost; refresh it once recorded; a dispute event's payment too), "
    "bad_signature, "
    "bad_request (a body that could not be read as sent, or in time), "
    "no_endpoint, too_large, unavailable (answered 503: the provider sends it again; for a "
    "dispute event also: its PaymentIntent could not be read from the provider, "
    "paystream_webhook_dispute_reads_failed_total says why).",
    ["provider", "tenant", "result"],
)
# A dispute event is the one webhook the web server reads the provider for (the disputed
# PaymentIntent, to find the payment): its 503s counted apart, by why, since a tenant's
# payment events may flow meanwhile and PaystreamWebhooksUnavailable stay quiet (h72l).
DisputeUnreadWhy = Literal[
    "in_flight", "paced", "timeout", "provider_error", "key_unusable", "suspended"
]
WEBHOOK_DISPUTE_READS_FAILED = Counter(
    "paystream_webhook_dispute_reads_failed_total",
    "Dispute events answered 503 (the provider sends them again) because their "
    "PaymentIntent was not read, or its read failed, by provider, tenant and why: "
    "in_flight (all the reads this worker makes at once are in flight), paced (over the "
    "tenant's webhook refresh pace), timeout (the provider slower than the read's bound), "
    "provider_error (the provider's error), key_unusable (the tenant's provider key does "
    "not open or its gateway options are refused), suspended (the tenant is suspended: "
    "no read made).",
    ["provider", "tenant", "why"],
)
WEBHOOK_DISPUTE_READS_SUCCEEDED = Counter(
    "paystream_webhook_dispute_reads_succeeded_total",
    "Dispute events whose PaymentIntent the provider answered (the tenant's, or not found "
    "under its key: another account's, ignored), by provider and tenant.",
    ["provider", "tenant"],
)
# A Square invoice event names Square's subscription only: the web server reads it for
# its source name (bounded by the dispute reads' slots and pace, which it shares), and
# counts each read or why none was made (review h79r_d L3), as for disputes above.
SubscriptionReadResult = Literal[
    "found", "not_found", "in_flight", "paced", "timeout", "provider_error", "key_unusable"
]
WEBHOOK_SUBSCRIPTION_READS = Counter(
    "paystream_webhook_subscription_reads_total",
    "Invoice events whose subscription the web server read from the provider (Square: "
    "the invoice names its subscription only), by provider, tenant and result: found, "
    "not_found (not the tenant's key's; ignored), or answered 503 (sent again): in_flight "
    "(all the reads this worker makes at once are in flight, shared with dispute reads), "
    "paced (over the tenant's webhook read pace, shared with dispute reads), timeout, "
    "provider_error, key_unusable. Events of a subscription known already make no read.",
    ["provider", "tenant", "result"],
)
# A dispute the provider reports on a payment that paystream does not record (so nobody
# answers it through paystream): the tenant answers it in the provider's dashboard.
DisputeUnrecordedWhy = Literal["recorded_open", "ids_taken"]
DISPUTES_UNRECORDED = Counter(
    "paystream_disputes_unrecorded_total",
    "Disputes a payment's refresh read from the provider and did not record, to be "
    "answered in the provider's dashboard, by provider, tenant and why: recorded_open "
    "(a newer dispute while the payment's recorded one is open), ids_taken (a newer one "
    "after a decided one, the dispute ids its command derives both taken). Counted at "
    "each refresh that reads it.",
    ["provider", "tenant", "why"],
)
SUBSCRIPTION_METHODS_UNKNOWN = Counter(
    "paystream_subscription_methods_unknown_total",
    "Subscriptions read back (a subscription.refresh, or a re-driven subscription.update) "
    "whose provider bills a payment method paystream has not recorded for their customer "
    "(attached outside paystream): the recorded one is kept. By provider and tenant "
    "(alert PaystreamSubscriptionMethodUnknown).",
    ["provider", "tenant"],
)
INGRESS = Counter(
    "paystream_ingress_requests_total",
    "Commands posted to the HTTP ingress (POST /v1/commands), by tenant and what came of "
    "them: accepted (produced; 202), answered (produced and its outcome returned; 200), "
    "invalid (400), unauthorized (401), key_expired (401: the tenant's key has expired), "
    "forbidden (403: a restricted key's other command), too_large (413), "
    "unsupported_media_type (415), "
    "rate_limited (429: over the tenant's rate limit; send it again later), "
    "unavailable (503: send it again). Refused before a tenant is known: (unregistered).",
    ["tenant", "result"],
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "paystream_http_connections_refused_total",
    "Connections a web server answered 503 and closed unread, over "
    "PAYSTREAM_WEB_MAX_CONNECTIONS open at once, by server (worker, ingress).",
    ["server"],
)
DEAD_LETTERS = Counter(
    "paystream_dead_letters_total", "Records sent to the dead-letter topic.", ["reason"]
)
LIMITED = Counter(
    "paystream_limited_commands_total",
    f"Commands rejected by a tenant limit, by tenant and limit ({', '.join(LIMIT_NAMES)}).",
    ["tenant", "limit"],
)
PUBLISH_FAILURES = Counter(
    "paystream_publish_failures_total",
    "Attempts to produce a command batch's outcomes and table changes that failed, by "
    "error (NotEnoughReplicasError, RequestTimedOutError, ...); each is retried.",
    ["error"],
)
PARKED_WAITING = Gauge(
    "paystream_parked_waiting",
    "Records on the retry or dead-letter topic that no `paystream dlq replay` has replayed "
    "or passed over yet (measured every PAYSTREAM_PARKED_MEASURE_SECONDS, default 60 s).",
    ["topic"],
)
PARKED_MEASURED_AT = Gauge(
    "paystream_parked_measured_at_seconds",
    "Unix time of this worker's latest measurement of the parked backlog that succeeded "
    "(until one has, when it began measuring; 0: measuring is off, "
    "PAYSTREAM_PARKED_MEASURE_SECONDS=0).",
)
PARKED_OLDEST = Gauge(
    "paystream_parked_oldest_seconds",
    "Age of the oldest record waiting for a replay on the retry or dead-letter topic "
    "(0: none waiting).",
    ["topic"],
)
PUBLISH_FAILING = Gauge(
    "paystream_publish_failing_seconds",
    "How long producing the command agent's batches has been failing (0: the latest "
    "attempt was delivered); the agent waits meanwhile.",
)
TENANT_PARTITION_CHANGES = Counter(
    "paystream_tenant_partition_changes_total",
    "Commands of a tenant read from another commands-topic partition than its previous "
    "one on this worker: its producers do not all key by tenant id with one partitioner, "
    "and its state (limits, idempotency, entities) is split between partitions.",
    ["tenant"],
)
PARKED = Counter(
    "paystream_parked_total",
    "Commands parked on the retry topic, by why (the park reason: the provider error "
    "that exhausted the retries, stale, provider_unanswered, ...).",
    ["tenant", "reason"],
)
REPLAYS = Counter(
    "paystream_replayed_commands_total",
    "Redelivered or repeated commands answered from stored outcomes (no gateway call).",
    ["tenant", "via"],
)
SKIPPED_RECORDS = Counter(
    "paystream_skipped_records_total",
    "Records Faust did not deliver to the command agent or the ledger sink (an offset "
    "gap), read from the broker directly.",
    ["topic", "partition"],
)
REPAIRS = Counter(
    "paystream_repaired_entities_total",
    "Entity writes lost in a crash and restored from the command's stored outcome.",
    ["tenant", "entity_type"],
)
ENTITIES_EXPIRED = Counter(
    "paystream_entities_expired_total",
    "Records the retention sweep removed from a table (tables/retention.py): settled "
    "entities past PAYSTREAM_ENTITY_RETENTION_SECONDS, and (table=idempotency) records "
    "past their window of tenants whose own commands did not purge them.",
    ["table"],
)
ENTITIES_MINIMIZED = Counter(
    "paystream_entities_minimized_total",
    "Deleted customers whose personal data left the tables past "
    "PAYSTREAM_ENTITY_RETENTION_SECONDS (tables/retention.py).",
    ["table"],
)
GATEWAY_CALLS = Histogram(
    "paystream_gateway_call_seconds",
    "Provider call latency, by provider and result: ok, an error code of the gateway "
    "vocabulary (card_declined, timeout, ...), error (a failure of paystream's own gateway "
    "code) or canceled (the worker stopping).",
    ["provider", "result"],
    # (30: past the default 10 s call timeout, which a call that times out passes.)
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
)
BATCH_SECONDS = Histogram(
    "paystream_batch_seconds",
    "Time a command batch spends in each stage: running its commands (process) and "
    "producing its outcomes and table changes until the broker has them (publish).",
    ["stage"],
    # Past DELIVERY_WARN_SECONDS (5) and the producer request timeout (60): a publish
    # the broker refuses is retried for minutes (review h68h).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TENANT_RUNS = Counter(
    "paystream_tenant_runs",
    "A batch's runs of one tenant's commands (more than one): serial, or split into "
    "chains that ran side by side (agents/tenant_chains.py).",
    ["how"],
)
VOLUME_WAITS = Counter(
    "paystream_volume_waits",
    "Payments of a tenant's chains that its daily volume (or its cap on payments awaiting "
    "an answer) would have refused while earlier commands of the run were unanswered, "
    "and that waited for them (agents/admission_order.py): a tenant near its daily "
    "volume makes one payment per provider round trip.",
    ["tenant"],
)

BATCH_SIZE = Histogram(
    "paystream_batch_size",
    "Commands per processed batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)


class _ReadAtScrape(Collector, Generic[T]):
    """A collector over live objects (weakly held: a worker's agents and policies) that
    its subclass reads when /metrics is scraped."""

    def __init__(self) -> None:
        self._tracked: weakref.WeakSet[T] = weakref.WeakSet()

    def track(self, item: T) -> None:
        self._tracked.add(item)

    def tracked(self) -> list[T]:
        return list(self._tracked)


class _OpenCircuits(_ReadAtScrape["RetryPolicy"]):
    """``paystream_circuit_open``, read from the circuit breakers at scrape time.

    A gauge set on each call kept showing a circuit open for as long as the process
    lived once nobody called it: the tenant's partitions moved to another worker, or the
    tenant was removed or moved to another provider. Read here, a circuit not closed
    shows open while it is called and for a while after (``SHOWN_IDLE_SECONDS``), and a
    forgotten one (see ``RetryPolicy.forget``) not at all.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "paystream_circuit_open",
            "1 while a (tenant, provider) circuit is open or half-open (and called within "
            "the last 10 minutes).",
            labels=["tenant", "provider"],
        )
        shown: dict[tuple[str, str], bool] = {}
        for policy in self.tracked():
            for key, breaker in list(policy.breakers.items()):
                shown[key] = shown.get(key, False) or breaker.shows_open()
        for (tenant, provider), refusing in sorted(shown.items()):
            family.add_metric([tenant, provider], 1.0 if refusing else 0.0)
        yield family


BREAKER_OPEN = _OpenCircuits()
REGISTRY.register(BREAKER_OPEN)


class _AgentProgress(_ReadAtScrape["DurableOffsets"]):
    """How far behind each agent is, read at scrape time from its committed offsets.

    ``paystream_consumer_lag_records``: records on the broker past what the agent has
    made durable and committed, per partition this worker owns (as of the latest fetch).
    ``paystream_agent_committed_timestamp_seconds``: when it last committed progress.
    Lag above zero while the timestamp stands still is a stalled agent (a hung database
    under the ledger sink, a hung provider); both standing still with lag zero is an
    idle one.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "paystream_consumer_lag_records",
            "Records past what the agent has durably handled and committed, per partition "
            "this worker owns (as of its latest fetch).",
            labels=["agent", "topic", "partition"],
        )
        committed = GaugeMetricFamily(
            "paystream_agent_committed_timestamp_seconds",
            "When the agent last committed progress (Unix time); stalled if it stands "
            "still while its lag is above zero.",
            labels=["agent"],
        )
        fetched = GaugeMetricFamily(
            "paystream_consumer_fetch_age_seconds",
            "Seconds since the broker last answered a fetch for the partition (this "
            "worker's): a broker that stops answering shows here, not in the lag.",
            labels=["agent", "topic", "partition"],
        )
        stalled = GaugeMetricFamily(
            "paystream_consumer_stalled_seconds",
            "Per partition this worker owns with records to handle: seconds it has been "
            "behind without a commit moving its offset (absent when not behind).",
            labels=["agent", "topic", "partition"],
        )
        for offsets in self.tracked():
            reads = (
                (lag, offsets.lag),
                (fetched, offsets.fetch_ages),
                (stalled, offsets.partition_stalls),
            )
            for family, read in reads:
                try:
                    values: dict[Any, float] = dict(read())
                except Exception:  # the app not started (or stopping): nothing to say
                    values = {}
                for tp, value in sorted(values.items()):
                    family.add_metric([offsets.agent, tp.topic, str(tp.partition)], value)
            if offsets.committed_at:
                committed.add_metric([offsets.agent], offsets.committed_at)
        yield lag
        yield committed
        yield fetched
        yield stalled


PROGRESS = _AgentProgress()
REGISTRY.register(PROGRESS)


class _Rebalances(_ReadAtScrape["faust.App"]):
    """``paystream_rebalances_total`` and ``paystream_rebalancing``, read from the worker's
    Faust app at scrape time. A group that keeps rebalancing delays every command by each
    hand-over and table catch-up; without these only its effects showed (latency, lag),
    and only Faust's log said why (review h67g)."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        total = CounterMetricFamily(
            "paystream_rebalances",
            "Consumer group rebalances this worker has started since it started.",
        )
        now = GaugeMetricFamily(
            "paystream_rebalancing",
            "1 while this worker is in a consumer group rebalance (partitions handed over, "
            "tables catching up).",
        )
        for app in self.tracked()[:1]:  # (one app a worker)
            total.add_metric([], float(app.rebalancing_count))
            now.add_metric([], 1.0 if app.rebalancing else 0.0)
        yield total
        yield now


REBALANCES = _Rebalances()
REGISTRY.register(REBALANCES)
