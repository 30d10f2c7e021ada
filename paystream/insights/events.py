"""The CloudEvents the insights publish: analytics windows and fraud alerts.

Ids are deterministic, so a crash that publishes one again publishes the same event:

* a window's id is derived from its tenant, its start and its content. An update (an
  outcome that arrived after the window was published) is another event with more
  ``events``: consumers keep, per tenant and window, the one with the most.
* an alert's id is derived from its tenant, rule, subject and fraud window: a rule fires
  once per subject and window.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from paystream.insights.state import Alert
from paystream.settings import CloudEventsMode
from paystream.streams.codec import KafkaRecord, encode_event
from paystream.streams.outcomes import outcome_id

__all__ = ["ALERT_TYPE", "WINDOW_TYPE", "alert_event", "window_event"]

WINDOW_TYPE = "com.paystream.analytics.window"
ALERT_TYPE = "com.paystream.fraud.alert"


def window_event(
    tenant_id: str, start_ms: int, size_ms: int, agg: dict[str, Any], mode: CloudEventsMode
) -> KafkaRecord:
    data = {
        "tenant_id": tenant_id,
        "window_start": _iso(start_ms),
        "window_end": _iso(start_ms + size_ms),
        "events": agg["events"],
        "outcomes": agg["outcomes"],
        "money": agg["money"],
        "declines": agg["declines"],
        "rejections": agg["rejections"],
    }
    # Only in windows that have any: a window without is the same event as before them.
    optional_keys = (
        "payments_succeeded", "disputes", "subscriptions", "invoice_declines",
        "payouts", "payout_failures", "tax_collected", "application_fees", "transfers",
    )  # fmt: skip
    for optional in optional_keys:
        if agg.get(optional):
            data[optional] = agg[optional]
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]
    event_id = outcome_id(tenant_id, f"window:{start_ms}", "analytics.window", digest)
    return _event(event_id, WINDOW_TYPE, tenant_id, "analytics", start_ms + size_ms, data, mode)


def alert_event(tenant_id: str, alert: Alert, mode: CloudEventsMode) -> KafkaRecord:
    data = {
        "tenant_id": tenant_id,
        "rule": alert.rule,
        "subject_type": alert.subject_type,
        "subject": alert.subject,
        "window_start": _iso(alert.window_start_ms),
        "window_end": _iso(alert.window_end_ms),
        "threshold": alert.threshold,
        "observed": alert.observed,
    }
    name = f"{alert.rule}:{alert.subject_type}:{alert.subject}:{alert.window_start_ms}"
    event_id = outcome_id(tenant_id, name, "fraud.alert")
    return _event(event_id, ALERT_TYPE, tenant_id, "fraud", alert.window_start_ms, data, mode)


def _event(
    event_id: str,
    kind: str,
    tenant_id: str,
    domain: str,
    time_ms: int,
    data: dict[str, Any],
    mode: CloudEventsMode,
) -> KafkaRecord:
    attrs = {
        "id": event_id,
        "source": f"/paystream/tenants/{tenant_id}/{domain}",
        "type": kind,
        "specversion": "1.0",
        # Fixed by what the event is about (a window's end, an alert's window), not by
        # when it was published: a republished event is the same bytes.
        "time": datetime.fromtimestamp(time_ms / 1000, UTC),
        "datacontenttype": "application/json",
        "tenantid": tenant_id,
        "partitionkey": tenant_id,
    }
    return encode_event(CloudEvent(attrs, data), tenant_id.encode(), mode)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
