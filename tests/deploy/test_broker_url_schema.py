"""kafka.brokerUrl values every paystream container refuses at start are refused when the
chart is rendered (review h64i: a URL with credentials, or a port over 65535, rendered,
and the install or upgrade failed at its setup Job's hook)."""

from __future__ import annotations

import pytest

from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from tests.deploy.test_helm import REQUIRED, _merge, helm


@pytest.mark.parametrize(
    "url",
    [
        "kafka://paystream@kafka-0.kafka:9092",
        "kafka://kafka-0.kafka:9092;user:pw@kafka-1.kafka:9092",
        "kafka://kafka-0.kafka:65536",
        "kafka://kafka-0.kafka:0",
    ],
)
def test_a_broker_url_paystream_refuses_is_refused_at_render(url: str) -> None:
    with pytest.raises(ConfigurationError):  # what the pods would say
        load_settings(kafka_broker_url=url)
    proc = helm("template", "pay", values=_merge(REQUIRED, {"kafka": {"brokerUrl": url}}))
    assert proc.returncode != 0, "rendered a KAFKA_BROKER_URL every container refuses"


@pytest.mark.parametrize("url", ["kafka://kafka-0.kafka:9092;kafka-1.kafka:65535"])
def test_a_broker_url_paystream_takes_renders(url: str) -> None:
    load_settings(kafka_broker_url=url)
    proc = helm("template", "pay", values=_merge(REQUIRED, {"kafka": {"brokerUrl": url}}))
    assert proc.returncode == 0, proc.stderr
