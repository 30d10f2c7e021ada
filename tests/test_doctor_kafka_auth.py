"""`paystream doctor` with unreadable Kafka TLS files fails the broker's checks and says
why, and only those: it blamed the database and Redis too (review finding)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from paystream import doctor
from paystream.settings import load_settings


def test_a_bad_kafka_ca_file_fails_the_broker_checks_only(tmp_path: Path) -> None:
    settings = load_settings(
        kafka_broker_url="kafka://127.0.0.1:1",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(tmp_path / "missing-ca.pem"),
        redis_url=None,
        database_url=None,
    )
    database = asyncio.run(doctor._run_one("database answers", doctor.check_database, settings))
    assert "Kafka TLS" not in database.figure, database.figure
    broker = asyncio.run(doctor._run_one("broker answers", doctor.check_broker, settings))
    assert not broker.ok and "PAYSTREAM_KAFKA_SSL_" in broker.figure, broker.figure
